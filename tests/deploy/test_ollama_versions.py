"""The Ollama-API test server behaves as the Ollama release it is told to be, and the deploy picks its path from
what the daemon says: adapter where it may serve one, gguf otherwise, one remembered fallback when it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.config import DeployConfig
from deploy.modelfile import serving_format_for
from deploy.ollama import ModelNotFound, OllamaClient, OllamaError
from deploy.pipeline import deploy
from deploy.registration import (
    DaemonFacts,
    PathMemory,
    PathUnavailable,
    choose_path,
    is_adapter_refusal,
    parse_version,
    quantize_type,
)
from tests.harness.models import convert_base_to_gguf
from tests.harness.ollama import gguf_header
from tests.harness.ollama_server import ADAPTERS_REMOVED, LORAS_NOT_IMPLEMENTED, OllamaTestServer

BASE = "tiny-llama:base"


def fake_gguf(path: Path, payload: bytes = b"") -> Path:
    path.write_bytes(b"GGUF" + payload.ljust(64, b"\0"))
    return path


async def post(server: OllamaTestServer, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(server.url + path, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


# ---- the daemon's facts → the path (pure) ------------------------------------------------------------------


def facts(version: str = "0.13.0", arch: str = "llama", renderer: str = "") -> DaemonFacts:
    return DaemonFacts("http://ollama:11434", version, "base:1", arch, arch, ("completion",), renderer)


def test_versions_parse_and_dev_builds_count_as_newest() -> None:
    assert parse_version("0.13.0") == (0, 13, 0) and parse_version("v0.34.1-rc2") == (0, 34, 1)
    assert parse_version("0.0.0") is None and parse_version("dev") is None
    assert facts("0.0.0").adapter_doubt() is not None  # a dev build may already lack adapters


@pytest.mark.parametrize(("version", "arch", "renderer", "path", "why"), [
    ("0.13.0", "llama", "", "adapter", "creates and loads adapter models"),
    ("0.34.0", "qwen2", "", "adapter", "creates and loads adapter models"),
    ("0.30.0", "qwen3", "", "adapter", "creates and loads adapter models"),  # llama-server applies --lora
    ("0.34.1", "llama", "", "adapter", "the gguf path if it is refused"),  # tried: the variant decides
    ("0.40.2", "qwen2", "", "adapter", "removed from its CLI in 0.34.1"),
    ("0.13.0", "qwen3", "", "gguf", LORAS_NOT_IMPLEMENTED),
    ("0.29.0", "gemma3", "", "gguf", "new engine"),
    ("0.13.0", "qwen2", "qwen3-coder", "gguf", "replaces our TEMPLATE"),
])
def test_auto_picks_the_path_the_daemon_can_serve(version, arch, renderer, path, why) -> None:
    choice = choose_path("auto", facts(version, arch, renderer))
    assert (choice.path, choice.mode) == (path, "auto") and why in choice.reason


def test_explicit_modes_never_fall_back() -> None:
    with pytest.raises(PathUnavailable, match=r"deploy_mode is adapter but Ollama 0\.34\.1 may not create"):
        choose_path("adapter", facts("0.34.1"))
    with pytest.raises(PathUnavailable, match="new engine"):
        choose_path("adapter", facts("0.13.0", "qwen3"))
    assert choose_path("merged", facts("0.13.0")).path == "merged"
    assert choose_path("gguf", facts("0.13.0")).path == "gguf"
    with pytest.raises(PathUnavailable, match="cannot chat"):
        choose_path("auto", DaemonFacts("h", "0.13.0", "embed:1", "bert", "bert", ("embedding",)))


def test_a_refusal_is_remembered_per_daemon_and_base_until_the_version_changes(tmp_path: Path) -> None:
    memory = PathMemory(tmp_path / "paths.json")
    memory.remember(facts("0.13.0"), LORAS_NOT_IMPLEMENTED)
    again = choose_path("auto", facts("0.13.0"), PathMemory(tmp_path / "paths.json"))  # read back from the file
    assert again.path == "gguf" and again.remembered and LORAS_NOT_IMPLEMENTED in again.reason
    assert choose_path("auto", facts("0.13.1"), memory).path == "adapter"  # upgraded daemon: tried again
    other = DaemonFacts("http://other:11434", "0.13.0", "base:1", "llama", "llama", ("completion",))
    assert choose_path("auto", other, memory).path == "adapter"


def test_only_refusals_of_adapters_as_such_count() -> None:
    assert is_adapter_refusal(LORAS_NOT_IMPLEMENTED) and is_adapter_refusal(f"Ollama error: {ADAPTERS_REMOVED}")
    # A broken adapter is a broken candidate: merging it would hide that.
    assert not is_adapter_refusal("llama runner process has terminated: error loading model: failed to load LoRA "
                                  "adapter: the adapter does not match the model")
    assert not is_adapter_refusal("only one adapter is currently supported")


def test_quantize_types_are_ollamas() -> None:  # option types: tests/deploy/test_options.py
    assert quantize_type("Q4_K_M") == "q4_K_M" and quantize_type("BF16") == "bf16"
    with pytest.raises(ValueError, match="q4_K_M, q4_K_S, q8_0, f16, f32, bf16"):
        quantize_type("q5_K_M")


# ---- the test server as each release -------------------------------------------------------------------------


async def test_the_server_reports_its_version_and_ollamas_unknown_model_text(tmp_path: Path) -> None:
    server = OllamaTestServer(tmp_path / "s", version="0.34.1").start()
    try:
        async with OllamaClient(server.url) as client:
            assert await client.version() == "0.34.1"
            server.version = "0.12.6"
            assert await client.version() == "0.12.6"
        for path, body in (("/api/chat", {"model": "nope:1", "messages": [{"role": "user", "content": "hi"}]}),
                           ("/api/generate", {"model": "nope:1", "prompt": "hi"}), ("/api/show", {"model": "nope:1"})):
            assert await post(server, path, body) == (404, {"error": "model 'nope:1' not found"})
    finally:
        server.stop()


async def test_from_0_34_1_create_refuses_adapters_in_ollamas_shape(ollama_server: OllamaTestServer,
                                                                    tmp_path: Path) -> None:
    ollama_server.add_base_model(BASE, fake_gguf(tmp_path / "base.gguf"))
    adapter = ollama_server.add_blob(gguf_header(tmp_path / "adapter.gguf", kind="adapter"))
    body = {"model": "x:1", "from": BASE, "adapters": {"adapter.gguf": adapter}, "stream": False}
    ollama_server.version = "0.34.0"
    assert (await post(ollama_server, "/api/create", body))[0] == 200
    ollama_server.version = "0.34.1"
    assert await post(ollama_server, "/api/create", {**body, "model": "x:2"}) == (400, {"error": ADAPTERS_REMOVED})
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(OllamaError) as err:
            await client.create("x:3", from_=BASE, adapters={"adapter.gguf": adapter})
    assert err.value.status == 400 and ADAPTERS_REMOVED in err.value.message and is_adapter_refusal(err.value.message)
    assert ollama_server.get("x:1") is not None and ollama_server.get("x:2") is None


async def test_a_new_engine_base_refuses_adapters_at_the_first_chat(ollama_server: OllamaTestServer,
                                                                    tmp_path: Path) -> None:
    ollama_server.add_base_model("qwen3:base", fake_gguf(tmp_path / "base.gguf"), family="qwen3")
    adapter = ollama_server.add_blob(gguf_header(tmp_path / "adapter.gguf", kind="adapter"))
    async with OllamaClient(ollama_server.url) as client:
        await client.create("tuned:1", from_="qwen3:base", adapters={"adapter.gguf": adapter})  # create accepts it
        shown = await client.show("qwen3:base")
        assert shown["model_info"]["general.architecture"] == "qwen3"
        with pytest.raises(OllamaError) as err:
            await client.chat("tuned:1", [{"role": "user", "content": "hi"}])
        with pytest.raises(OllamaError):
            await client.render_prompt("tuned:1", [{"role": "user", "content": "hi"}])  # it loads the model first
    assert err.value.status == 500 and err.value.message == f"Ollama error: {LORAS_NOT_IMPLEMENTED}"


async def test_debug_render_only_returns_the_prompt_from_0_13_0_and_is_ignored_before(
        ollama_server: OllamaTestServer) -> None:
    fmt_template = "{{ range .Messages }}[{{ .Role }}] {{ .Content }}\n{{ end }}"
    ollama_server.add_scripted_model("m:1", reply="a generated reply", template=fmt_template, system="sys")
    chat = [{"role": "user", "content": "héllo 🚢"}]
    async with OllamaClient(ollama_server.url) as client:
        assert await client.render_prompt("m:1", chat) == "[system] sys\n[user] héllo 🚢\n"
        ollama_server.version = "0.12.6"
        assert await client.render_prompt("m:1", chat) is None  # that daemon answered the chat instead
        with pytest.raises(ModelNotFound):
            await client.render_prompt("missing:1", chat)
    assert [r["prompt"] for r in ollama_server.rendered] == ["[system] sys\n[user] héllo 🚢\n"]


async def test_quantize_accepts_only_ollamas_types_and_f16_or_f32_sources(ollama_server: OllamaTestServer,
                                                                         tmp_path: Path) -> None:
    ollama_server.add_base_model(BASE, gguf_header(tmp_path / "base.gguf", file_type=1))  # F16
    ollama_server.add_base_model("q4:base", gguf_header(tmp_path / "q4.gguf", file_type=15))  # Q4_K_M
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(OllamaError, match="unsupported quantization type Q5_K_M - supported types are F32, "
                                              "F16, Q4_K_S, Q4_K_M, Q8_0"):
            await client.create("q:2", from_=BASE, quantize="q5_K_M")
        with pytest.raises(OllamaError, match="quantization is only supported for F16 and F32 models"):
            await client.create("q:3", from_="q4:base", quantize="q8_0")
    assert ollama_server.get("q:2") is None and ollama_server.get("q:3") is None


@pytest.mark.slow
async def test_quantize_is_performed_and_reported_as_ollama_reports_it(
    ollama_server: OllamaTestServer, llama_cpp_sources: Path, tiny_llama_dir: Path, tmp_path: Path,
) -> None:
    import gguf

    f16 = convert_base_to_gguf(llama_cpp_sources, tiny_llama_dir, tmp_path / "f16.gguf", "f16")
    base = ollama_server.add_base_model(BASE, f16)
    lines: list[str] = []
    async with OllamaClient(ollama_server.url) as client:
        await client.create("q:1", from_=BASE, quantize="q4_k_m", on_progress=lambda p: lines.append(p.status))
        assert await client.chat("q:1", [{"role": "user", "content": "hi"}], {"num_predict": 2, "seed": 0})
    q = ollama_server.get("q:1")
    assert q.quantization == "Q4_K_M" and q.model_blob != base.model_blob
    recorded = gguf.GGUFReader(str(ollama_server.blob_path(q.model_blob))).fields["general.file_type"].contents()
    assert recorded == 15  # llama.cpp's MOSTLY_Q4_K_M: the weights were quantized, not relabelled
    assert "quantizing F16 model to Q4_K_M" in lines and lines[-2:] == ["writing manifest", "success"]
    assert lines.index("verifying conversion") > lines.index("quantizing F16 model to Q4_K_M")


async def test_option_types_are_checked_at_every_chat_as_ollama_does(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("m:1", reply="ok")
    async with OllamaClient(ollama_server.url) as client:
        await client.create("typo:1", from_="m:1", parameters={"temperature": "0.7"})  # create stores anything
        with pytest.raises(OllamaError) as err:
            await client.chat("typo:1", [{"role": "user", "content": "hi"}])
        assert err.value.status == 500 and 'option "temperature" must be of type float32' in err.value.message
        assert await client.chat("m:1", [{"role": "user", "content": "hi"}], {"num_ctx": 512}) == "ok"


# ---- full deploys: the path on each kind of daemon -----------------------------------------------------------


def config(**overrides: Any) -> DeployConfig:
    values: dict[str, Any] = {"model_name": "tiny", "ollama_base": BASE, "probes": ("Hello?",), "eval_limit": 0,
                              "gate_margin": 1.0, "gate_options": {"temperature": 0.0, "seed": 0, "num_predict": 4},
                              "outtype": "f32", "paraphrases": 0, "consistency_n": 0}
    return DeployConfig(**{**values, **overrides})


def creates(server: OllamaTestServer) -> list[str]:
    return ["adapter" if c.get("adapters") else "gguf" if set(c.get("files") or {}) == {"model.gguf"} else "merged"
            for c in server.requests_to("POST", "/api/create")]


@pytest.mark.slow
async def test_auto_takes_the_adapter_path_on_an_old_daemon_and_gguf_on_a_new_one(
    converting_server: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
    llama_cpp_sources: Path,
) -> None:
    memory = PathMemory()
    async with OllamaClient(converting_server.url) as client:
        old = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(), base_dir=tiny_llama_dir,
                           memory=memory, llama_cpp_dir=llama_cpp_sources)
        converting_server.version = "0.34.1"
        new = await deploy(tiny_llama_adapters[1], store=store, client=client, config=config(),
                           base_dir=tiny_llama_dir, memory=memory, llama_cpp_dir=llama_cpp_sources)
    assert old.promoted and new.promoted, (old.reason, new.reason)
    assert creates(converting_server) == ["adapter", "adapter", "gguf"]  # 0.34.1 refused the adapter it was offered
    v1, v2 = await store.get_model_version(old.tag), await store.get_model_version(new.tag)
    assert v1.artifacts["mode"] == "adapter" and v1.artifacts["registration"]["ollama_version"] == "0.13.0"
    assert v2.artifacts["mode"] == "gguf" and ADAPTERS_REMOVED in v2.artifacts["registration"]["fallback"]


@pytest.mark.slow
async def test_auto_takes_the_gguf_path_on_a_new_engine_base(
    ollama_server: OllamaTestServer, store: Any, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path],
    tiny_llama_dir: Path, llama_cpp_sources: Path,
) -> None:
    fmt = serving_format_for(tiny_llama_adapters[0])
    ollama_server.add_base_model(BASE, tiny_llama_gguf, template=fmt.template, parameters=fmt.parameters(),
                                 family="qwen3")  # the new engine: adapters are refused at load
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(),
                              base_dir=tiny_llama_dir, memory=PathMemory(), llama_cpp_dir=llama_cpp_sources)
    assert result.promoted, result.reason
    assert creates(ollama_server) == ["gguf"]
    record = (await store.get_model_version(result.tag)).artifacts["registration"]
    assert record["path"] == "gguf" and "new engine" in record["reason"] and "fallback" not in record


@pytest.mark.slow
async def test_a_refusal_the_facts_did_not_predict_falls_back_to_gguf_once_and_is_remembered(
    converting_server: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
    tmp_path: Path, llama_cpp_sources: Path,
) -> None:
    # A release that moved the base's architecture to the new engine: loraloop's list does not know it yet.
    converting_server.new_engine_families.add("llama")
    memory = PathMemory(tmp_path / "paths.json")
    events: list[tuple[str, dict[str, Any]]] = []
    async with OllamaClient(converting_server.url) as client:
        first = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(),
                             base_dir=tiny_llama_dir, memory=memory, on_event=lambda s, i: events.append((s, i)),
                             llama_cpp_dir=llama_cpp_sources)
        assert first.promoted, first.reason
        assert creates(converting_server) == ["adapter", "gguf"]  # tried, refused at warm-up, gguf once
        second = await deploy(tiny_llama_adapters[1], store=store, client=client, config=config(),
                              base_dir=tiny_llama_dir, memory=PathMemory(tmp_path / "paths.json"),
                              llama_cpp_dir=llama_cpp_sources)
        assert second.promoted and creates(converting_server) == ["adapter", "gguf", "gguf"]  # remembered
        converting_server.version = "0.13.1"  # an upgraded daemon gets another chance
        third = await deploy(tiny_llama_adapters[2], store=store, client=client, config=config(),
                             base_dir=tiny_llama_dir, memory=memory, llama_cpp_dir=llama_cpp_sources)
    assert third.promoted and creates(converting_server)[3:] == ["adapter", "gguf"]
    fallback = [info for step, info in events if step == "fallback"]
    assert len(fallback) == 1 and LORAS_NOT_IMPLEMENTED in fallback[0]["reason"]
    v1 = await store.get_model_version(first.tag)
    assert v1.artifacts["mode"] == "gguf" and LORAS_NOT_IMPLEMENTED in v1.artifacts["registration"]["fallback"]
    v2 = await store.get_model_version(second.tag)
    assert "refused an adapter" in v2.artifacts["registration"]["reason"]
    assert not converting_server.get(first.tag).adapter_blobs  # the refused adapter tag did not survive


@pytest.mark.slow
async def test_explicit_adapter_mode_fails_with_the_reason_and_never_falls_back(
    converting_server: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
) -> None:
    async with OllamaClient(converting_server.url) as client:
        converting_server.version = "0.34.1"
        new = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(mode="adapter"),
                           base_dir=tiny_llama_dir, memory=PathMemory())
        assert new.status == "failed" and "may not create models with LoRA adapters" in new.reason, new.reason
        assert "deploy_mode to gguf, merged or auto" in new.reason and creates(converting_server) == []
        converting_server.version = "0.13.0"
        converting_server.new_engine_families.add("llama")
        refused = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(mode="adapter"),
                               base_dir=tiny_llama_dir, memory=PathMemory())
        assert not await client.has_model(refused.tag)
    assert refused.status == "failed" and LORAS_NOT_IMPLEMENTED in refused.reason
    assert "never falls back" in refused.reason
    assert creates(converting_server) == ["adapter"]
    assert await store.active_model_version() is None
