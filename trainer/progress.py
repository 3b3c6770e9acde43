"""Training progress for people (a rich bar on a terminal) and for the orchestrator (JSON lines on stdout).

With ``--json-progress`` stdout carries nothing but one JSON object per line:
``{"event": "phase"|"step"|"eval"|"done", "step", "total", "epoch", "loss", "eta_s", ...}``.
Everything else (library logs, warnings) goes to stderr and the run's ``train.log``.
Without it, a terminal gets a progress bar; a pipe or a log file (CI, nohup, a container's log) gets a plain
``step 40/200 (20%) loss 1.2345 eta 0:03:10`` line every ``line_interval_s`` seconds, and the last step's.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback


class ProgressReporter(TrainerCallback):
    """Reports phases, steps and evaluations either as JSON lines or on a rich progress bar."""

    def __init__(self, json_lines: bool, stream: TextIO | None = None, console: Console | None = None,
                 line_interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.json_lines = json_lines
        self.stream = stream or sys.stdout
        self.console = console or Console(stderr=True)
        self.line_interval_s = line_interval_s
        self._clock = clock
        self._last_line: float | None = None
        self._bar: Progress | None = None
        self._task: Any = None
        self._t0 = 0.0
        self._first_step = 0
        self.tokens_at_start = 0

    # ---- events ---------------------------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> None:
        """One JSON line (json mode) or a short line on the terminal."""
        if self.json_lines:
            record = {"event": event, **{k: _clean(v) for k, v in fields.items()}}
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
        elif event in ("phase", "done") and fields.get("message"):
            self.console.print(f"[bold]{fields['message']}[/]", highlight=False)

    def phase(self, name: str, message: str) -> None:
        self.emit("phase", phase=name, message=message)

    # ---- TrainerCallback ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
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

    def on_step_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        common = {"step": state.global_step, "total": state.max_steps, "epoch": state.epoch}
        if "eval_loss" in logs:
            self.emit("eval", **common, eval_loss=logs["eval_loss"],
                      token_accuracy=logs.get("eval_mean_token_accuracy"))
        elif "loss" in logs:
            self.emit("step", **common, loss=logs["loss"], eta_s=self.eta(state), lr=logs.get("learning_rate"),
                      grad_norm=logs.get("grad_norm"), token_accuracy=logs.get("mean_token_accuracy"))
            if self._bar is not None:
                self._bar.update(self._task, loss=f"{logs['loss']:.4f}")
            elif not self.json_lines:
                self._step_line(state, logs["loss"])

    def on_train_end(self, args, state, control, **kwargs):
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
        done = state.global_step - self._first_step
        if done <= 0 or not self._t0:
            return None
        return (self._clock() - self._t0) / done * max(0, state.max_steps - state.global_step)


def _clean(value: Any) -> Any:
    """JSON-safe numbers: NaN/inf become null, floats rounded for readability."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    return value
