"""The Ollama-API test server re-drawn from Ollama's source (issue 26 item 2): each test names the behaviour, and the
server's code cites the file and tag it follows (deploy/ollama_server.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.ollama import OllamaClient, OllamaError
from tests.harness.ollama import gguf_header
from tests.harness.ollama_server import (
    ADAPTERS_REMOVED,
    GGUF_QUANTIZE_REMOVED,
    LORAS_NOT_IMPLEMENTED,
    SAFETENSORS_IMPORT_REFUSED,
    OllamaTestServer,
)

THINKING_TEMPLATE = ("{{ range $i, $m := .Messages }}<|{{ .Role }}|>{{ if .Thinking }}<think>{{ .Thinking }}</think>"
                     "{{ end }}{{ .Content }}\n{{ end }}<|assistant|>")
PLAIN_TEMPLATE = "{{ range .Messages }}[{{ .Role }}] {{ .Content }}\n{{ end }}"


async def call(server: OllamaTestServer, path: str, body: dict[str, Any], method: str = "POST") -> tuple[int, Any]:
    """Send ``body``; the status and the JSON body (a list of lines for an NDJSON stream)."""
    async with aiohttp.ClientSession() as http, http.request(method, server.url + path, json=body) as resp:
        text = await resp.text()
    if resp.content_type == "application/x-ndjson":
        return resp.status, [json.loads(line) for line in text.splitlines() if line]
    return resp.status, json.loads(text) if text else None


# ---- versions: the current release in its two variants, the llama-server releases ------------------------------


@pytest.mark.parametrize("variant", ["accepted", "refused"])
async def test_current_release_refuses_safetensors_and_gguf_quantize_and_adapters_per_variant(
        tmp_path: Path, variant: str) -> None:
    server = OllamaTestServer(tmp_path / "s", version="0.34.1", adapters=variant).start()
    try:
        server.add_base_model("base:1", gguf_header(tmp_path / "base.gguf", file_type=1))
        adapter = server.add_blob(gguf_header(tmp_path / "adapter.gguf", kind="adapter"))
        weights = server.add_blob(tmp_path / "base.gguf")
        status, body = await call(server, "/api/create", {"model": "tuned:1", "from": "base:1",
                                                          "adapters": {"adapter.gguf": adapter}, "stream": False})
        if variant == "accepted":  # refs/pull/14969/head server/create.go still takes GGUF adapters
            assert status == 200 and server.get("tuned:1").adapter_blobs == [adapter]
        else:
            assert (status, body) == (400, {"error": ADAPTERS_REMOVED}) and server.get("tuned:1") is None
        st = server.add_blob(tmp_path / "base.gguf")  # any bytes: the name decides the import path
        assert await call(server, "/api/create", {"model": "st:1", "files": {"model.safetensors": st},
                                                  "stream": False}) == (400, {"error": SAFETENSORS_IMPORT_REFUSED})
        for body in ({"from": "base:1"}, {"files": {"model.gguf": weights}}):
            assert await call(server, "/api/create", {"model": "q:1", **body, "quantize": "q8_0", "stream": False}) \
                == (400, {"error": GGUF_QUANTIZE_REMOVED})
        # The one import every release takes: a GGUF model file.
        assert (await call(server, "/api/create", {"model": "g:1", "files": {"model.gguf": weights},
                                                   "stream": False}))[0] == 200
    finally:
        server.stop()


async def test_the_new_engine_refuses_lora_only_up_to_the_0_2x_releases(ollama_server: OllamaTestServer,
                                                                         tmp_path: Path) -> None:
    ollama_server.add_base_model("qwen3:base", gguf_header(tmp_path / "base.gguf"), family="qwen3")
    adapter = ollama_server.add_blob(gguf_header(tmp_path / "adapter.gguf", kind="adapter"))
    chat = {"model": "tuned:1", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    assert (await call(ollama_server, "/api/create", {"model": "tuned:1", "from": "qwen3:base",
                                                      "adapters": {"adapter.gguf": adapter}}))[0] == 200
    for version in ("0.13.0", "0.29.9"):
        ollama_server.version = version
        assert await call(ollama_server, "/api/chat", chat) == (500, {"error": LORAS_NOT_IMPLEMENTED})
    ollama_server.version = "0.30.0"  # llama-server with --lora: the base's own (fake) weights are what fail now
    status, body = await call(ollama_server, "/api/chat", chat)
    assert status == 500 and LORAS_NOT_IMPLEMENTED not in body["error"]
    assert body["error"].startswith("llama runner process has terminated")


# ---- create: adapters decoded, quantize by the file's type ------------------------------------------------------


async def test_an_adapter_gguf_is_an_adapter_only_when_its_general_type_says_so(ollama_server: OllamaTestServer,
                                                                                tmp_path: Path) -> None:
    base = ollama_server.add_base_model("base:1", gguf_header(tmp_path / "base.gguf"))
    lora = ollama_server.add_blob(gguf_header(tmp_path / "lora.gguf", kind="adapter"))
    weights = ollama_server.add_blob(gguf_header(tmp_path / "other.gguf", kind="model", arch="qwen2"))
    async with OllamaClient(ollama_server.url) as client:
        await client.create("a:1", from_="base:1", adapters={"lora.gguf": lora})
        await client.create("b:1", from_="base:1", adapters={"other.gguf": weights})
    assert (ollama_server.get("a:1").adapter_blobs, ollama_server.get("a:1").model_blob) == ([lora], base.model_blob)
    assert (ollama_server.get("b:1").adapter_blobs, ollama_server.get("b:1").model_blob) == ([], weights)


async def test_quantize_refuses_a_source_whose_recorded_type_is_not_f16_or_f32(ollama_server: OllamaTestServer,
                                                                               tmp_path: Path) -> None:
    # fs/ggml KV.FileType reads general.file_type 0 (F32) as unknown: an F32 GGUF cannot be quantized at create.
    ollama_server.add_base_model("f32:1", gguf_header(tmp_path / "f32.gguf", file_type=0))
    ollama_server.add_base_model("q4:1", gguf_header(tmp_path / "q4.gguf", file_type=15))
    async with OllamaClient(ollama_server.url) as client:
        for source in ("f32:1", "q4:1"):
            with pytest.raises(OllamaError, match="quantization is only supported for F16 and F32 models"):
                await client.create("q:1", from_=source, quantize="q8_0")
        ollama_server.version = "0.30.0"
        with pytest.raises(OllamaError, match="quantization is only supported for F16, BF16 and F32 models"):
            await client.create("q:1", from_="q4:1", quantize="q8_0")
    assert ollama_server.get("q:1") is None


# ---- names and blobs --------------------------------------------------------------------------------------------


async def test_names_match_ignoring_case_and_parts_are_at_most_80_characters(ollama_server: OllamaTestServer,
                                                                             tmp_path: Path) -> None:
    ollama_server.add_scripted_model("tiny:v1", reply="ok")
    async with OllamaClient(ollama_server.url) as client:
        assert await client.chat("TINY:V1", [{"role": "user", "content": "hi"}]) == "ok"
        await client.create("Tiny:V1", from_="tiny:v1", system="s")  # an existing spelling is reused
        assert ollama_server.names() == ["tiny:v1"] and ollama_server.get("tiny:v1").system == "s"
        await client.create("m" * 80 + ":" + "t" * 80, from_="tiny:v1")
        for bad in ("m" * 81 + ":x", "m:" + "t" * 81):
            with pytest.raises(OllamaError, match="invalid model name"):
                await client.create(bad, from_="tiny:v1")
    assert await call(ollama_server, "/api/delete", {"model": "TINY:v1"}, "DELETE") == (200, None)
    assert ollama_server.get("tiny:v1") is None


async def test_deleting_or_overwriting_a_model_deletes_the_blobs_no_model_uses(ollama_server: OllamaTestServer,
                                                                      tmp_path: Path) -> None:
    base = ollama_server.add_base_model("base:1", gguf_header(tmp_path / "base.gguf"))
    lora = ollama_server.add_blob(gguf_header(tmp_path / "lora.gguf", kind="adapter"))
    async with OllamaClient(ollama_server.url) as client:
        await client.create("a:1", from_="base:1", adapters={"lora.gguf": lora})
        await client.create("a:2", from_="a:1")
        await client.delete("a:1")
        assert ollama_server.blob_path(lora).exists()  # a:2 still uses it
        await client.delete("a:2")
        assert not ollama_server.blob_path(lora).exists()
        assert ollama_server.blob_path(base.model_blob).exists()  # base:1 still uses it
        other = ollama_server.add_blob(gguf_header(tmp_path / "other.gguf", kind="adapter", arch="qwen2"))
        await client.create("b:1", from_="base:1", adapters={"lora.gguf": other})
        await client.create("b:1", from_="base:1", system="no adapter now")  # the tag overwritten
        assert not ollama_server.blob_path(other).exists()


# ---- chat: thinking, context, rendering, errors, unload ---------------------------------------------------------


async def test_a_thinking_template_thinks_by_default_and_reasoning_arrives_apart(
        ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("thinker:1", reply="<think>\nthe user greets me\n</think>\n\nHello!",
                                     template=THINKING_TEMPLATE)
    ollama_server.add_scripted_model("plain:1", reply="<think>x</think>Hi", template=PLAIN_TEMPLATE)
    hi = [{"role": "user", "content": "hi"}]
    status, body = await call(ollama_server, "/api/chat", {"model": "thinker:1", "messages": hi, "stream": False})
    assert status == 200 and body["message"]["thinking"] == "the user greets me\n"
    assert body["message"]["content"] == "Hello!"
    status, lines = await call(ollama_server, "/api/chat", {"model": "thinker:1", "messages": hi})
    assert "".join(x["message"].get("thinking", "") for x in lines) == "the user greets me\n"
    assert "".join(x["message"]["content"] for x in lines) == "Hello!"
    status, body = await call(ollama_server, "/api/chat", {"model": "thinker:1", "messages": hi, "think": False,
                                                           "stream": False})
    assert body["message"]["content"].startswith("<think>") and "thinking" not in body["message"]
    assert (await call(ollama_server, "/api/show", {"model": "thinker:1"}))[1]["capabilities"] == [
        "completion", "thinking"]
    assert await call(ollama_server, "/api/chat", {"model": "plain:1", "messages": hi, "think": True}) == (
        400, {"error": '"plain:1" does not support thinking'})
    status, body = await call(ollama_server, "/api/chat", {"model": "plain:1", "messages": hi, "stream": False})
    assert body["message"]["content"] == "<think>x</think>Hi"  # no thinking capability: nothing is parsed


async def test_a_chat_longer_than_num_ctx_loses_its_oldest_messages_silently(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("m:1", reply="fine", template=PLAIN_TEMPLATE, system="be brief")
    chat = [{"role": "user", "content": "one two three four five six"},
            {"role": "assistant", "content": "seven eight nine ten"},
            {"role": "user", "content": "eleven twelve"}]

    async def render(num_ctx: int) -> str:
        status, body = await call(ollama_server, "/api/chat", {"model": "m:1", "messages": chat, "stream": False,
                                                               "options": {"num_ctx": num_ctx},
                                                               "_debug_render_only": True})
        assert status == 200, body
        return body["_debug_info"]["rendered_template"]

    # Scripted models count words as tokens: SYSTEM with the last two turns renders to 11, the whole chat to 18.
    assert await render(11) == "[system] be brief\n[assistant] seven eight nine ten\n[user] eleven twelve\n"
    assert await render(4) == "[system] be brief\n[user] eleven twelve\n"  # the last message is always kept
    assert "one two" in await render(18) and "one two" not in await render(17)
    async with OllamaClient(ollama_server.url) as client:
        assert await client.chat("m:1", chat, {"num_ctx": 4}) == "fine"


async def test_debug_render_only_loads_the_model_first(ollama_server: OllamaTestServer, tmp_path: Path) -> None:
    ollama_server.add_base_model("broken:1", gguf_header(tmp_path / "base.gguf"), template=PLAIN_TEMPLATE)
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(OllamaError, match="llama runner process has terminated") as err:
            await client.render_prompt("broken:1", [{"role": "user", "content": "hi"}])
    assert err.value.status == 500 and ollama_server.rendered == []


async def test_a_legacy_template_gets_the_response_appended_as_ollama_does(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("legacy:1", reply="x", template="<{{ .Prompt }}>")
    chat = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}]
    async with OllamaClient(ollama_server.url) as client:
        assert await client.render_prompt("legacy:1", chat) == "<q1>a1<q2>"


async def test_an_error_before_the_first_chunk_is_an_http_500(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("flaky:1", reply="a b c", fail_after=0)
    ollama_server.add_scripted_model("late:1", reply="a b c", fail_after=1)
    hi = [{"role": "user", "content": "hi"}]
    status, body = await call(ollama_server, "/api/chat", {"model": "flaky:1", "messages": hi})
    assert (status, body) == (500, {"error": "an error was encountered while running the model: unexpected EOF"})
    status, lines = await call(ollama_server, "/api/chat", {"model": "late:1", "messages": hi})
    assert status == 200 and lines[0]["message"]["content"] == "a" and "error" in lines[-1]


async def test_keep_alive_0_with_no_messages_unloads(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("m:1")
    async def loaded() -> list[str]:
        async with aiohttp.ClientSession() as http, http.get(ollama_server.url + "/api/ps") as resp:
            return [m["name"] for m in (await resp.json())["models"]]

    assert (await call(ollama_server, "/api/chat", {"model": "m:1", "messages": []}))[1]["done_reason"] == "load"
    assert await loaded() == ["m:1"]
    status, body = await call(ollama_server, "/api/chat", {"model": "m:1", "messages": [], "keep_alive": 0})
    assert status == 200 and body["done_reason"] == "unload" and body["done"] is True and await loaded() == []
    status, body = await call(ollama_server, "/api/generate", {"model": "m:1", "keep_alive": 0})
    assert body["done_reason"] == "unload"
