"""Trainer test fixtures: a ~100-example snapshot and one real training run shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.snapshots import synthetic_conversations, write_snapshot

# Small but real: enough steps for the tiny model to learn the answer pattern, few generated tokens.
FAST = {
    # One torch thread: a tiny model gains little from two, and loses half its speed when the cores are shared.
    "cpu_threads": 1,
    "learning_rate": 5e-3, "epochs": 3, "batch_size": 8, "max_new_tokens": 12, "eval_generate": 6,
    "probes": ["Hello! Who are you?", "what colour is the sky?"], "probe_eval_samples": 2,
}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Runs here set torch's thread count (cpu_threads); other areas' tests get the default back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def snapshot_dir(tmp_path_factory) -> Path:
    return write_snapshot(tmp_path_factory.mktemp("snapshot"), synthetic_conversations(100, seed=0))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, snapshot_dir, tiny_llama_dir):
    """(out dir, metrics, wall seconds) of one real training run of the tiny Llama on the snapshot, on CPU."""
    import time

    from trainer.config import load_config
    from trainer.recipe import TrainRequest, train

    out = tmp_path_factory.mktemp("run") / "out"
    t0 = time.monotonic()
    metrics = train(TrainRequest(snapshot_dir, str(tiny_llama_dir), out, load_config(None, FAST)))
    return out, metrics, time.monotonic() - t0
