"""Retrieval: lexical quality on a fixed set, the index's incremental behaviour, fusion, and the stored side."""

from __future__ import annotations

import json
import shutil

import bm25s
import numpy as np
import pytest

from data.conversation import Conversation
from data.retrieval import Pair, RetrievalConfig, RetrievalError, RetrievalIndex, tokenize, within_budget
from data.vectors import (
    approved_pairs,
    build_index,
    delete_vectors,
    delta_ids,
    index_pairs,
    load_vectors,
    save_vectors,
)
from tests.data import retrieval_set

needs_datasets = pytest.mark.skipif(not retrieval_set.DATASETS.is_dir(),
                                    reason=f"{retrieval_set.DATASETS} (shared datasets) is not present")


def index_of(*questions: str, config: RetrievalConfig | None = None) -> RetrievalIndex:
    index = RetrievalIndex(config)
    index.add([Pair(n, q, f"answer {n}") for n, q in enumerate(questions, start=1)])
    return index


def test_tokens_split_cjk_into_bigrams_and_fold_english():
    assert tokenize("你是谁？") == ["你是", "是谁"]
    assert tokenize("谁") == ["谁"]
    assert tokenize("What are the Models' abilities? Schrödinger's") == ["what", "model", "ability", "schrodinger"]
    assert tokenize("ＬｏＲＡ 2 adapters") == ["lora", "2", "adapter"]


@needs_datasets
def test_lexical_recall_at_3_on_the_fixed_set_is_above_the_floor():
    pairs = retrieval_set.corpus()
    questions = [q for q, _ in pairs]
    retrieval_set.check_targets(questions)
    index = RetrievalIndex()
    index.add([Pair(n, q, a) for n, (q, a) in enumerate(pairs)])
    found = [any(retrieval_set.is_target(questions[h.example_id], targets) for h in index.query(query, 3))
             for query, targets in retrieval_set.QUERIES]
    recall = sum(found) / len(found)
    missed = [q for (q, _), ok in zip(retrieval_set.QUERIES, found, strict=True) if not ok]
    assert recall >= retrieval_set.RECALL_AT_3_FLOOR, f"recall@3 {recall:.3f}; missed: {missed}"
    # English and Chinese both count: neither language may carry the other.
    for script in (str.isascii, lambda q: not q.isascii()):
        subset = [ok for (q, _), ok in zip(retrieval_set.QUERIES, found, strict=True) if script(q)]
        assert len(subset) >= 25 and sum(subset) / len(subset) >= retrieval_set.RECALL_AT_3_FLOOR
    empty = [q for q in retrieval_set.OFF_TOPIC if not index.query(q, 3)]
    assert "zxqv blorf wibble" in empty and len(empty) >= 3, empty


def test_score_matrix_is_the_one_bm25s_builds_itself():
    questions = ["what is lora", "lora adapters and lora ranks", "你是谁", "who are you", "rank of a matrix",
                 "what", "", "adapters adapters adapters for models"]
    index = index_of(*questions)
    ours = index._lexical.bm25.scores
    vocab = index._vocab
    reference = bm25s.BM25(k1=1.5, b=0.75, method="lucene").build_index_from_ids(
        list(range(len(vocab))), [[vocab[t] for t in tokenize(q)] for q in questions], show_progress=False)
    np.testing.assert_array_equal(ours["indptr"], reference["indptr"])
    np.testing.assert_array_equal(ours["indices"], reference["indices"])
    np.testing.assert_allclose(ours["data"], reference["data"], rtol=1e-6)


