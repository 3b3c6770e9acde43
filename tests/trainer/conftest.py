"""Trainer test fixtures: a ~100-example snapshot and one real training run shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.snapshots import FAST, synthetic_conversations, write_snapshot


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
