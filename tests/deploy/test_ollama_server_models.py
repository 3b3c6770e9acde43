"""The Ollama-API test server with real GGUF models: create from a GGUF file, bad adapters.

(Create from safetensors — the merged fallback — is covered by tests/deploy/test_pipeline.py.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ollama
import pytest

from deploy.ollama import OllamaClient, OllamaError
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
