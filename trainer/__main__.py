"""``python -m trainer train``: LoRA/QLoRA fine-tune from a snapshot, or straight from a dataset file (``--data``,
through an ephemeral snapshot: LLaMA-Factory's one-step habit). Runs on the GPU host: no database, no Discord, and
not the bot's settings — everything comes from the arguments and the ``--config`` file (a retrain job writes both).
The bot's command line mounts the same command as ``loraloop train``.

Every ``TrainConfig`` field is an option of its own, built from the field (``config_options``), as TRL builds its
options from its config classes: a new setting is in the YAML, the command line and ``--help`` at once."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import sys
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, NoReturn, TextIO, TypeVar, Union, get_args, get_origin, get_type_hints

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from trainer.config import TrainConfig

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


# ---- options from the config --------------------------------------------------------------------------------

SETTINGS_PANEL = "Training settings (override --config)"
Command = TypeVar("Command", bound=Callable[..., Any])


def option_parameters(model: type[BaseModel], *, aliases: Mapping[str, Sequence[str]] | None = None,
                      notes: Mapping[str, str] | None = None, defaults: BaseModel | None = None,
                      prefix: str = "", panel: str = SETTINGS_PANEL) -> list[inspect.Parameter]:
    """One typer option per field of ``model``: ``--field-name`` (a nested model's fields as ``--outer-field``, in a
    panel of their own), its description as help with the default appended, a Literal's values as choices, a bool as
    ``--x/--no-x``, a list as a repeatable option.

    Every option defaults to None, so a setting not given leaves the ``--config`` file's (or the model's default) in
    place. ``aliases`` and ``notes`` (keyed by parameter name, ``outer__field`` when nested) add option names and
    command-specific help. A field without a description, or of a type with no command-line form, is a TypeError.
    """
    params = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        option = "--" + key.replace("__", "-").replace("_", "-")
        default = getattr(defaults, name) if defaults is not None else info.get_default(call_default_factory=True)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            params += option_parameters(info.annotation, aliases=aliases, notes=notes, defaults=default,
                                        prefix=f"{key}__", panel=(info.description or name).rstrip("."))
            continue
        if not info.description:
            raise TypeError(f"{model.__name__}.{name} has no description: give it Field(description=...), the "
                            "help its option shows")
        kind = _option_type(f"{model.__name__}.{name}", info.annotation)
        repeat = "Repeat the option for more than one." if get_origin(kind) is list else None
        help_text = escape(" ".join(filter(None, [info.description, (notes or {}).get(key), repeat])))
        if default is not None and not info.is_required():
            help_text += " " + escape(f"[default: {_shown(default, option)}]")
        decls = [f"{option}/--no-{option[2:]}" if kind is bool else option, *(aliases or {}).get(key, ())]
        params.append(inspect.Parameter(
            key, inspect.Parameter.KEYWORD_ONLY, annotation=kind | None,
            default=typer.Option(None, *decls, help=help_text, show_default=False, rich_help_panel=panel)))
    return params


def config_options(model: type[BaseModel], *, aliases: Mapping[str, Sequence[str]] | None = None,
                   notes: Mapping[str, str] | None = None) -> Callable[[Command], Command]:
    """Give a typer command taking ``**settings`` an option per field of ``model`` (see ``option_parameters``)."""

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = option_parameters(model, aliases=aliases, notes=notes)
        if clash := {p.name for p in own} & {p.name for p in added}:
            raise TypeError(f"{command.__name__}'s own parameters {sorted(clash)} clash with {model.__name__}'s")
        hints = get_type_hints(command)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own]
        setattr(command, "__signature__", signature.replace(parameters=[*own, *added]))  # noqa: B010 (read by typer)
        command.__annotations__ = {**hints, **{p.name: p.annotation for p in added}}
        return command

    return decorate


def given_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a command line gave (options left out are None), nested as the config nests them."""
    given: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        *outer, name = key.split("__")
        target = given
        for part in outer:
            target = target.setdefault(part, {})
        target[name] = value
    return given


