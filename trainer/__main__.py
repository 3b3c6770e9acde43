"""``python -m trainer train``: LoRA/QLoRA fine-tune from a snapshot, or straight from a dataset file (``--data``,
through an ephemeral snapshot: LLaMA-Factory's one-step habit). Runs on the GPU host: no database, no Discord, and
not the bot's settings — everything comes from the arguments and the ``--config`` file (a retrain job writes both).
The bot's command line mounts the same command as ``loraloop train``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

# The bot's default system prompt (bot/settings.py). A bot serving another one says so: a retrain job always sends
# the bot's prompt in its config, and by hand it is --system-prompt (the deploy gate refuses a mismatch).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

err_console = Console(stderr=True)
app = typer.Typer(name="trainer", help="loraloop's trainer.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})


@app.callback()
def _trainer() -> None:
    """loraloop's trainer (the GPU side's training child)."""


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line on stderr and exit non-zero (no traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


@app.command("train")
def train(
    snapshot: Path | None = typer.Option(None, "--snapshot",
                                         help="Snapshot directory (examples.jsonl + manifest.json)."),
    data: Path | None = typer.Option(None, "--data", help="Train straight from a dataset file (any supported "
                                     "format) instead of a snapshot: no database, no review."),
    data_format: str = typer.Option("auto", "--format", help="The --data file's format (auto: detected)."),
    columns: str | None = typer.Option(None, "--columns", help="--data: question=COL,answer=COL[,system=COL]."),
    base: str = typer.Option(..., "--base", help="Base model: a local directory or a Hugging Face id."),
    out: Path = typer.Option(..., "--out", help="Run directory: adapter, metrics, probes, checkpoints, log."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with training settings."),
    json_progress: bool = typer.Option(False, "--json-progress", help="One JSON line per step/eval on stdout."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    qlora: bool = typer.Option(False, "--qlora", help="4-bit NF4 base (QLoRA); needs a CUDA GPU."),
    epochs: int | None = typer.Option(None, help="Epochs (default: chosen from the dataset size)."),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimizer steps."),
    learning_rate: float | None = typer.Option(None, "--lr", "--learning-rate", help="Peak learning rate (2e-4)."),
    batch_size: int | None = typer.Option(None, help="Examples per micro-batch (8)."),
    grad_accum: int | None = typer.Option(None, help="Gradient accumulation steps (1)."),
    max_length: int | None = typer.Option(None, help="Tokens per example (1024)."),
    lora_r: int | None = typer.Option(None, "--lora-r", "-r", help="LoRA rank (16)."),
    lora_alpha: float | None = typer.Option(None, "--lora-alpha", help="LoRA alpha, a whole number (32)."),
    lora_dropout: float | None = typer.Option(None, "--lora-dropout", help="LoRA dropout (0.05)."),
    seed: int | None = typer.Option(None, help="Random seed (42)."),
    eval_steps: int | None = typer.Option(None, help="Evaluate and checkpoint every N steps (default: each epoch)."),
    early_stopping_patience: int | None = typer.Option(None, help="Stop after N evaluations without improvement."),
    system_prompt: str | None = typer.Option(
        None, help="System prompt for conversations without one; use the one the bot serves with "
                   f"(LORALOOP_SYSTEM_PROMPT; default: {DEFAULT_SYSTEM_PROMPT!r})."),
    chat_template: str | None = typer.Option(None, help="Chat template (Jinja text or file) if the base has none."),
    batching: str | None = typer.Option(None, help="auto, padding_free, packing or padded."),
    cpu_threads: int | None = typer.Option(None, help="torch CPU threads (1 suits tiny models on a busy CPU)."),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", min=0.0, max=1.0,
                                        help="--data: share of the pairs held out for evaluation."),
) -> None:
    """Train a LoRA adapter from a dataset snapshot (or straight from a dataset file with --data)."""
    from trainer.config import TrainingRefused, read_config

    overrides = {
        "qlora": qlora or None, "epochs": epochs, "max_steps": max_steps, "learning_rate": learning_rate,
        "batch_size": batch_size, "grad_accum": grad_accum, "max_length": max_length, "lora_r": lora_r,
        "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "seed": seed, "eval_steps": eval_steps,
        "early_stopping_patience": early_stopping_patience, "system_prompt": system_prompt,
        "chat_template": chat_template, "batching": batching, "cpu_threads": cpu_threads,
    }
    if (snapshot is None) == (data is None):
        fail("name the training data: --snapshot DIR, or --data FILE (not both)", 2)
    try:
        loaded = read_config(config, overrides)
        for notice in loaded.notices:
            err_console.print(f"[yellow]note:[/] {escape(notice)}", highlight=False, soft_wrap=True)
        cfg = loaded.config
        if cfg.system_prompt is None:
            # Train with the system prompt the bot will serve with; the deploy gate refuses a mismatch.
            cfg = cfg.model_copy(update={"system_prompt": DEFAULT_SYSTEM_PROMPT})
        # Refusals that need no GPU check are reported before torch is even imported.
        cfg.check(cuda=True)
        _log_to_stderr()
        with contextlib.ExitStack() as stack:
            if data is not None:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loraloop-data-")))
                snapshot = snapshot_from_file(data, workdir / "snapshot", data_format, columns, eval_fraction)
            from trainer import recipe

            recipe.train(recipe.TrainRequest(snapshot=snapshot, base=base, out=out, config=cfg, resume=resume,
                                             json_progress=json_progress))
            if data is not None:
                _record_data_file(out, snapshot)
    except TrainingRefused as exc:
        lines = str(exc).splitlines() or ["training refused"]
        for line in lines[:-1]:
            err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        fail(lines[-1], 2)


def snapshot_from_file(path: Path, out_dir: Path, format: str = "auto", columns: str | None = None,
                       eval_fraction: float = 0.1) -> Path:
    """An ephemeral snapshot of a dataset file's pairs (deduplicated), its manifest naming the file and its hash.

    Raises TrainingRefused when the file is unusable or any record is invalid (nothing to review here: fix it).
    """
    from data import formats
    from data.snapshot import write_snapshot
    from trainer.config import TrainingRefused

    try:
        payload = path.read_bytes()
        parsed = formats.read_bytes(payload, path.name, format,
                                    columns=formats.parse_columns(columns) if columns else None)
    except OSError as exc:
        raise TrainingRefused(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except (formats.FormatError, formats.ColumnError) as exc:
        raise TrainingRefused(f"{path}: {exc}") from None
    if parsed.errors:
        first = parsed.errors[0]
        raise TrainingRefused(f"{path}: {len(parsed.errors)} invalid records (first, {first.location}: "
                              f"{first.message}); fix them, or import the file and review it")
    unique = {r.conversation.content_hash(): r.conversation for r in parsed.records}
    rows = [SimpleNamespace(content_hash=digest, messages=conv.to_dicts(), tags=list(conv.tags), source="import",
                            tools=conv.tools) for digest, conv in unique.items()]
    write_snapshot(rows, out_dir, eval_fraction)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["source"] = {"file": str(path.resolve()), "sha256": hashlib.sha256(payload).hexdigest(),
                          "format": parsed.format, "records": len(parsed.records),
                          "undesirable_skipped": len(parsed.undesirable)}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def _record_data_file(out: Path, snapshot: Path) -> None:
    """run.json names the data file and its hash (the snapshot it came from was temporary)."""
    run_path = out / "run.json"
    run = json.loads(run_path.read_text(encoding="utf-8"))
    source = json.loads((snapshot / "manifest.json").read_text(encoding="utf-8"))["source"]
    run.update(data_file=source["file"], data_sha256=source["sha256"], snapshot=None)
    run_path.write_text(json.dumps(run, indent=2, ensure_ascii=False), encoding="utf-8")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and wrappers swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _NotPythonWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "py.warnings"  # library deprecation noise: train.log only


def _log_to_stderr() -> None:
    root = logging.getLogger()
    if any(isinstance(h, _StderrHandler) for h in root.handlers):
        return
    handler = _StderrHandler()
    handler.setLevel(logging.WARNING)
    handler.addFilter(_NotPythonWarnings())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


if __name__ == "__main__":
    app()
