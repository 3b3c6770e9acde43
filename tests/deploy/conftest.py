"""Fixtures the deploy tests share: one SQLite store (a version's numbers are JSON, the same on every backend;
the backends themselves are tested in tests/data) and the Ollama test server with the tiny base pulled."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.modelfile import serving_format_for
from tests.harness.db import make_store
from tests.harness.models import convert_base_to_gguf
from tests.harness.ollama_server import OllamaTestServer

TINY_BASE = "tiny-llama:base"


@pytest.fixture
async def store(tmp_path: Path):
    store, cleanup = await make_store("sqlite", tmp_path)
    try:
        yield store
    finally:
        await cleanup()


@pytest.fixture
def converting_server(ollama_server: OllamaTestServer, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path],
                      llama_cpp_sources: Path) -> OllamaTestServer:
    """The tiny base pulled, and safetensors converted by llama.cpp's converter (as Ollama converts them)."""
    ollama_server.converter = lambda hf_dir, out: convert_base_to_gguf(llama_cpp_sources, hf_dir, out)
    fmt = serving_format_for(tiny_llama_adapters[0])
    ollama_server.add_base_model(TINY_BASE, tiny_llama_gguf, template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters())
    return ollama_server