def _option_type(where: str, annotation: Any) -> Any:
    """The type typer parses an option as, for a field of this annotation (None dropped: every option may be unset)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = {a for a in get_args(annotation) if a is not type(None)}
    else:
        args = {annotation}
    if args == {str, list[str]}:  # one name or several: always a list on the command line
        return list[str]
    if len(args) == 1:
        (kind,) = args
        if kind in (bool, int, float, str, Path) or get_origin(kind) is Literal:
            return kind
        if get_origin(kind) is list and get_args(kind)[0] in (int, float, str, Path):
            return kind
    raise TypeError(f"{where}: a {annotation} has no command-line form; teach _option_type one")


def _shown(value: Any, option: str) -> str:
    if isinstance(value, bool):
        return option[2:] if value else f"no-{option[2:]}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


@app.command("train")
@config_options(TrainConfig, aliases={"learning_rate": ["--lr"], "lora_r": ["-r"]}, notes={
    "system_prompt": "Use the one the bot serves with (LORALOOP_SYSTEM_PROMPT); unset, this command uses "
                     f"{DEFAULT_SYSTEM_PROMPT!r}, the bot's default."})
def train(
    snapshot: Path | None = typer.Option(None, "--snapshot",
                                         help="Snapshot directory (examples.jsonl + manifest.json)."),
    data: Path | None = typer.Option(None, "--data", help="Train straight from a dataset file (any supported "
                                     "format) instead of a snapshot: no database, no review."),
    data_format: str = typer.Option("auto", "--format", help="The --data file's format (auto: detected)."),
    columns: str | None = typer.Option(None, "--columns", help="--data: question=COL,answer=COL[,system=COL]."),
    base: str = typer.Option(..., "--base", help="Base model: a local directory or a Hugging Face id."),
    out: Path = typer.Option(..., "--out", help="Run directory: adapter, metrics, probes, checkpoints, log."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with training settings (the training "
                                       "settings' options override it)."),
    json_progress: bool = typer.Option(False, "--json-progress", help="One JSON line per step/eval on stdout."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", min=0.0, max=1.0,
                                        help="--data: share of the pairs held out for evaluation."),
    **settings: Any,
) -> None:
    """Train a LoRA adapter from a dataset snapshot (or straight from a dataset file with --data)."""
    from trainer.config import TrainingRefused, read_config

    if (snapshot is None) == (data is None):
        fail("name the training data: --snapshot DIR, or --data FILE (not both)", 2)
    try:
        loaded = read_config(config, given_settings(settings))
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
            assert snapshot is not None  # --snapshot, or the one --data just made (exactly one was named)
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
    from data.snapshot import MANIFEST_FILE, DataSource, parse_manifest, write_snapshot
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
    manifest_path = out_dir / MANIFEST_FILE
    source = DataSource(file=str(path.resolve()), sha256=hashlib.sha256(payload).hexdigest(), format=parsed.format,
                        records=len(parsed.records), undesirable_skipped=len(parsed.undesirable))
    manifest = parse_manifest(manifest_path.read_bytes()).model_copy(update={"source": source})
    manifest_path.write_text(manifest.to_json(), encoding="utf-8")
    return out_dir


def _record_data_file(out: Path, snapshot: Path) -> None:
    """run.json names the data file and its hash (the snapshot it came from was temporary)."""
    from data.snapshot import MANIFEST_FILE, parse_manifest
    from trainer.record import RunRecord, read_run

    source = parse_manifest((snapshot / MANIFEST_FILE).read_bytes()).source
    if source is None:
        raise ValueError(f"{snapshot} does not name the data file it was made from")
    run = read_run(out) or RunRecord()
    run.model_copy(update={"data_file": source.file, "data_sha256": source.sha256, "snapshot": None}).write(out)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at the time (tests and wrappers swap it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
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
