"""deploy.ollama.OllamaClient and the official ollama client against the Ollama-API test server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import ollama
import pytest

from deploy.ollama import (
    CreateProgress,
    DigestMismatch,
    ModelNotFound,
    OllamaClient,
    OllamaError,
    OllamaUnavailable,
)
from tests.harness.ollama_server import OllamaTestServer

MESSAGES = [{"role": "user", "content": "Hi?"}]


async def test_chat_stream_yields_pieces_in_order(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("bot:v1", reply="The answer is forty two.")
    async with OllamaClient(ollama_server.url) as client:
        pieces = [p async for p in client.chat_stream("bot:v1", MESSAGES)]
        assert len(pieces) == 5
        assert "".join(pieces) == "The answer is forty two."
        assert await client.chat("bot:v1", MESSAGES) == "The answer is forty two."
    bodies = ollama_server.requests_to("POST", "/api/chat")
    assert [b["stream"] for b in bodies] == [True, False]
    assert bodies[0]["messages"] == MESSAGES


async def test_chat_stream_delivers_before_the_reply_is_finished(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("slow", reply="one two three four", token_delay=0.2)
    async with OllamaClient(ollama_server.url) as client:
        start = time.monotonic()
        stream = client.chat_stream("slow", MESSAGES)
        first = await anext(stream)
        first_at = time.monotonic() - start
        rest = [p async for p in stream]
    assert first == "one" and "".join(rest) == " two three four"
    assert first_at < 0.3  # the whole reply takes >= 0.6 s


async def test_unknown_model_is_model_not_found(ollama_server: OllamaTestServer) -> None:
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(ModelNotFound) as err:
            await client.chat("nope:v9", MESSAGES)
        assert err.value.model == "nope:v9" and "model 'nope:v9' not found" in str(err.value)
        with pytest.raises(ModelNotFound):
            [p async for p in client.chat_stream("nope:v9", MESSAGES)]
        with pytest.raises(ModelNotFound):
            await client.show("nope:v9")
        with pytest.raises(ModelNotFound):
            await client.delete("nope:v9")


async def test_mid_stream_error_raises_after_the_pieces_sent(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("flaky", reply="a b c d e", fail_after=2)
    got: list[str] = []
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(OllamaError) as err:
            async for piece in client.chat_stream("flaky", MESSAGES):
                got.append(piece)
    assert got == ["a", " b"]
    assert "unexpected EOF" in str(err.value) and err.value.status is None
    assert not isinstance(err.value, OllamaUnavailable | ModelNotFound)


async def test_load_error_is_an_error_with_status(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("broken", load_error="llama runner process has terminated: bad adapter")
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(OllamaError) as err:
            await client.chat("broken", MESSAGES)
    assert err.value.status == 500 and "bad adapter" in str(err.value)


async def test_unreachable_host(unreachable_ollama_url: str) -> None:
    async with OllamaClient(unreachable_ollama_url, timeout=2) as client:
        for call in (
            client.version(),
            client.list_models(),
            client.chat("m", MESSAGES),
            client.has_blob("sha256:" + "0" * 64),
            client.create("m:v1", from_="base"),
        ):
            with pytest.raises(OllamaUnavailable) as err:
                await call
            assert f"Ollama is not reachable at {unreachable_ollama_url}" in str(err.value)
        with pytest.raises(OllamaUnavailable):
            [p async for p in client.chat_stream("m", MESSAGES)]


async def test_blob_head_upload_and_skip(ollama_server: OllamaTestServer, tmp_path: Path) -> None:
    blob = tmp_path / "adapter.gguf"
    blob.write_bytes(b"GGUF" + bytes(range(256)) * 3000)
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    async with OllamaClient(ollama_server.url) as client:
        assert not await client.has_blob(digest)
        first = await client.ensure_blob(blob)
        assert first.digest == digest and first.uploaded and first.bytes_sent == blob.stat().st_size
        assert await client.has_blob(digest)
        second = await client.ensure_blob(blob)
        assert not second.uploaded and second.bytes_sent == 0
    assert ollama_server.blob_uploads == [(digest, blob.stat().st_size)]
    assert ollama_server.blob_path(digest).read_bytes() == blob.read_bytes()


async def test_digest_mismatch_is_refused(ollama_server: OllamaTestServer, tmp_path: Path) -> None:
    blob = tmp_path / "x.bin"
    blob.write_bytes(b"some bytes")
    wrong = "sha256:" + hashlib.sha256(b"other bytes").hexdigest()
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(DigestMismatch) as err:
            await client.push_blob(blob, wrong)
        assert err.value.status == 400 and "digest mismatch" in str(err.value)
        assert not await client.has_blob(wrong)
        with pytest.raises(ValueError, match="not a blob digest"):
            await client.has_blob("sha256:xyz")


async def test_create_streams_progress_and_inherits_from_base(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("base:1", reply="hi", system="Be brief.")
    seen: list[CreateProgress] = []
    async with OllamaClient(ollama_server.url) as client:
        await client.create("loraloop-x:v1", from_="base:1", system="Be kind.", parameters={"temperature": 0},
                            on_progress=seen.append)
        assert seen[-1].status == "success" and any(p.status == "writing manifest" for p in seen)
        assert await client.has_model("loraloop-x:v1")
        shown = await client.show("loraloop-x:v1")
        assert shown["system"] == "Be kind." and "temperature" in shown["parameters"]
        with pytest.raises(OllamaError, match="pull model manifest") as err:
            await client.create("loraloop-x:v2", from_="missing-base")
        assert err.value.status is None  # reported mid-stream, as Ollama does after "pulling manifest"
        with pytest.raises(OllamaError, match="neither 'from' or 'files'") as err:
            await client.create("loraloop-x:v3")
        assert err.value.status == 400
        await client.delete("loraloop-x:v1")
        assert not await client.has_model("loraloop-x:v1")
    body = ollama_server.requests_to("POST", "/api/create")[0]
    assert body["from"] == "base:1" and body["model"] == "loraloop-x:v1" and body["stream"] is True


async def test_version_tags_ps(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("a:1")
    async with OllamaClient(ollama_server.url) as client:
        assert await client.version()
        assert [m.name for m in await client.list_models()] == ["a:1"]
        assert await client.running() == []
        await client.chat("a:1", MESSAGES)
        assert await client.running() == ["a:1"]


async def test_official_async_client_works_unchanged(ollama_server: OllamaTestServer, tmp_path: Path) -> None:
    ollama_server.add_scripted_model("a:1", reply="x y z")
    client = ollama.AsyncClient(host=ollama_server.url)
    blob = tmp_path / "b.gguf"
    blob.write_bytes(b"GGUF-ish")
    digest = await client.create_blob(blob)
    assert ollama_server.blob_path(digest).exists()
    progress = [p.status async for p in await client.create(model="c:1", from_="a:1", stream=True)]
    assert progress[-1] == "success"
    listed = await client.list()
    assert {m.model for m in listed.models} == {"a:1", "c:1"}
    reply = await client.chat(model="c:1", messages=MESSAGES)
    assert reply.message.content == "x y z" and reply.done
    parts = [p.message.content async for p in await client.chat(model="c:1", messages=MESSAGES, stream=True)]
    assert "".join(parts) == "x y z"
    shown = await client.show("c:1")
    assert shown.details.family == "llama"
    with pytest.raises(ollama.ResponseError) as err:
        await client.chat(model="zzz", messages=MESSAGES)
    assert err.value.status_code == 404 and err.value.error == "model 'zzz' not found"
    await client.delete("c:1")
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("c:1")
    assert err.value.status_code == 404
    await client.close()


def test_official_sync_client_works_unchanged(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("a:1", reply="sync ok")
    client = ollama.Client(host=ollama_server.url)
    assert client.chat(model="a:1", messages=MESSAGES).message.content == "sync ok"
    assert [m.model for m in client.list().models] == ["a:1"]
    assert client.ps().models[0].model == "a:1"


async def test_concurrent_chats(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("a:1", reply="p q r", token_delay=0.05)
    async with OllamaClient(ollama_server.url) as client:
        replies = await asyncio.gather(*(client.chat("a:1", MESSAGES) for _ in range(8)))
    assert replies == ["p q r"] * 8


async def test_uploads_report_progress_and_head_spares_a_second_upload(ollama_server: OllamaTestServer,
                                                                       tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom((40 << 20) + 123))  # more than two progress steps of 16 MiB
    seen: list[tuple[int, int]] = []
    async with OllamaClient(ollama_server.url) as client:
        first = await client.ensure_blob(path, on_progress=lambda sent, size: seen.append((sent, size)))
        again = await client.ensure_blob(path, on_progress=lambda sent, size: seen.append((sent, size)))
    size = path.stat().st_size
    assert first.uploaded and first.bytes_sent == size and not again.uploaded and again.bytes_sent == 0
    assert [s for s, _ in seen] == [16 << 20, 32 << 20, size] and {n for _, n in seen} == {size}
    assert ollama_server.blob_uploads == [(first.digest, size)]


async def test_a_create_gets_its_own_read_timeout(ollama_server: OllamaTestServer) -> None:
    """Ollama is silent while it converts a model: /api/create may wait longer than any other request."""
    ollama_server.add_scripted_model("a:1", reply="x")
    ollama_server.create_delay = 1.5
    async with OllamaClient(ollama_server.url, timeout=0.5, create_timeout=10) as client:
        await client.create("slow:1", from_="a:1")
    async with OllamaClient(ollama_server.url, timeout=10, create_timeout=0.5) as client:
        with pytest.raises(OllamaUnavailable, match="sent nothing for 0.5 s"):
            await client.create("slow:2", from_="a:1")
