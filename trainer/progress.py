"""Training progress for people (a rich bar on a terminal) and for the orchestrator (JSON lines on stdout).

With ``--json-progress`` stdout carries nothing but one JSON object per line:
``{"event": "phase"|"step"|"eval"|"done", "step", "total", "epoch", "loss", "eta_s", ...}``.
Everything else (library logs, warnings) goes to stderr and the run's ``train.log``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback


class ProgressReporter(TrainerCallback):
    """Reports phases, steps and evaluations either as JSON lines or on a rich progress bar."""

    def __init__(self, json_lines: bool, stream: TextIO | None = None, console: Console | None = None) -> None:
        self.json_lines = json_lines
        self.stream = stream or sys.stdout
        self.console = console or Console(stderr=True)
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
        self._t0 = time.monotonic()
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

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def eta(self, state: Any) -> float | None:
        done = state.global_step - self._first_step
        if done <= 0 or not self._t0:
            return None
        return (time.monotonic() - self._t0) / done * max(0, state.max_steps - state.global_step)


def _clean(value: Any) -> Any:
    """JSON-safe numbers: NaN/inf become null, floats rounded for readability."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    return value
