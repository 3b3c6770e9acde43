"""``python -m trainer train``: LoRA/QLoRA fine-tune from a snapshot, or straight from a dataset file (``--data``,
through an ephemeral snapshot: LLaMA-Factory's one-step habit), or from a LLaMA-Factory YAML alone
(``train config.yaml``: its model, output directory and datasets). Runs on the GPU host: no database, no Discord,
and not the bot's settings — everything comes from the arguments and the YAML file (a retrain job writes both).
The bot's command line mounts the same command as ``loraloop train``. Ctrl-C saves a checkpoint and prints the
command that resumes it.

Every ``TrainConfig`` field is an option of its own, built from the field (``config_options``), as TRL builds its
options from its config classes: a new setting is in the YAML, the command line and ``--help`` at once."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import shlex
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TextIO, TypeVar, Union, get_args, get_origin, get_type_hints

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from data.placeholders import parse_set_values
from trainer.config import DEFAULT_SYSTEM_PROMPT, TrainConfig

if TYPE_CHECKING:
    from data.formats.columns import ColumnMap

# The bot's default system prompt (bot/settings.py). A bot serving another one says so: a retrain job always sends
# the bot's prompt in its config, and by hand it is --system-prompt (the deploy gate refuses a mismatch).

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
                     f"{DEFAULT_SYSTEM_PROMPT!r}, the bot's default.",
    "lora_alpha": "A YAML in LLaMA-Factory's names defaults to its 2 × rank.",
    "lora_dropout": "A YAML in LLaMA-Factory's names defaults to its 0."})
def train(
    config_file: Path | None = typer.Argument(
        None, metavar="CONFIG.yaml", show_default=False,
        help="YAML file with training settings, as --config; LLaMA-Factory's (`llamafactory-cli train` file) too: "
             "its model_name_or_path, output_dir and dataset (names in dataset_dir/dataset_info.json) are read as "
             "--base, --out and the data."),
    snapshot: Path | None = typer.Option(None, "--snapshot",
                                         help="Snapshot directory (examples.jsonl + manifest.json)."),
    data: Path | None = typer.Option(None, "--data", help="Train straight from a dataset file (any supported "
                                     "format) instead of a snapshot: no database, no review."),
    data_format: str = typer.Option("auto", "--format", help="The --data file's format (auto: detected)."),
    columns: str | None = typer.Option(None, "--columns", help="--data: question=COL,answer=COL[,system=COL]."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="--data or the YAML's datasets: fill a template placeholder: --set name=Ada fills "
                            "{{name}} (repeatable)."),
    allow_placeholders: bool = typer.Option(
        False, "--allow-placeholders", help="--data or the YAML's datasets: train records that still hold "
                                            "{{placeholders}} as written (refused otherwise)."),
    base: str | None = typer.Option(None, "--base", help="Base model: a local directory or a Hugging Face id "
                                    "(default: the YAML's model_name_or_path)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory: adapter, metrics, probes, checkpoints, log "
                                    "(default: the YAML's output_dir)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with training settings (the training "
                                       "settings' options override it)."),
    json_progress: bool = typer.Option(False, "--json-progress", help="One JSON line per step/eval on stdout."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", min=0.0, max=1.0,
                                        help="--data: share of the pairs held out for evaluation."),
    **settings: Any,
) -> None:
    """Train a LoRA adapter from a dataset snapshot, a dataset file (--data), or the datasets a LLaMA-Factory YAML
    names (`loraloop train config.yaml`, as `llamafactory-cli train config.yaml`)."""
    from trainer.config import TrainingInterrupted, TrainingRefused, read_config

    if config_file is not None and config is not None:
        fail("name the YAML once: as the argument or with --config, not both", 2)
    config = config_file or config
    if snapshot is not None and data is not None:
        fail("name the training data: --snapshot DIR, or --data FILE (not both)", 2)
    try:
        values = parse_set_values(set_ or [])
    except ValueError as exc:
        fail(str(exc), 2)
    try:
        loaded = read_config(config, given_settings(settings))
        for notice in loaded.notices:
            err_console.print(f"[yellow]note:[/] {escape(notice)}", highlight=False, soft_wrap=True)
        inputs = loaded.inputs
        if snapshot is None and data is None and not inputs.datasets:
            fail("name the training data: --snapshot DIR, or --data FILE"
                 + (", or dataset in the YAML" if config is not None else ""), 2)
        base = base or inputs.base
        out = out or inputs.out
        if base is None:
            fail("name the base model: --base MODEL" + (", or model_name_or_path in the YAML" if config else ""), 2)
        if out is None:
            fail("name the run directory: --out DIR" + (", or output_dir in the YAML" if config else ""), 2)
        cfg = loaded.config
        if cfg.system_prompt is None:
            # Train with the system prompt the bot will serve with; the deploy gate refuses a mismatch.
            cfg = cfg.model_copy(update={"system_prompt": DEFAULT_SYSTEM_PROMPT})
        # Refusals that need no GPU check are reported before torch is even imported.
        cfg.check(cuda=True)
        files: list[DataFile] = []
        if data is not None:
            files = [DataFile(data, data_format, columns)]
        elif snapshot is None:
            files = dataset_files(inputs.dataset_info, inputs.datasets)
        _log_to_stderr()
        if not cfg.qlora:
            quiet_unused_bitsandbytes()
        with contextlib.ExitStack() as stack:
            if files:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loraloop-data-")))
                snapshot = snapshot_from_files(files, workdir / "snapshot", eval_fraction, values,
                                               allow_placeholders)
            assert snapshot is not None  # --snapshot, or the one the data files just made
            from trainer import recipe

            recipe.train(recipe.TrainRequest(snapshot=snapshot, base=base, out=out, config=cfg, resume=resume,
                                             json_progress=json_progress))
            if files:
                _record_data_file(out, snapshot)
    except TrainingRefused as exc:
        lines = str(exc).splitlines() or ["training refused"]
        for line in lines[:-1]:
            err_console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        fail(lines[-1], 2)
    except TrainingInterrupted as exc:
        err_console.print(f"[bold yellow]interrupted:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        if exc.checkpoint is not None:
            err_console.print(f"continue with: {escape(resume_command())}", highlight=False, soft_wrap=True)
        raise SystemExit(130) from None
    except KeyboardInterrupt:  # before the run directory was written (the recipe reports any later interruption)
        err_console.print("[bold yellow]interrupted:[/] before the run started: nothing written", highlight=False)
        raise SystemExit(130) from None


def resume_command(argv: Sequence[str] | None = None, orig_argv: Sequence[str] | None = None) -> str:
    """The command line this process was started with, plus ``--resume``: what continues an interrupted run.

    ``python -m bot.cli …`` is shown as typed (the interpreter as given); a console script (``loraloop``) by its
    name when that name on PATH is this script, else by its path.
    """
    argv = list(sys.argv if argv is None else argv)
    orig = list(getattr(sys, "orig_argv", argv) if orig_argv is None else orig_argv)
    if Path(argv[0]).name == "__main__.py" and len(orig) >= len(argv):  # python -m PACKAGE
        program = orig[: len(orig) - len(argv) + 1]
    else:
        found = shutil.which(Path(argv[0]).name)
        same = found is not None and Path(found).resolve() == Path(argv[0]).resolve()
        program = [Path(argv[0]).name if same else argv[0]]
    args = argv[1:]
    return shlex.join([*program, *args, *([] if "--resume" in args else ["--resume"])])


@dataclass(frozen=True)
class DataFile:
    """A dataset file to train on and how to read it (its format, and columns as text or a dataset_info entry's)."""

    path: Path
    format: str = "auto"
    columns: str | ColumnMap | None = None


def dataset_files(dataset_info: Path, names: Sequence[str]) -> list[DataFile]:
    """The files that LLaMA-Factory dataset names stand for in a dataset_info.json; TrainingRefused when one cannot
    be trained on."""
    from data import formats
    from trainer.config import TrainingRefused

    files = []
    for name in names:
        try:
            entry = formats.dataset_entry(dataset_info, name)
        except formats.ColumnError as exc:
            raise TrainingRefused(f"dataset {name}: {exc}") from None
        if entry.ranking:
            raise TrainingRefused(f"dataset {name!r} is ranking (preference) data, not question/answer pairs: "
                                  "import it with `loraloop preferences import` and enable the dpo stage")
        files.append(DataFile(entry.path, entry.columns.formatting or "auto", entry.columns))
    return files


def snapshot_from_file(path: Path, out_dir: Path, format: str = "auto", columns: str | None = None,
                       eval_fraction: float = 0.1) -> Path:
    """An ephemeral snapshot of one dataset file (see ``snapshot_from_files``)."""
    return snapshot_from_files([DataFile(path, format, columns)], out_dir, eval_fraction)


def snapshot_from_files(files: Sequence[DataFile], out_dir: Path, eval_fraction: float = 0.1,
                        set_values: Mapping[str, str] | None = None, allow_placeholders: bool = False) -> Path:
    """An ephemeral snapshot of dataset files' pairs (deduplicated), its manifest naming the files and their hash.

    ``set_values`` fill ``{{name}}`` placeholders (as ``dataset import --set``). Raises TrainingRefused when a file
    is unusable, any record is invalid, or a record still holds a placeholder (unless ``allow_placeholders``):
    nothing to review here, fix it.
    """
    from data import formats
    from data.placeholders import fill_placeholders, placeholders_in_order
    from data.snapshot import MANIFEST_FILE, DataSource, parse_manifest, write_snapshot
    from trainer.config import TrainingRefused

    unique: dict[str, Any] = {}
    digests, kinds, records, undesirable = [], [], 0, 0
    for file in files:
        path = file.path
        try:
            payload = path.read_bytes()
            column_map = formats.parse_columns(file.columns) if isinstance(file.columns, str) else file.columns
            parsed = formats.read_bytes(payload, path.name, file.format, columns=column_map)
        except OSError as exc:
            raise TrainingRefused(f"{path}: cannot read the file: {exc.strerror or exc}") from None
        except (formats.FormatError, formats.ColumnError) as exc:
            raise TrainingRefused(f"{path}: {exc}") from None
        if parsed.errors:
            first = parsed.errors[0]
            raise TrainingRefused(f"{path}: {len(parsed.errors)} invalid records (first, {first.location}: "
                                  f"{first.message}); fix them, or import the file and review it")
        for record in parsed.records:
            conversation = fill_placeholders(record.conversation, set_values) if set_values else record.conversation
            if not allow_placeholders and (left := placeholders_in_order(conversation)):
                raise TrainingRefused(
                    f"{path}: {record.location} holds the template placeholder {{{{{left[0]}}}}}: fill it with "
                    f"--set {left[0]}=VALUE, or pass --allow-placeholders to train it as written")
            unique.setdefault(conversation.content_hash(), conversation)
        digests.append(hashlib.sha256(payload).hexdigest())
        kinds.append(parsed.format)
        records += len(parsed.records)
        undesirable += len(parsed.undesirable)
    rows = [SimpleNamespace(content_hash=digest, messages=conv.to_dicts(), tags=list(conv.tags), source="import",
                            tools=conv.tools) for digest, conv in unique.items()]
    write_snapshot(rows, out_dir, eval_fraction)
    manifest_path = out_dir / MANIFEST_FILE
    # One file: its own hash. Several (a YAML's dataset list): the hash of their hashes' lines, in the given order.
    sha256 = digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()
    source = DataSource(file=",".join(str(f.path.resolve()) for f in files), sha256=sha256, format=",".join(kinds),
                        records=records, undesirable_skipped=undesirable)
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


# What bitsandbytes' import logs when it fetches its CPU 4-bit kernel from the Hub (kernels-community) and cannot:
# the logger, and text only that message holds.
_BITSANDBYTES_KERNEL_FETCH = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "kernels._internals.hf_hub": "'kernels-community/quantization-bitsandbytes'",  # offline: its trust check
}


class _NotText(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_unused_bitsandbytes() -> None:
    """Silence bitsandbytes' "kernels-community" warning: at import, on CPUs with AVX512-BF16, it fetches a CPU 4-bit
    kernel from the Hub and warns when it cannot. transformers and PEFT import bitsandbytes whenever it is
    installed; a run without QLoRA never uses it (QLoRA runs on CUDA only). Call before importing trainer.recipe;
    every other message of both loggers stays."""
    for name, text in _BITSANDBYTES_KERNEL_FETCH.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NotText) and f.text == text for f in logger.filters):
            logger.addFilter(_NotText(text))


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
