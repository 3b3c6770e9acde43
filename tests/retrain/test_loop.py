"""The whole loop through Discord, on both dispatchers: examples taught and rated → /retrain propose → two
experts approve at the same moment → snapshot → training of the tiny model on CPU → GGUF → registration
with the Ollama-API test server → gate → switch → the bot's next answer comes from the new version
(the steps are full_loop's, in tests/harness/retrain.py).

A second server's community retrains beside it, each test the one full loop of its dispatcher (one training job
more, not a second loop): on the one local worker its run waits in the queue and trains after the first; on two
Celery workers both train at once, one on each. Each community gets its own model, and rolling one back leaves
the other's answering."""

from __future__ import annotations

import pytest

from tests.harness.retrain import FULL_GATE, full_loop, loop_settings, two_communities

pytestmark = pytest.mark.slow


async def test_full_loop_local_dispatcher(tmp_path, discord_api, base_server, tiny_llama_dir):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="local", **FULL_GATE,
                             **two_communities())
    await full_loop(settings, discord_api, base_server, beside="globex")


async def test_full_loop_celery_worker(tmp_path, discord_api, base_server, tiny_llama_dir, redis_url, start_worker):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="celery", redis_url=redis_url,
                             **FULL_GATE, **two_communities())
    workers = [start_worker(settings) for _ in range(2)]  # the same queue, each serving one job at a time
    await full_loop(settings, discord_api, base_server, beside="globex", worker_pids={w.proc.pid for w in workers})
