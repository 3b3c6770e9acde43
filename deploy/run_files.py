"""What a deploy reads from a training run's directory: its record (``run.json``: the base, the snapshot), the
adapter's hyperparameters (``adapter_config.json``) and the trainer's numbers (``metrics.json``: the retention the
gate judges, what a version keeps under ``metrics["train"]``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy.errors import DeployFailed
from trainer.metrics import read_metrics
from trainer.record import RunRecord, read_run


def run_record(adapter_dir: Path) -> RunRecord:
    """The training run's record (trainer/record.py, checked); an empty one for an adapter trained elsewhere."""
    if not (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "adapter.gguf").is_file():
        raise DeployFailed(f"{adapter_dir} is not an adapter directory (no adapter_config.json)")
    try:
        return read_run(adapter_dir) or RunRecord()
    except ValueError as exc:  # a malformed run.json: named, not a traceback
        raise DeployFailed(str(exc)) from None


def adapter_hyperparameters(adapter_dir: Path) -> dict[str, Any]:
    """The LoRA's shape from adapter_config.json (r, alpha, target modules, base); {} without one."""
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.is_file():
        return {}
    data = json.loads(cfg.read_text(encoding="utf-8"))
    return {k: data.get(k) for k in ("r", "lora_alpha", "target_modules", "base_model_name_or_path") if k in data}


def trained_retention(run_dir: Path) -> dict[str, Any] | None:
    """The trainer's retention record (metrics.json in the run or adapter directory), None when not measured."""
    return _run_metrics(run_dir).get("retention")


# The trainer's numbers a version keeps under metrics["train"] (the full metrics.json stays with the run).
TRAIN_METRICS = ("epochs", "steps", "device", "batching", "examples", "eval_loss_before", "eval_loss_after",
                 "train_loss", "train_runtime_s", "tokens_per_s", "answers", "token_accuracy_before",
                 "token_accuracy_after", "dpo", "retention")


def trained_metrics(run_dir: Path) -> dict[str, Any]:
    """The trainer's numbers (:data:`TRAIN_METRICS`) from metrics.json in the run or adapter directory; {} when
    there is none (an adapter trained elsewhere)."""
    metrics = _run_metrics(run_dir)
    return {k: metrics.get(k) for k in TRAIN_METRICS} if metrics else {}


def _run_metrics(run_dir: Path) -> dict[str, Any]:
    metrics = read_metrics(run_dir)  # a malformed file is a ValueError naming it: the deploy fails with that reason
    return metrics.to_dict() if metrics else {}
