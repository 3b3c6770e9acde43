"""The job and the worker on their own: time limit, a bad snapshot, the worker refusing to start without Redis."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.harness.retrain import spec_for
from worker.job import JobSpec, run_job

pytestmark = pytest.mark.slow


def _collect(events: list[dict]):
    """An ``emit`` that keeps each event as its JSON object (the fields it set)."""
    return lambda event: events.append(event.model_dump(exclude_none=True))


async def test_a_job_past_its_time_limit_stops_its_training(tmp_path, tiny_llama_dir):
    events: list[dict] = []
    spec = spec_for(tmp_path, tiny_llama_dir, time_limit_s=4)
    assert JobSpec.from_json(spec.to_json()) == spec
    result = await asyncio.wait_for(run_job(spec, tmp_path / "work", _collect(events)), 60)
    assert result is None
    assert events[-1] == {"event": "failed", "reason": "the job ran past its time limit of 4 s"}
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["training"]


async def test_a_snapshot_that_does_not_match_its_hash_is_refused(tmp_path, tiny_llama_dir):
    events: list[dict] = []
    spec = spec_for(tmp_path, tiny_llama_dir)
    spec.snapshot_files["examples.jsonl"] += json.dumps({"id": "x"}) + "\n"
    assert await run_job(spec, tmp_path / "work", _collect(events)) is None
    assert events[-1]["event"] == "failed" and "does not match its manifest" in events[-1]["reason"]


def test_worker_without_redis_exits_with_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LORALOOP_REDIS_URL": f"redis://:pw@127.0.0.1:{port}/0",
           "LORALOOP_WORKER_JOB_SECRET": "a-secret-of-at-least-16-characters"}
    done = subprocess.run([sys.executable, "-m", "bot.cli", "worker"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in done.stderr
    assert "Traceback" not in done.stderr and "pw@" not in done.stderr
