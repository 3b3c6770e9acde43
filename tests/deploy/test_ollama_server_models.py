"""The Ollama-API test server with real GGUF models: create from a GGUF file, bad adapters.

(Create from safetensors — the merged fallback — is covered by tests/deploy/test_pipeline.py.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ollama
import pytest

from deploy.ollama import OllamaClient, OllamaError
from tests.harness.ollama import gguf_header
from tests.harness.ollama_server import OllamaTestServer

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "what colour is the cat?"}]
GREEDY = {"temperature": 0, "num_predict": 8}


async def test_create_from_a_gguf_file_and_chat(ollama_server: OllamaTestServer, tiny_llama_gguf: Path) -> None:
    client = ollama.AsyncClient(host=ollama_server.url)
    digest = await client.create_blob(tiny_llama_gguf)
    statuses = [p.status async for p in await client.create(
        model="tiny:f32", files={"model.gguf": digest}, template="{{ .Prompt }}", stream=True)]
    assert statuses[0] == "parsing GGUF" and statuses[-1] == "success"
    first = await client.generate(model="tiny:f32", prompt="the cat is", options=GREEDY)
    again = await client.generate(model="tiny:f32", prompt="the cat is", options=GREEDY)
    assert first.done and first.response and first.response == again.response  # greedy: deterministic
    assert first.eval_count and first.prompt_eval_count
    await client.close()


async def test_bad_adapters_are_refused_at_create(ollama_server: OllamaTestServer, tiny_llama_gguf: Path,
                                                  tmp_path: Path) -> None:
    ollama_server.add_base_model("base:1", tiny_llama_gguf)
    not_gguf = tmp_path / "adapter_model.safetensors"
    not_gguf.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(tiny_llama_gguf, copy)
    async with OllamaClient(ollama_server.url) as client:
        bad = (await client.ensure_blob(not_gguf)).digest
        with pytest.raises(OllamaError, match="supplied file was not in GGUF format") as err:
            await client.create("x:1", from_="base:1", adapters={"a.safetensors": bad})
        assert err.value.status == 400
        one = (await client.ensure_blob(tiny_llama_gguf)).digest
        with pytest.raises(OllamaError, match="only one adapter is currently supported"):
            await client.create("x:1", from_="base:1", adapters={"a.gguf": one, "b.gguf": bad})
        with pytest.raises(OllamaError, match="no such file") as err:
            await client.create("x:1", from_="base:1", adapters={"a.gguf": "sha256:" + "1" * 64})
        with pytest.raises(OllamaError, match="invalid model name"):
            await client.create("bad name!", from_="base:1")
        assert not await client.has_model("x:1")


async def test_debug_render_only_loads_the_model_so_a_broken_adapter_fails_there(
        ollama_server: OllamaTestServer, tiny_llama_gguf: Path, tmp_path: Path) -> None:
    ollama_server.add_base_model("base:1", tiny_llama_gguf, template="{{ range .Messages }}{{ .Content }}{{ end }}")
    async with OllamaClient(ollama_server.url) as client:
        assert await client.render_prompt("base:1", CHAT) == CHAT[0]["content"]
        wrong = (await client.ensure_blob(gguf_header(tmp_path / "lora.gguf", kind="adapter", arch="qwen2"))).digest
        await client.create("tuned:1", from_="base:1", adapters={"lora.gguf": wrong})  # create does not load it
        with pytest.raises(OllamaError, match="failed to load LoRA adapter") as err:
            await client.render_prompt("tuned:1", CHAT)
    assert err.value.status == 500 and [r["model"] for r in ollama_server.rendered] == ["base:1"]


async def test_a_prompt_longer_than_the_runners_context_is_cut_not_refused(ollama_server: OllamaTestServer,
                                                                           tiny_llama_gguf: Path) -> None:
    ollama_server.add_base_model("base:1", tiny_llama_gguf)  # tiny models run with a 512-token context
    client = ollama.AsyncClient(host=ollama_server.url)
    reply = await client.generate(model="base:1", prompt="the cat is " * 400, options=GREEDY)
    await client.close()
    assert reply.done and reply.prompt_eval_count == 512  # runner/llamarunner: keeps 4, drops the oldest after them
