"""``OllamaClient.embed`` against the Ollama-API test server's /api/embed (the shape Ollama answers with), and the
embeddings stored and indexed for retrieval."""

from __future__ import annotations

import math

import aiohttp
import numpy as np
import pytest

from data.conversation import Conversation
from data.vectors import build_index, index_pairs, load_vectors
from deploy.ollama import ModelNotFound, OllamaClient, OllamaError, OllamaUnavailable
from tests.harness.db import BACKENDS, make_store
from tests.harness.ollama_server import EMBED_DIM, NO_EMBEDDINGS, OllamaTestServer, trigram_embedding


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    """Vectors are stored on both backends (tests/deploy's own store fixture is SQLite only)."""
    store, cleanup = await make_store(request.param, tmp_path)
    try:
        yield store
    finally:
        await cleanup()

EMBEDDER = "nomic-embed-text:latest"


async def test_embed_returns_one_unit_vector_per_text_in_order(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_embedding_model(EMBEDDER)
    texts = ["how do I reset my password", "你是谁？", "how do I reset my password"]
    async with OllamaClient(ollama_server.url) as client:
        vectors = await client.embed("nomic-embed-text", texts)  # "latest" implied, as Ollama does
        assert await client.embed(EMBEDDER, []) == []  # nothing asked: no request
    assert len(vectors) == 3 and all(len(v) == EMBED_DIM for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-9) for v in vectors)
    assert vectors[0] == vectors[2] == trigram_embedding(texts[0]) and vectors[0] != vectors[1]
    assert ollama_server.requests_to("POST", "/api/embed") == [{"model": "nomic-embed-text", "input": texts}]


async def test_the_server_answers_in_ollamas_shape(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_embedding_model(EMBEDDER)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{ollama_server.url}/api/embed", json={"model": EMBEDDER, "input": "hi"}) as resp:
            body = await resp.json()
        assert resp.status == 200
        assert set(body) == {"model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"}
        assert body["model"] == EMBEDDER and len(body["embeddings"]) == 1
        async with http.post(f"{ollama_server.url}/api/embed", json={"model": "nope", "input": "hi"}) as resp:
            assert resp.status == 404 and await resp.json() == {"error": "model 'nope' not found"}


async def test_embed_failures_are_typed(ollama_server: OllamaTestServer, unreachable_ollama_url: str) -> None:
    ollama_server.add_embedding_model(EMBEDDER)
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(ModelNotFound, match="not-pulled"):
            await client.embed("not-pulled", ["x"])
        ollama_server.embed_error = (500, "llama runner process has terminated")
        with pytest.raises(OllamaError, match="runner process has terminated") as info:
            await client.embed(EMBEDDER, ["x"])
        assert info.value.status == 500
    async with OllamaClient(unreachable_ollama_url, timeout=5) as client:
        with pytest.raises(OllamaUnavailable):
            await client.embed(EMBEDDER, ["x"])


async def test_pairs_embedded_through_the_server_are_stored_and_searchable(store,
                                                                          ollama_server: OllamaTestServer) -> None:
    ollama_server.add_embedding_model(EMBEDDER)
    rows = [await store.add_example(Conversation.qa(q, "a"), source="teach", status="approved")
            for q in ("how do I reset my password", "what is a LoRA adapter")]
    index = await build_index(store, embed_model=EMBEDDER)
    assert index.without_vectors() == [r.id for r in rows]
    async with OllamaClient(ollama_server.url) as client:
        async def embed(texts: list[str]) -> list[list[float]]:
            return await client.embed(EMBEDDER, texts)

        await index_pairs(store, index, [r.id for r in rows], embed=embed, embed_model=EMBEDDER)
        query = np.asarray((await client.embed(EMBEDDER, ["ho do i resett my pasword"]))[0])
    assert index.without_vectors() == [] and set(await load_vectors(store, EMBEDDER)) == {r.id for r in rows}
    hits = index.query("ho do i resett my pasword", 3, vector=query)
    assert [h.example_id for h in hits] == [rows[0].id] and hits[0].lexical is None and hits[0].dense > 0.5
    # A restart reads the stored vectors back: no embedding call needed.
    calls = len(ollama_server.requests_to("POST", "/api/embed"))
    rebuilt = await build_index(store, embed_model=EMBEDDER)
    assert rebuilt.without_vectors() == [] and len(ollama_server.requests_to("POST", "/api/embed")) == calls


async def test_only_embedding_models_embed_and_truncate_and_dimensions_are_honoured(
        ollama_server: OllamaTestServer) -> None:
    ollama_server.add_embedding_model(EMBEDDER)
    ollama_server.add_scripted_model("chatty:1", reply="I chat")
    long = " ".join(f"w{i}" for i in range(600))  # words stand in for tokens; the context is 512

    async def embed(body: dict) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http, http.post(f"{ollama_server.url}/api/embed", json=body) as resp:
            return resp.status, await resp.json()

    assert await embed({"model": "chatty:1", "input": "hi"}) == (500, {"error": NO_EMBEDDINGS})
    text = "how do I reset my password"
    status, body = await embed({"model": EMBEDDER, "input": [text, "x"], "dimensions": 384})
    assert status == 200 and [len(v) for v in body["embeddings"]] == [384, 384]
    head = trigram_embedding(text)[:384]
    norm = math.sqrt(sum(x * x for x in head))
    assert body["embeddings"][0] == pytest.approx([x / norm for x in head])
    assert await embed({"model": EMBEDDER, "input": long, "truncate": False}) == (
        400, {"error": "input exceeds maximum context length"})
    status, body = await embed({"model": EMBEDDER, "input": long})
    assert status == 200 and body["prompt_eval_count"] == 510
    assert body["embeddings"][0] == trigram_embedding(" ".join(long.split()[:510]))
