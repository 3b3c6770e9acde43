"""The retrain loop's test bed: the tiny Llama as the base (HF dir for training, GGUF "pulled" into the
Ollama-API test server), a bot on the recording Discord server, and a real Celery worker process on Redis."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.settings import GuildRoles, Settings
from data.conversation import Conversation
from deploy.modelfile import serving_format_for
from tests.fixtures.discord import ADMIN_ROLE, CHANNEL_ID, EXPERT_ROLE, GUILD_ID
from tests.trainer.snapshots import synthetic_conversations

BASE = "tiny-llama:base"
REDIS_URL = os.environ.get("LORALOOP_TEST_REDIS_URL")
# Small but real: a few optimizer steps on CPU, short generations everywhere.
TRAIN = {"cpu_threads": 1, "learning_rate": 5e-3, "max_steps": 6, "batch_size": 8, "max_length": 96,
         "max_new_tokens": 8, "eval_generate": 2, "probes": ["what colour is the sky?"], "probe_eval_samples": 1}


@pytest.fixture
def base_server(ollama_server, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path]):
    """The Ollama-API test server with the clean tiny base registered under BASE (llama.cpp answers)."""
    fmt = serving_format_for(tiny_llama_adapters[0])
    ollama_server.add_base_model(BASE, tiny_llama_gguf, template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters())
    return ollama_server


def loop_settings(tmp_path: Path, ollama_url: str, base_dir: Path, **overrides) -> Settings:
    values = dict(
        home=tmp_path / "home", database_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", ollama_host=ollama_url,
        model_name="tiny", base_model=str(base_dir), ollama_base=BASE, system_prompt="You are terse.",
        chat_cooldown_s=0, rating_quorum=2, retrain_quorum=2, retrain_train=dict(TRAIN),
        deploy_eval_limit=3, deploy_outtype="f32", worker_heartbeat_timeout_s=3,
        worker_home=tmp_path / "worker", redis_url=REDIS_URL or "redis://127.0.0.1:6379/15",
        guilds={GUILD_ID: GuildRoles(expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                     allow_non_expert_teach=False, experts_channel_id=CHANNEL_ID)},
    )
    values.update(overrides)
    return Settings(**values)


async def approved_examples(store, n: int = 40, seed: int = 0) -> None:
    """What weeks of expert review leave behind: approved pairs (the tests teach and rate a few themselves)."""
    convs = synthetic_conversations(n, seed=seed)
    await store.import_conversations(convs, approve=True)


def qa(i: int) -> Conversation:
    return Conversation.qa(f"what colour is lamp {i}?", f"lamp {i} is green.")


async def wait_until(predicate, limit: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` (a function, or a coroutine function) until it returns something true; return that."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what}")
        await asyncio.sleep(interval)


class Worker:
    """``loraloop worker`` as a real process (its own session, so kill -9 reaches it alone)."""

    def __init__(self, settings: Settings, log: Path) -> None:
        # The worker's own settings: what it agrees to train (model name, base) and the Ollama it talks to.
        env = {**os.environ, "LORALOOP_REDIS_URL": settings.redis_url,
               "LORALOOP_WORKER_HOME": str(settings.worker_home), "LORALOOP_MODEL_NAME": settings.model_name,
               "LORALOOP_BASE_MODEL": settings.base_model, "OLLAMA_HOST": settings.ollama_host,
               "PYTHONUNBUFFERED": "1"}
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
