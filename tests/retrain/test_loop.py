"""The whole loop through Discord, on both dispatchers: examples taught and rated → /retrain propose → two
experts approve at the same moment → snapshot → training of the tiny model on CPU → GGUF → registration
with the Ollama-API test server → gate → switch → the bot's next answer comes from the new version
(the steps are full_loop's, in tests/harness/retrain.py)."""

from __future__ import annotations

import pytest

from tests.harness.retrain import FULL_GATE, full_loop, loop_settings

pytestmark = pytest.mark.slow


async def test_full_loop_local_dispatcher(tmp_path, discord_api, base_server, tiny_llama_dir):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="local", **FULL_GATE)
    await full_loop(settings, discord_api, base_server)


async def test_full_loop_celery_worker(tmp_path, discord_api, base_server, tiny_llama_dir, redis_url, start_worker):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="celery", redis_url=redis_url,
                             **FULL_GATE)
    start_worker(settings)
    await full_loop(settings, discord_api, base_server)
