"""The retrain tests' fixtures: the tiny Llama's GGUF "pulled" into the Ollama-API test server as the base, Redis,
and real ``loraloop worker`` processes (the settings, data and loop they serve: tests/harness/retrain.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.settings import Settings
from deploy.modelfile import serving_format_for
from tests.harness.retrain import BASE, REDIS_URL


@pytest.fixture
def base_server(ollama_server, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path]):
    """The Ollama-API test server with the clean tiny base registered under BASE (llama.cpp answers)."""
    fmt = serving_format_for(tiny_llama_adapters[0])
    ollama_server.add_base_model(BASE, tiny_llama_gguf, template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters())
    return ollama_server


class Worker:
    """``loraloop worker`` as a real process (its own session, so kill -9 reaches it alone)."""

    def __init__(self, settings: Settings, log: Path) -> None:
        # The worker's own settings: what it agrees to train (model name, base) and the Ollama it talks to.
        env = {**os.environ, "LORALOOP_REDIS_URL": settings.redis_url,
               "LORALOOP_WORKER_HOME": str(settings.worker_home), "LORALOOP_MODEL_NAME": settings.model_name,
               "LORALOOP_BASE_MODEL": settings.base_model, "OLLAMA_HOST": settings.ollama_host,
               "PYTHONUNBUFFERED": "1"}
        if settings.worker_job_secret is not None:  # the secret the bot signs its jobs with
            env["LORALOOP_WORKER_JOB_SECRET"] = settings.worker_job_secret.get_secret_value()
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker", "--loglevel", "INFO"], env=env,
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     start_new_session=True)

    def wait_ready(self, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while b"ready." not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the worker did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def redis_url():
    if not REDIS_URL:
        pytest.skip("Celery tests need LORALOOP_TEST_REDIS_URL (make test sets it when Redis runs)")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()
    return REDIS_URL


@pytest.fixture
def start_worker(tmp_path):
    workers: list[Worker] = []

    def start(settings: Settings) -> Worker:
        worker = Worker(settings, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