def test_add_and_remove_are_incremental():
    index = index_of("how do I reset my password", "what is a LoRA adapter")
    assert [h.example_id for h in index.query("reset password", 3)] == [1]
    index.add([Pair(3, "how do I change my password", "settings → account")])
    assert {h.example_id for h in index.query("password", 3)} == {1, 3}
    assert [h.example_id for h in index.query("what is a lora adapter", 3)] == [2]
    index.remove([1, 99])  # 99 was never indexed: ignored
    assert index.query("reset password", 3) == [] and 1 not in index and len(index) == 2
    assert [h.example_id for h in index.query("change my password", 3)] == [3]
    index.add([Pair(2, "which GPU do I need", "any with 8 GB")])  # same id, new text: replaced
    assert index.query("lora adapter", 3) == []
    assert [h.example_id for h in index.query("which gpu", 3)] == [2]
    index.remove([2, 3])
    assert len(index) == 0 and index.query("password", 3) == []


def test_min_score_cutoff_gives_an_empty_result():
    index = index_of("how do I reset my password", "what is a LoRA adapter", "the capital of France is Paris")
    assert index.query("tell me about knitting socks in winter", 3) == []
    # One rare shared word among many unknown ones is below the default cutoff, and above a cutoff of zero.
    query = "password blorf wibble zxqv quux frobnicate"
    assert index.query(query, 3) == []
    assert [h.example_id for h in index_of(*["how do I reset my password"], config=RetrievalConfig(min_lexical=0))
            .query(query, 3)] == [1]
    hit = index.query("how do I reset my password?", 1)[0]
    assert 0.8 < hit.lexical <= 1.0  # every query word once (in a longer than average pair): near the full mass


def test_fusion_orders_by_reciprocal_rank():
    config = RetrievalConfig(min_lexical=0.0, min_dense=0.5, rrf_k=60)
    index = RetrievalIndex(config)
    e = np.eye(4, dtype=np.float32)
    pairs = [Pair(1, "alpha beta gamma", "A"), Pair(2, "alpha beta delta", "B"), Pair(3, "alpha epsilon zeta", "C"),
             Pair(4, "unrelated words only", "D")]
    vectors = [e[2], e[0], 0.8 * e[0] + 0.6 * e[1], 0.95 * e[0] + 0.31 * e[3]]
    index.add(pairs, np.stack(vectors))
    hits = index.query("alpha beta gamma", 4, vector=e[0])
    # lexical: 1, 2, 3; dense (cosine ≥ 0.5): 2 (1.0), 4 (0.95), 3 (0.8); 1 is orthogonal, below the cutoff.
    # Fused: 2 = 1/62 + 1/61 > 3 = 1/63 + 1/63 > 1 = 1/61 > 4 = 1/62.
    assert [(h.example_id, h.lexical_rank, h.dense_rank) for h in hits] == [
        (2, 2, 1), (3, 3, 3), (1, 1, None), (4, None, 2)]
    assert hits[0].score == pytest.approx(1 / 62 + 1 / 61, abs=1e-6)
    assert hits[1].score == pytest.approx(1 / 63 + 1 / 63, abs=1e-6)
    assert hits[2].score == pytest.approx(1 / 61, abs=1e-6) and hits[2].dense is None
    assert hits[3].score == pytest.approx(1 / 62, abs=1e-6) and hits[3].lexical is None
    assert hits[0].dense == pytest.approx(1.0, abs=0.02) and hits[1].dense == pytest.approx(0.8, abs=0.02)
    # The same index without a query vector is lexical only.
    assert [h.example_id for h in index.query("alpha beta gamma", 4)] == [1, 2, 3]
    json.dumps([h.to_dict() for h in hits])  # what `loraloop retrieval query --json` prints


def test_allow_and_exclude_restrict_both_lists():
    e = np.eye(3, dtype=np.float32)
    index = RetrievalIndex()
    index.add([Pair(1, "reset my password", "a"), Pair(2, "reset my password please", "b"),
               Pair(3, "forgot password reset", "c")], np.stack([e[0], e[0] + 0.1 * e[1], e[0] + 0.2 * e[2]]))
    assert {h.example_id for h in index.query("reset password", 3, vector=e[0])} == {1, 2, 3}
    assert [h.example_id for h in index.query("reset password", 3, vector=e[0], allow={2, 9})] == [2]
    assert {h.example_id for h in index.query("reset password", 3, vector=e[0], exclude=[1])} == {2, 3}
    assert index.query("reset password", 3, vector=e[0], allow=set()) == []


