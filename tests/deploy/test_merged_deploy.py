"""The merged path end to end on the tiny model: merge → content-addressed upload → create with server-side
quantization → warm-up → Ollama's prompt check → gate → switch; a redeploy sends only the files that changed;
rollback and retention treat merged versions like any other."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from deploy.config import DeployConfig
from deploy.ollama import OllamaClient
from deploy.pipeline import deploy
from deploy.promotion import apply_retention, rollback
from deploy.registration import PathMemory
from tests.harness.ollama_server import OllamaTestServer

pytestmark = pytest.mark.slow
BASE = "tiny-llama:base"


@pytest.fixture
def fresh_adapters(tiny_llama_adapters: list[Path], tmp_path: Path) -> list[Path]:
    """Copies of the session's adapters without a merged/ from another test."""
    out = []
    for i, adapter in enumerate(tiny_llama_adapters):
        shutil.copytree(adapter, tmp_path / f"a{i}", ignore=shutil.ignore_patterns("adapter.gguf", "merged"))
        out.append(tmp_path / f"a{i}")
    return out


def config(**overrides: Any) -> DeployConfig:
    values: dict[str, Any] = {"model_name": "tiny", "ollama_base": BASE, "probes": ("Hello?",), "eval_limit": 0,
                              "gate_margin": 1.0, "gate_options": {"temperature": 0.0, "seed": 0, "num_predict": 4},
                              "mode": "merged", "quantize": "Q4_K_M", "keep_versions": 1, "paraphrases": 0,
                              "consistency_n": 0}
    return DeployConfig(**{**values, **overrides})


async def test_a_merged_deploy_end_to_end_and_a_redeploy_uploads_only_what_changed(
    converting_server: OllamaTestServer, store: Any, fresh_adapters: list[Path], tiny_llama_dir: Path,
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    async with OllamaClient(converting_server.url) as client:
        first = await deploy(fresh_adapters[0], store=store, client=client, config=config(), base_dir=tiny_llama_dir,
                             memory=PathMemory(), on_event=lambda step, info: events.append((step, info)))
        assert first.promoted and first.status == "promoted", first.reason
        merged = fresh_adapters[0] / "merged"
        files = {p.name: p.stat().st_size for p in merged.iterdir() if p.is_file()}
        assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= set(files)
        # Every merged file travelled once, the base never.
        assert first.bytes_uploaded == sum(files.values()) == sum(n for _, n in converting_server.blob_uploads)
        (create,) = converting_server.requests_to("POST", "/api/create")
        assert set(create["files"]) == set(files) and create["quantize"] == "q4_K_M" and "adapters" not in create
        created = [info["status"] for step, info in events if step == "create"]
        assert created[:1] == ["converting model"] and "quantizing F16 model to Q4_K_M" in created
        assert "verifying conversion" in created and created[-1] == "success"
        uploading = [info for step, info in events if step == "uploading"]
        assert uploading[-1]["total_sent"] == uploading[-1]["total"] == sum(files.values())  # progress to 100 %
        assert converting_server.get(first.tag).quantization == "Q4_K_M"
        assert any(p["model"] == first.tag for p in converting_server.prompts)

        uploads_before = len(converting_server.blob_uploads)
        second = await deploy(fresh_adapters[1], store=store, client=client, config=config(),
                              base_dir=tiny_llama_dir, memory=PathMemory())
        assert second.promoted, second.reason
        sent = converting_server.blob_uploads[uploads_before:]
        weights = (fresh_adapters[1] / "merged" / "model.safetensors").stat().st_size
        # Only the merged weights differ: config and tokenizer blobs were found by HEAD and not sent again.
        assert [size for _, size in sent] == [weights] and second.bytes_uploaded == weights
        v2 = await store.get_model_version(second.tag)
        assert v2.artifacts["blobs"]["model.safetensors"] == sent[0][0]
        assert v2.artifacts["blobs"]["tokenizer.model"] == (await store.get_model_version(first.tag)
                                                             ).artifacts["blobs"]["tokenizer.model"]


async def test_rollback_and_retention_work_for_merged_versions(
    converting_server: OllamaTestServer, store: Any, fresh_adapters: list[Path], tiny_llama_dir: Path,
) -> None:
    async with OllamaClient(converting_server.url) as client:
        tags = []
        for adapter in (*fresh_adapters, fresh_adapters[0]):
            result = await deploy(adapter, store=store, client=client, config=config(quantize=None, keep_versions=10),
                                  base_dir=tiny_llama_dir, memory=PathMemory())
            assert result.promoted and result.status == "promoted", result.reason
            tags.append(result.tag)
        back = await rollback(store, client)
        assert back.tag == tags[2]  # v4 rolled back: v3 answers, v2 is the next rollback target
        deleted = await apply_retention(store, client, "tiny", keep=1)
        present = {m.name for m in await client.list_models()}
        answer = await client.chat(tags[2], [{"role": "user", "content": "hi"}], {"num_predict": 2})
    assert deleted == [tags[0]] and tags[0] not in present and {tags[1], tags[2], tags[3]} <= present
    assert not (await store.get_model_version(tags[0])).in_ollama
    assert isinstance(answer, str) and BASE in present
    assert [(await store.get_model_version(t)).artifacts["mode"] for t in tags] == ["merged"] * 4
