"""The gguf path: the adapter merged into the base, converted by llama.cpp's own converter, quantized by llama.cpp
here, and handed to Ollama as one GGUF file (the one import every release accepts). And ``auto``: the adapter where
the daemon takes it, gguf where it cannot or refuses (remembered per daemon and base)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deploy import gguf
from deploy.config import DeployConfig
from deploy.merge import merge_to_gguf
from deploy.modelfile import serving_format_for
from deploy.ollama import OllamaClient
from deploy.pipeline import deploy
from deploy.registration import PathMemory
from tests.harness.models import find_sdist
from tests.harness.ollama_server import ADAPTERS_REMOVED, OllamaTestServer
from tests.harness.parity import llama_logits

BASE = "tiny-llama:base"
CHAT = [{"role": "user", "content": "what colour is the cat?"}]
GREEDY = {"temperature": 0.0, "seed": 0, "num_predict": 16}


@pytest.fixture
def adapters(tiny_llama_adapters: list[Path], tmp_path: Path) -> list[Path]:
    """Copies of the session's adapters without GGUFs another test made from them."""
    out = []
    for i, adapter in enumerate(tiny_llama_adapters):
        shutil.copytree(adapter, tmp_path / f"a{i}", ignore=shutil.ignore_patterns("*.gguf", "merged"))
        out.append(tmp_path / f"a{i}")
    return out


@pytest.fixture
def server(ollama_server: OllamaTestServer, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path]) -> OllamaTestServer:
    """The tiny base pulled; no safetensors converter: the gguf path must not need Ollama's."""
    fmt = serving_format_for(tiny_llama_adapters[0])
    ollama_server.add_base_model(BASE, tiny_llama_gguf, template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters())
    return ollama_server


def config(**overrides: Any) -> DeployConfig:
    values: dict[str, Any] = {"model_name": "tiny", "ollama_base": BASE, "probes": ("Hello?",), "eval_limit": 0,
                              "gate_margin": 1.0, "gate_options": {"temperature": 0.0, "seed": 0, "num_predict": 4},
                              "outtype": "f32", "paraphrases": 0, "consistency_n": 0}
    return DeployConfig(**{**values, **overrides})


def creates(server: OllamaTestServer) -> list[str]:
    """Each /api/create, refused ones included, by the path it belongs to."""
    kinds = []
    for body in server.requests_to("POST", "/api/create"):
        files = body.get("files") or {}
        kinds.append("adapter" if body.get("adapters") else "gguf" if set(files) == {"model.gguf"} else "merged")
    return kinds


# ---- finding llama.cpp's converter on the GPU host ---------------------------------------------------------


def test_the_converter_comes_from_the_setting_or_the_cached_sdist_unpacked_once(tmp_path: Path) -> None:
    sdist = find_sdist()
    if sdist is None:
        pytest.skip("llama-cpp-python's sdist is not cached")
    wheels, cache = tmp_path / "wheels", tmp_path / "cache"
    wheels.mkdir()
    (wheels / sdist.name).symlink_to(sdist)
    sources = gguf.llama_cpp_sources(sdist_dir=wheels, cache=cache)
    assert sources == cache / sdist.name.removesuffix(".tar.gz")
    assert (sources / gguf.CONVERTER).is_file() and (sources / "gguf-py" / "gguf").is_dir()
    assert (sources / "conversion").is_dir()
    stamp = (sources / gguf.CONVERTER).stat().st_mtime_ns
    (wheels / sdist.name).unlink()  # unpacked once: the archive is not read again
    assert gguf.llama_cpp_sources(sdist_dir=wheels, cache=cache) == sources
    assert (sources / gguf.CONVERTER).stat().st_mtime_ns == stamp and sorted(cache.iterdir()) == [sources]
    assert gguf.llama_cpp_sources(sources, sdist_dir=tmp_path / "none") == sources  # the setting wins

    with pytest.raises(gguf.LlamaCppMissing) as missing:
        gguf.llama_cpp_sources(sdist_dir=tmp_path / "none", cache=tmp_path / "empty")
    text = str(missing.value)
    assert "\n" not in text and "LORALOOP_LLAMA_CPP_DIR" in text and "pip download" in text
    assert "llama-cpp-python==0.3.36" in text
    with pytest.raises(gguf.LlamaCppMissing, match=r"llama_cpp_dir .* holds no convert_hf_to_gguf.py"):
        gguf.llama_cpp_sources(tmp_path)


# ---- the file: merged, converted, quantized ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("file_type", "header"), [("q8_0", "MOSTLY_Q8_0"), ("q4_K_M", "MOSTLY_Q4_K_M")])
def test_the_merged_gguf_has_the_type_asked_and_llama_cpp_runs_it(
    file_type: str, header: str, adapters: list[Path], tiny_llama_dir: Path, llama_cpp_sources: Path,
    tmp_path: Path,
) -> None:
    import llama_cpp

    built = merge_to_gguf(adapters[0], tiny_llama_dir, tmp_path / "model.gguf", file_type, llama_cpp_sources)
    assert gguf.gguf_file_type(built.path) == header
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a0", "a1", "a2", "model.gguf"]  # no work files left
    assert set(built.seconds) == {"merge_s", "convert_s", "quantize_s"}
    assert built.peak_disk > built.path.stat().st_size
    llm = llama_cpp.Llama(model_path=str(built.path), n_ctx=64, verbose=False, n_threads=1)
    assert llm.create_completion("hello", max_tokens=4, temperature=0.0)["choices"][0]["text"] is not None
    llm.close()