def test_a_scope_asked_again_answers_for_the_scope_and_the_index_as_they_are_now():
    """The last scope is kept resolved between queries (the chat asks the same frozensets every turn): a new scope,
    a change to the index or a mutable collection changed in place is never answered from the kept one."""
    index = index_of("reset my password", "reset my password please", "forgot password reset")
    first, second = frozenset({1, 2}), frozenset({3})
    assert {h.example_id for h in index.query("reset password", 3, allow=first)} == {1, 2}
    assert {h.example_id for h in index.query("reset password", 3, allow=first)} == {1, 2}
    assert {h.example_id for h in index.query("reset password", 3, allow=second)} == {3}
    assert {h.example_id for h in index.query("reset password", 3, allow=first, exclude=frozenset({2}))} == {1}
    wider = frozenset({1, 2, 4})
    assert {h.example_id for h in index.query("reset password", 3, allow=wider)} == {1, 2}
    index.add([Pair(4, "password reset link", "answer 4")])  # an approval while the scope stays the same
    assert {h.example_id for h in index.query("reset password", 3, allow=wider)} == {1, 2, 4}
    index.remove([1])
    assert {h.example_id for h in index.query("reset password", 3, allow=wider)} == {2, 4}
    changing = {2}
    assert {h.example_id for h in index.query("reset password", 3, allow=changing)} == {2}
    changing.add(3)
    assert {h.example_id for h in index.query("reset password", 3, allow=changing)} == {2, 3}


def test_a_large_allowed_set_searches_the_graph_and_still_filters():
    # Over 4096 allowed ids the dense side reads the HNSW graph deeper and filters instead of comparing exactly.
    vectors = np.random.default_rng(7).standard_normal((6000, 8)).astype(np.float32)
    vectors[5999] = vectors[10]  # a twin of the target that is not allowed
    index = RetrievalIndex()
    index.add([Pair(n, f"filler {n}", "a") for n in range(6000)], vectors)
    allow = set(range(0, 5000))
    hits = index.query("nothing lexical", 10, vector=vectors[10], allow=allow)
    assert hits and hits[0].example_id == 10 and all(h.example_id in allow for h in hits)
    assert {h.example_id for h in index.query("nothing lexical", 3, vector=vectors[10])} >= {10, 5999}


def test_vectors_of_the_wrong_dimension_are_refused():
    index = RetrievalIndex()
    index.add([Pair(1, "a question", "an answer")], np.ones((1, 8)))
    with pytest.raises(RetrievalError, match="expected 2 vectors"):
        index.add([Pair(2, "b", "c"), Pair(3, "d", "e")], np.ones((1, 8)))
    with pytest.raises(RetrievalError, match="rebuild it after changing the embedding model"):
        index.add([Pair(2, "b", "c")], np.ones((1, 4)))
    with pytest.raises(RetrievalError, match="4 dimensions"):
        index.query("a question", 3, vector=np.ones(4))
    assert index.without_vectors() == [] and len(index) == 1


def test_within_budget_keeps_the_best_that_fit():
    hits = index_of("reset password", "reset password now", "password").query("reset password", 3)
    sizes = [len(h.question) + len(h.answer) for h in hits]
    assert within_budget(hits, sizes[0] + sizes[1]) == hits[:2]
    assert within_budget(hits, sizes[0] - 1) == []


# ---- the stored side (SQLite and PostgreSQL) ------------------------------------------------------------------

async def approved(store, *questions: str) -> list[int]:
    rows = [await store.add_example(Conversation.qa(q, f"answer to {q}"), source="teach", status="approved")
            for q in questions]
    return [r.id for r in rows]


