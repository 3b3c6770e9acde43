"""Ollama judges the prompt: before the gate a candidate's own rendering of real chats (``_debug_render_only``) is
compared with training's, token for token with the base's tokenizer; a difference fails the version with a diff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deploy.config import DeployConfig
from deploy.modelfile import CHATML_TEMPLATE, SERVED_CHECK_CHATS, serving_format_for
from deploy.ollama import OllamaClient
from deploy.pipeline import deploy
from deploy.registration import PathMemory
from tests.harness.ollama_server import OllamaTestServer

pytestmark = pytest.mark.slow
BASE = "tiny-llama:base"
# What a built-in renderer of a thinking model emits: an empty think block after the assistant header, which the
# chat template the adapter was trained with never had.
THINKING_RENDERER = CHATML_TEMPLATE.replace("<|im_start|>assistant\n{{ end }}",
                                            "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ end }}")


def register_base(server: OllamaTestServer, gguf: Path, adapter: Path, renderer: str = "") -> None:
    fmt = serving_format_for(adapter)
    assert fmt.template == CHATML_TEMPLATE and THINKING_RENDERER != CHATML_TEMPLATE
    server.renderers["thinking"] = THINKING_RENDERER
    server.add_base_model(BASE, gguf, template=fmt.template, system=fmt.system, parameters=fmt.parameters(),
                          renderer=renderer)


def config(**overrides: Any) -> DeployConfig:
    values: dict[str, Any] = {"model_name": "tiny", "ollama_base": BASE, "probes": ("Hello?",), "eval_limit": 0,
                              "gate_margin": 1.0, "gate_options": {"temperature": 0.0, "seed": 0, "num_predict": 4},
                              "outtype": "f32", "paraphrases": 0, "consistency_n": 0}
    return DeployConfig(**{**values, **overrides})


async def test_ollamas_rendering_of_real_chats_equals_trainings_token_for_token(
    ollama_server: OllamaTestServer, store: Any, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path],
    tiny_llama_dir: Path,
) -> None:
    register_base(ollama_server, tiny_llama_gguf, tiny_llama_adapters[0])
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(),
                              base_dir=tiny_llama_dir, memory=PathMemory())
    assert result.promoted, result.reason
    rendered = [r for r in ollama_server.rendered if r["model"] == result.tag]
    assert len(rendered) == len(SERVED_CHECK_CHATS) and "🚢" in rendered[1]["prompt"]
    record = (await store.get_model_version(result.tag)).artifacts["registration"]
    assert "rendered 4 chats (_debug_render_only) exactly as training did, token for token" in record["served_prompt"]


async def test_a_prompt_ollama_renders_differently_fails_the_version_with_a_diff_before_the_gate(
    ollama_server: OllamaTestServer, store: Any, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path],
    tiny_llama_dir: Path,
) -> None:
    # The base has a built-in renderer: a model created from it inherits it and Ollama ignores our TEMPLATE.
    # Only the daemon's own rendering shows that; the adapter mode is forced so the adapter path is taken.
    register_base(ollama_server, tiny_llama_gguf, tiny_llama_adapters[0], renderer="thinking")
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(mode="adapter"),
                              base_dir=tiny_llama_dir, memory=PathMemory())
        assert not await client.has_model(result.tag)
    assert result.status == "failed" and result.gate is None
    assert "Ollama renders a different prompt for loraloop-tiny:v1 than training used (user chat)" in result.reason
    assert "token " in result.reason and "<think>" in result.reason, result.reason
    # Nothing but the warm-up was generated: no gate table was ever produced.
    assert [p["model"] for p in ollama_server.prompts] == [result.tag]
    version = await store.get_model_version(result.tag)
    assert version.status == "failed" and version.failure_reason == result.reason
    assert await store.active_model_version() is None


async def test_auto_serves_a_base_with_a_renderer_as_gguf_and_ollama_confirms_the_prompt(
    ollama_server: OllamaTestServer, store: Any, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path],
    tiny_llama_dir: Path, llama_cpp_sources: Path,
) -> None:
    register_base(ollama_server, tiny_llama_gguf, tiny_llama_adapters[0], renderer="thinking")
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(),
                              base_dir=tiny_llama_dir, memory=PathMemory(), llama_cpp_dir=llama_cpp_sources)
    assert result.promoted, result.reason
    record = (await store.get_model_version(result.tag)).artifacts["registration"]
    assert record["path"] == "gguf" and "renderer 'thinking'" in record["reason"]
    assert "token for token" in record["served_prompt"]


async def test_a_daemon_without_debug_render_keeps_the_interpreter_check_and_says_so(
    ollama_server: OllamaTestServer, store: Any, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path],
    tiny_llama_dir: Path,
) -> None:
    ollama_server.version = "0.12.6"
    register_base(ollama_server, tiny_llama_gguf, tiny_llama_adapters[0])
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(),
                              base_dir=tiny_llama_dir, memory=PathMemory())
    assert result.promoted, result.reason
    assert not ollama_server.rendered and not any("_debug_render_only" in (body or {})
                                                  for body in ollama_server.requests_to("POST", "/api/chat"))
    record = (await store.get_model_version(result.tag)).artifacts["registration"]
    assert record["served_prompt"] == ("Ollama 0.12.6 has no _debug_render_only: checked with loraloop's template "
                                       "interpreter only (serving_format)")
