"""Training progress for people (a rich bar on a terminal) and for the orchestrator (JSON lines on stdout), and
the progress events of a retrain job: one typed model, :data:`ProgressEvent`, for every side that writes or reads
them.

With ``--json-progress`` the trainer's stdout carries nothing but one event per line (phase, step, eval, done).
Everything else (library logs, warnings) goes to stderr and the run's ``train.log``.
Without it, a terminal gets a progress bar; a pipe or a log file (CI, nohup, a container's log) gets a plain
``step 40/200 (20%) loss 1.2345 eta 0:03:10`` line every ``line_interval_s`` seconds, and the last step's.

A retrain job (worker/job.py) forwards the trainer's step and eval events and adds its own (started, stage,
upload, result, failed, cancelled); the bot's orchestrator parses each with :func:`parse_event` and keeps a run's
latest :class:`RunProgress`, which the Discord cog shows. No transformers or torch at import: the bot reads these.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

# What a job is doing, as it reports it. Not a run state (data/models.py RUN_STATES): the orchestrator maps them.
JobStage = Literal["training", "converting", "registering", "evaluating"]
# What a run's progress message shows: a job's stage, or waiting for one to start.
Stage = Literal["queued", "training", "converting", "registering", "evaluating"]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    t: float | None = None  # when the job wrote it (epoch seconds); the trainer's own lines carry none

    def to_json(self) -> str:
        """The event as one JSON line's text (``t`` only when set)."""
        return self.model_dump_json(exclude={"t"} if self.t is None else None)


class PhaseEvent(_Event):
    """The trainer entered a phase (evaluate-before, train, dpo, evaluate-after, save)."""

    event: Literal["phase"] = "phase"
    phase: str
    message: str


class StepEvent(_Event):
    """A logged training step."""

    event: Literal["step"] = "step"
    step: int
    total: int
    epoch: float | None = None
    loss: float | None = None
    eta_s: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    token_accuracy: float | None = None


class EvalEvent(_Event):
    """An evaluation on the held-out split during training."""

    event: Literal["eval"] = "eval"
    step: int
    total: int
    epoch: float | None = None
    eval_loss: float | None = None
    token_accuracy: float | None = None


class DoneEvent(_Event):
    """The trainer finished and wrote the adapter."""

    event: Literal["done"] = "done"
    message: str
    out: str
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    wall_time_s: float


class StartedEvent(_Event):
    """The job began (on a worker: it picked the job up)."""

    event: Literal["started"] = "started"
    pid: int | None = None
    host: str | None = None


class StageEvent(_Event):
    event: Literal["stage"] = "stage"
    stage: JobStage


class UploadEvent(_Event):
    """Bytes of the candidate's files sent to Ollama so far (a merged model is gigabytes)."""

    event: Literal["upload"] = "upload"
    sent: int | None = None
    total: int | None = None


class ResultEvent(_Event):
    """The candidate is registered and judged: the gate (deploy.gate.GateResult.to_dict()) and the run's outputs."""

    event: Literal["result"] = "result"
    gate: dict[str, Any]
    table: str
    artifacts: dict[str, Any]
    bytes_uploaded: int
    metrics: dict[str, Any]  # deploy.run_files.TRAIN_METRICS of metrics.json
    loss_curve: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    loss_png: str | None = None  # base64


class FailedEvent(_Event):
    event: Literal["failed"] = "failed"
    reason: str


class CancelledEvent(_Event):
    event: Literal["cancelled"] = "cancelled"
    reason: str


ProgressEvent = Annotated[
    PhaseEvent | StepEvent | EvalEvent | DoneEvent | StartedEvent | StageEvent | UploadEvent | ResultEvent
    | FailedEvent | CancelledEvent,
    Field(discriminator="event"),
]
_EVENTS: TypeAdapter[ProgressEvent] = TypeAdapter(ProgressEvent)


def parse_event(raw: str | bytes | dict[str, Any]) -> ProgressEvent:
    """One event from its JSON text or decoded object; pydantic's ValidationError when it is not one."""
    if isinstance(raw, dict):
        return _EVENTS.validate_python(raw, strict=True)
    return _EVENTS.validate_json(raw, strict=True)


