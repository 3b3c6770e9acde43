"""``loraloop train``: LoRA/QLoRA fine-tune from a snapshot (runs on the GPU host, no database)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from bot.cli.common import err_console, fail, settings


def train(
    snapshot: Path = typer.Option(..., "--snapshot", help="Snapshot directory (examples.jsonl + manifest.json)."),
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
        None, help="System prompt for conversations without one (default: the bot's LORALOOP_SYSTEM_PROMPT)."),
    chat_template: str | None = typer.Option(None, help="Chat template (Jinja text or file) if the base has none."),
    batching: str | None = typer.Option(None, help="auto, padding_free, packing or padded."),
    cpu_threads: int | None = typer.Option(None, help="torch CPU threads (1 suits tiny models on a busy CPU)."),
) -> None:
    """Train a LoRA adapter from a dataset snapshot."""
    from trainer.config import TrainingRefused, load_config

    overrides = {
        "qlora": qlora or None, "epochs": epochs, "max_steps": max_steps, "learning_rate": learning_rate,
        "batch_size": batch_size, "grad_accum": grad_accum, "max_length": max_length, "lora_r": lora_r,
        "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "seed": seed, "eval_steps": eval_steps,
        "early_stopping_patience": early_stopping_patience, "system_prompt": system_prompt,
        "chat_template": chat_template, "batching": batching, "cpu_threads": cpu_threads,
    }
    try:
        cfg = load_config(config, overrides)
        if cfg.system_prompt is None:
            # Train with the system prompt the bot will serve with; the deploy gate refuses a mismatch.
            cfg = cfg.model_copy(update={"system_prompt": settings().system_prompt or None})
        # Refusals that need no GPU check are reported before torch is even imported.
        cfg.check(cuda=True)
        _log_to_stderr()
        from trainer import recipe

        recipe.train(recipe.TrainRequest(snapshot=snapshot, base=base, out=out, config=cfg, resume=resume,
                                         json_progress=json_progress))
    except TrainingRefused as exc:
        lines = str(exc).splitlines() or ["training refused"]
        for line in lines[:-1]:
            err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        fail(lines[-1], 2)


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