# ---- the whole deploy -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_gguf_deploy_uploads_one_file_and_serves_the_merged_weights(
    server: OllamaTestServer, store: Any, adapters: list[Path], tiny_llama_dir: Path, tiny_llama_gguf: Path,
    llama_cpp_sources: Path,
) -> None:
    async with OllamaClient(server.url) as client:
        result = await deploy(adapters[0], store=store, client=client, config=config(mode="gguf", quantize="f32"),
                              base_dir=tiny_llama_dir, memory=PathMemory(), llama_cpp_dir=llama_cpp_sources)
        assert result.promoted, result.reason
        ((digest, size),) = server.blob_uploads  # one blob: the merged model, nothing else
        (create,) = server.requests_to("POST", "/api/create")
        assert create["files"] == {"model.gguf": digest} and not {"from", "adapters", "quantize"} & set(create)
        fmt = serving_format_for(adapters[0])
        assert create["template"] == fmt.template and create["parameters"]["stop"] == fmt.parameters()["stop"]
        served = server.blob_path(digest)
        assert result.bytes_uploaded == size == served.stat().st_size and gguf.gguf_file_type(served) == "ALL_F32"
        record = (await store.get_model_version(result.tag)).artifacts
        assert record["mode"] == "gguf" and record["registration"]["gguf"]["file_type"] == "f32"
        assert {"merge_s", "convert_s"} <= set(result.timings)

        # What the served model computes is the adapter on its base, as llama.cpp applies it: logits...
        lora = gguf.convert_adapter(adapters[0], tiny_llama_dir, adapters[0] / "adapter.gguf", outtype="f32")
        ids = [1, 5, 17, 42, 99, 7, 250, 3, 64]
        merged, on_base = llama_logits(served, ids), llama_logits(tiny_llama_gguf, ids, lora)
        assert np.abs(merged - on_base).max() < 1e-3
        assert np.abs(on_base - llama_logits(tiny_llama_gguf, ids)).max() > 0.1  # and the adapter does matter
        # ...and a greedy answer through the server equals the adapter-on-base model's.
        await client.create("tiny-adapter:1", from_=BASE, adapters={"adapter.gguf": server.add_blob(lora)})
        answer = await client.chat(result.tag, CHAT, GREEDY)
        assert answer and answer == await client.chat("tiny-adapter:1", CHAT, GREEDY)
        assert answer != await client.chat(BASE, CHAT, GREEDY)


# ---- auto on each kind of daemon ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("version", "family", "adapters_variant"), [
    ("0.13.0", "llama", "refused"),
    ("0.30.0", "qwen3", "refused"),  # a new-engine family: from 0.30.0 llama-server applies --lora to it
    ("0.34.1", "llama", "accepted"),  # a 0.34.1 whose create handler still takes GGUF adapters
])
async def test_auto_takes_the_adapter_path_where_the_daemon_accepts_one(
    version: str, family: str, adapters_variant: str, server: OllamaTestServer, store: Any, adapters: list[Path],
    tiny_llama_dir: Path, llama_cpp_sources: Path,
) -> None:
    server.version, server.adapters = version, adapters_variant
    server.get(BASE).family = family
    async with OllamaClient(server.url) as client:
        result = await deploy(adapters[0], store=store, client=client, config=config(quantize="q4_K_M"),
                              base_dir=tiny_llama_dir, memory=PathMemory(), llama_cpp_dir=llama_cpp_sources)
    assert result.promoted, result.reason
    assert creates(server) == ["adapter"] and [n for _, n in server.blob_uploads] == [result.bytes_uploaded]
    record = (await store.get_model_version(result.tag)).artifacts["registration"]
    assert record["path"] == "adapter" and "fallback" not in record


@pytest.mark.slow
async def test_auto_on_0_34_1_falls_back_to_gguf_once_and_remembers_it(
    server: OllamaTestServer, store: Any, adapters: list[Path], tiny_llama_dir: Path, llama_cpp_sources: Path,
    tmp_path: Path,
) -> None:
    server.version = "0.34.1"  # refuses to create adapter models (the reported variant)
    events: list[tuple[str, dict[str, Any]]] = []
    async with OllamaClient(server.url) as client:
        first = await deploy(adapters[0], store=store, client=client, config=config(quantize="q4_K_M"),
                             base_dir=tiny_llama_dir, memory=PathMemory(tmp_path / "paths.json"),
                             llama_cpp_dir=llama_cpp_sources, on_event=lambda s, i: events.append((s, i)))
        assert first.promoted, first.reason
        assert creates(server) == ["adapter", "gguf"]  # tried (the smallest upload), refused, gguf once
        uploads = len(server.blob_uploads)
        second = await deploy(adapters[1], store=store, client=client, config=config(quantize="q4_K_M"),
                              base_dir=tiny_llama_dir, memory=PathMemory(tmp_path / "paths.json"),
                              llama_cpp_dir=llama_cpp_sources)
        assert second.promoted, second.reason
    assert creates(server) == ["adapter", "gguf", "gguf"]  # remembered: straight to gguf
    ((digest, size),) = server.blob_uploads[uploads:]  # and only the model went up
    assert second.bytes_uploaded == size and gguf.gguf_file_type(server.blob_path(digest)) == "MOSTLY_Q4_K_M"
    fallback = [info for step, info in events if step == "fallback"]
    assert len(fallback) == 1 and fallback[0]["path"] == "gguf" and ADAPTERS_REMOVED in fallback[0]["reason"]
    v1 = (await store.get_model_version(first.tag)).artifacts
    assert v1["mode"] == "gguf" and ADAPTERS_REMOVED in v1["registration"]["fallback"]
    v2 = (await store.get_model_version(second.tag)).artifacts["registration"]
    assert v2["path"] == "gguf" and "refused an adapter" in v2["reason"] and "fallback" not in v2
    assert not server.get(first.tag).adapter_blobs