class RunProgress(BaseModel):
    """A run's latest progress as the bot stores it (RetrainRun.progress) and shows it, built from the job's events."""

    # Read back from the database: a key an older release stored is ignored, not a crash of /retrain status.
    model_config = ConfigDict(frozen=True, extra="ignore")

    stage: Stage | None = None
    tag: str | None = None  # the candidate's
    host: str | None = None  # where the job runs
    step: int | None = None
    total: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eta_s: float | None = None
    eval_loss: float | None = None
    uploaded: int | None = None
    upload_total: int | None = None

    def stored(self) -> dict[str, Any]:
        """What the run's progress column holds."""
        return self.model_dump(exclude_none=True)


class ProgressReporter:
    """Reports phases, steps and evaluations either as JSON lines or on a rich progress bar.

    A transformers ``TrainerCallback`` by duck typing (the Trainer only calls its ``on_*`` methods): subclassing
    would import transformers, and with it torch, into the bot, which reads this module's events.
    """

    def __init__(self, json_lines: bool, stream: TextIO | None = None, console: Console | None = None,
                 line_interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.json_lines = json_lines
        self.stream = stream or sys.stdout
        self.console = console or Console(stderr=True)
        self.line_interval_s = line_interval_s
        self._clock = clock
        self._last_line: float | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._t0 = 0.0
        self._first_step = 0
        self.tokens_at_start = 0

    # ---- events ---------------------------------------------------------------------------------
    def emit(self, event: ProgressEvent) -> None:
        """One JSON line (json mode) or, for a phase or the end, a short line on the terminal."""
        if self.json_lines:
            self.stream.write(event.to_json() + "\n")
            self.stream.flush()
        elif isinstance(event, PhaseEvent | DoneEvent) and event.message:
            self.console.print(f"[bold]{event.message}[/]", highlight=False)

    def phase(self, name: str, message: str) -> None:
        self.emit(PhaseEvent(phase=name, message=message))

    # ---- TrainerCallback ------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("on_"):  # the Trainer's other events: nothing to report
            return _ignore
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = self._clock()
        self._last_line = None
        self._first_step = state.global_step  # non-zero when resuming
        self.tokens_at_start = int(state.num_input_tokens_seen or 0)
        if not self.json_lines and self.console.is_terminal:
            self._bar = Progress(
                TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=state.max_steps, completed=state.global_step, loss="-")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        logs = logs or {}
        step, total, epoch = state.global_step, state.max_steps, _clean(state.epoch)
        if "eval_loss" in logs:
            self.emit(EvalEvent(step=step, total=total, epoch=epoch, eval_loss=_clean(logs["eval_loss"]),
                                token_accuracy=_clean(logs.get("eval_mean_token_accuracy"))))
        elif "loss" in logs:
            self.emit(StepEvent(step=step, total=total, epoch=epoch, loss=_clean(logs["loss"]),
                                eta_s=_clean(self.eta(state)), lr=_clean(logs.get("learning_rate")),
                                grad_norm=_clean(logs.get("grad_norm")),
                                token_accuracy=_clean(logs.get("mean_token_accuracy"))))
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, loss=f"{logs['loss']:.4f}")
            elif not self.json_lines:
                self._step_line(state, logs["loss"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _step_line(self, state: Any, loss: float) -> None:
        """A plain progress line for a log file: the first step, then one per interval, and the last step."""
        now = self._clock()
        last = state.global_step >= state.max_steps
        if self._last_line is not None and now - self._last_line < self.line_interval_s and not last:
            return
        self._last_line = now
        total = max(1, state.max_steps)
        eta = self.eta(state)
        shown_eta = "?" if eta is None else str(timedelta(seconds=round(eta)))
        self.console.print(f"step {state.global_step}/{state.max_steps} ({state.global_step / total:.0%}) "
                           f"loss {loss:.4f} eta {shown_eta}", highlight=False, soft_wrap=True)

    def eta(self, state: Any) -> float | None:
        done: int = state.global_step - self._first_step
        if done <= 0 or not self._t0:
            return None
        remaining: int = max(0, state.max_steps - state.global_step)
        return (self._clock() - self._t0) / done * remaining


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


def _clean(value: float | None) -> float | None:
    """JSON-safe numbers: NaN/inf become null, floats rounded for readability."""
    if value is None:
        return None
    value = float(value)
    return None if not math.isfinite(value) else round(value, 6)
