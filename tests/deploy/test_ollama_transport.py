"""deploy.ollama speaks to the daemon over one HTTP stack (httpx, the official client's own), with its limits per
request: a silent create may outlast any other request's read timeout, a stalled stream may not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy.ollama import OllamaClient, OllamaUnavailable
from tests.harness.ollama_server import OllamaTestServer

HI = [{"role": "user", "content": "hi"}]


def test_the_client_loads_one_http_stack() -> None:
    code = ("import sys, deploy.ollama; "
            "assert 'httpx' in sys.modules and 'aiohttp' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


async def test_each_request_has_its_own_read_limit_on_one_client(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("slow:1", reply="one two three", token_delay=1.0)
    ollama_server.create_delay = 1.5
    async with OllamaClient(ollama_server.url, timeout=0.5, create_timeout=10) as client:
        await client.create("quiet:1", from_="slow:1")  # silent for 1.5 s: within the create's own limit
        with pytest.raises(OllamaUnavailable, match=r"no answer within 0\.5 s"):
            [p async for p in client.chat_stream("slow:1", HI)]  # a 1 s pause between pieces: past the read limit
        assert await client.has_model("quiet:1")  # the same client goes on after a timeout