async def test_vectors_round_trip_through_the_database(store):
    a, b = await approved(store, "first question", "second question")
    va = np.array([0.1, -2.5, 3.0e-8, 1e6], dtype=np.float32)
    await save_vectors(store, "nomic-embed-text", {a: va, b: [1.0, 2.0, 3.0, 4.0]})
    await save_vectors(store, "other-model", {a: np.ones(2)})
    loaded = await load_vectors(store, "nomic-embed-text")
    assert set(loaded) == {a, b} and loaded[a].dtype == np.float32
    np.testing.assert_array_equal(loaded[a], va)
    await save_vectors(store, "nomic-embed-text", {b: [4.0, 3.0, 2.0, 1.0]})  # replaced, not duplicated
    np.testing.assert_array_equal((await load_vectors(store, "nomic-embed-text", [b]))[b], [4, 3, 2, 1])
    assert list(await load_vectors(store, "other-model")) == [a]
    with pytest.raises(RetrievalError, match="non-finite"):
        await save_vectors(store, "nomic-embed-text", {a: [np.nan, 1.0]})
    assert await delete_vectors(store, keep_model="nomic-embed-text") == 1
    assert await load_vectors(store, "other-model") == {}


async def test_index_rebuilds_from_the_database_and_indexes_approvals(store):
    ids = await approved(store, "how do I reset my password", "what is a LoRA adapter", "which GPU do I need")
    pending = await store.add_example(Conversation.qa("a pending question about passwords", "x"), source="teach")
    e = np.eye(3, dtype=np.float32)
    await save_vectors(store, "embedder", {ids[0]: e[0], ids[1]: e[1]})
    index = await build_index(store, embed_model="embedder")
    assert index.ids == set(ids) and index.without_vectors() == [ids[2]]
    assert [h.example_id for h in index.query("password", 3)] == [ids[0]]
    assert [h.example_id for h in index.query("nothing lexical", 3, vector=e[1])] == [ids[1]]

    embedded: list[list[str]] = []

    async def embed(texts: list[str]) -> list[list[float]]:
        embedded.append(texts)
        return [[0.0, 0.0, 1.0] for _ in texts]

    new = await approved(store, "how do I change my password")
    assert await index_pairs(store, index, [new[0], ids[2]], embed=embed, embed_model="embedder") == sorted(
        [ids[2], new[0]])
    assert sorted(embedded[0]) == ["how do I change my password", "which GPU do I need"]
    assert set(await load_vectors(store, "embedder")) == {*ids, new[0]}
    assert {h.example_id for h in index.query("password", 3)} == {ids[0], new[0]}
    # Rejected after approval, or never approved: index_pairs takes it out instead of adding it.
    await store.set_example_status(ids[0], "rejected")
    assert await index_pairs(store, index, [ids[0], pending.id], embed=embed, embed_model="embedder") == []
    assert ids[0] not in index and pending.id not in index
    rebuilt = await build_index(store, embed_model="embedder")
    assert rebuilt.ids == {ids[1], ids[2], new[0]} and rebuilt.without_vectors() == []
    assert [p.question for p in await approved_pairs(store, [new[0]])] == ["how do I change my password"]


async def test_delta_is_what_the_active_model_was_not_trained_on(store, tmp_path):
    trained = await approved(store, "old one", "old two")
    assert await delta_ids(store) == set(trained)  # no active model: everything approved is new to it
    manifest = await store.create_snapshot(tmp_path / "snap")
    version = await store.create_model_version(name="physics", base_model="tiny", ollama_base="qwen2.5:0.5b",
                                               snapshot_sha256=manifest.sha256, snapshot_path=str(manifest.path))
    await store.update_model_version(version.id, status="registered", in_ollama=True)
    await store.promote(version.id)
    fresh = await approved(store, "new one", "new two")
    assert await delta_ids(store) == set(fresh)
    # The snapshot deleted: the examples approved after it was recorded.
    shutil.rmtree(tmp_path / "snap")
    from data.vectors import snapshot_hashes
    snapshot_hashes.cache_clear()
    assert await delta_ids(store) == set(fresh)
