"""``metrics.json``: what a finished training run measured — losses before and after, answers, speed, memory.

The recipe writes it; the deploy pipeline (the gate's retention, a version's ``metrics["train"]``), the worker
(the job's result) and ``bench/`` read it through :func:`read_metrics`. No torch here: the bot host and the
deploy side import this module.

Unknown keys are kept, not refused (``extra="allow"``), and every field has a default: a run directory outlives
the code that wrote it, so a deploy reads an older run's file (fewer keys) and a newer one's (more keys) alike,
and a file read and written again keeps what this version does not know.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from data.validation import describe

METRICS_FILE = "metrics.json"

# Records other trainer modules build and own; typed here only as far as the readers use them.
OPTIONAL_RECORDS = ("replay", "dpo", "retention")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class ExampleCounts(_Record):
    """The taught examples after preparation (trainer/prepare.py), train and eval splits together."""

    train: int = 0
    eval: int = 0
    truncated: int = 0
    dropped: int = 0
    unrenderable: int = 0  # skipped: the chat template drops their tool calls


class TrainLossPoint(_Record):
    step: int
    epoch: float | None = None
    loss: float


class EvalLossPoint(_Record):
    step: int  # 0: the base model, before training
    epoch: float | None = None
    eval_loss: float | None = None


class ReplayCounts(_Record):
    """The base's own general answers trained beside the pairs (trainer/replay.py)."""

    set: str
    sha256: str
    ratio: float
    examples: int
    tokens: int


class TrainMetrics(_Record):
    """One training run's metrics.json. Field order is the file's key order."""

    base: str | None = None
    snapshot_sha256: str | None = None
    examples: ExampleCounts = ExampleCounts()
    epochs: int | None = None
    steps: int | None = None
    batching: str | None = None
    device: str | None = None
    train_dtype: str | None = None  # what the adapted layers computed in while training (bfloat16, float32 …)
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    token_accuracy_before: float | None = None
    token_accuracy_after: float | None = None
    answers: dict[str, dict[str, Any]] = {}  # trainer.evaluate.answer_table's scores: "before"/"after" → name → value
    train_loss: float | None = None
    train_loss_curve: list[TrainLossPoint] = []
    eval_loss_curve: list[EvalLossPoint] = []
    best_checkpoint: str | None = None
    tokens_seen: int | None = None
    train_runtime_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    eval_table: list[dict[str, Any]] = []  # per eval prompt: reference, both answers, their scores
    replay: ReplayCounts | None = None
    dpo: dict[str, Any] | None = None  # trainer.dpo.run_dpo's record
    retention: dict[str, Any] | None = None  # trainer.retention.measure_trained's record
    wall_time_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The file's content: a record of a stage that did not run (replay, DPO, retention) is left out, not null."""
        return self.model_dump(exclude={name for name in OPTIONAL_RECORDS if getattr(self, name) is None})

    def write(self, run_dir: Path) -> Path:
        """Write ``run_dir/metrics.json``; returns its path."""
        path = run_dir / METRICS_FILE
        # json.dumps, not model_dump_json: a diverged loss stays NaN in the file rather than turning into null.
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        return path


def read_metrics(run_dir: Path) -> TrainMetrics | None:
    """The metrics in ``run_dir``; None when there are none (a run that did not finish, an adapter trained
    elsewhere). A malformed file is a ValueError naming it."""
    path = run_dir / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return TrainMetrics.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not loraloop training metrics (not JSON: {exc})") from None
    except ValidationError as exc:
        problems = describe(exc, root="metrics", limit=3)
        raise ValueError(f"{path} is not loraloop training metrics ({problems})") from None
