"""metrics.json records the dtype the run actually trained in (the adapted layers' output during training)."""

from __future__ import annotations

import json


def test_metrics_record_the_dtype_training_computed_in(trained_run):
    out, metrics, _ = trained_run
    assert metrics["device"] == "cpu" and metrics["train_dtype"] == "float32"
    assert json.loads((out / "metrics.json").read_text())["train_dtype"] == "float32"
