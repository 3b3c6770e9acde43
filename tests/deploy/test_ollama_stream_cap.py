"""A chat stream whose line never ends: the client stops at its line cap with a clear error, holding no more than
about the cap, instead of reading until the memory runs out."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from deploy.ollama import MAX_STREAM_LINE, OllamaClient, OllamaError, OllamaUnavailable

MESSAGES = [{"role": "user", "content": "Hi?"}]
CHUNK = b'{"message":{"role":"assistant","content":"' + b"x" * (64 << 10)


@pytest.fixture
async def endless_server():
    """An /api/chat that streams one line that never ends: at most 4 × the cap and 20 s, then it stops."""
    sent = {"bytes": 0}

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        deadline = time.monotonic() + 20
        try:
            while sent["bytes"] < 4 * MAX_STREAM_LINE and time.monotonic() < deadline:
                await response.write(CHUNK)
                sent["bytes"] += len(CHUNK)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client hung up
        return response

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", sent
    finally:
        await runner.cleanup()


async def test_a_line_past_the_cap_is_a_clear_error(endless_server) -> None:
    url, sent = endless_server
    start = time.monotonic()
    async with OllamaClient(url) as client:
        with pytest.raises(OllamaError) as err:
            [p async for p in client.chat_stream("m", MESSAGES)]
    took = time.monotonic() - start
    assert str(err.value) == ("a line of Ollama's stream exceeded 16 MB: not an Ollama reply (or a broken one)")
    assert err.value.status is None and not isinstance(err.value, OllamaUnavailable)
    # The client stopped reading at the cap: the server got no further than what the sockets' buffers hold.
    assert MAX_STREAM_LINE < sent["bytes"] < 2 * MAX_STREAM_LINE
    assert took < 10
    print(f"line cap: error after {sent['bytes'] / (1 << 20):.1f} MB sent, {took:.2f} s")


async def test_replies_within_the_cap_stream_as_before_and_the_cap_is_per_line(ollama_server) -> None:
    ollama_server.add_scripted_model("bot:v1", reply="The answer is forty two.")
    async with OllamaClient(ollama_server.url, max_line=1024) as client:  # its lines: 150 to 350 bytes
        assert "".join([p async for p in client.chat_stream("bot:v1", MESSAGES)]) == "The answer is forty two."
    async with OllamaClient(ollama_server.url, max_line=64) as client:
        with pytest.raises(OllamaError, match="exceeded 64 bytes"):
            [p async for p in client.chat_stream("bot:v1", MESSAGES)]
