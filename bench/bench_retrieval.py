"""Benchmark: the retrieval index at 100k approved pairs with 768-dimensional vectors.

Goals on a 2-core machine (excluding the embedding call): query p50 ≤ 10 ms and p99 ≤ 30 ms, index memory
≤ 200 MB, lexical indexing of 100k pairs ≤ 10 s. Prints each figure beside its goal.
index_mb = what the lexical index keeps (tracemalloc) + usearch's own figure for the int8 HNSW index; the pairs'
question and answer text, which the caller holds anyway, is not counted. hybrid_rss_mb is the process's
resident growth while building both, an upper bound that includes allocator slack. The *_cpu_s figures are
process CPU time (all threads): on a shared machine they show how much of the wall time was waiting for a core.
Questions are word sequences drawn from the shared datasets' text (Zipf-like, as real text is) or, without them,
from a generated vocabulary; vectors are clustered (as embeddings are), not uniform noise.
Usage: python bench/bench_retrieval.py [--n 100000] [--dim 768] [--queries 500] [--compare]
--compare also times the alternatives the vector library was chosen against (numpy brute force at float32,
float16 and int8; usearch exact search).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import tracemalloc
from pathlib import Path

import numpy as np

from data.retrieval import Pair, RetrievalIndex

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def words(seed: int) -> list[str]:
    """A word stream to sample questions from: the datasets' English words and two- or three-character pieces
    of their Chinese text when present, else generated words; either way Zipf-like, as real text is."""
    rng = random.Random(seed)
    stream: list[str] = []
    for name, field in (("identity.json", "instruction"), ("dpo_en_demo.json", "chosen"),
                        ("alpaca_zh_demo.json", "output")):
        path = DATASETS / name
        if not path.is_file():
            continue
        for record in json.loads(path.read_text(encoding="utf-8")):
            text = record[field]["value"] if isinstance(record[field], dict) else record[field]
            if text.isascii():
                stream += text.split()
            else:
                stream += [text[i:i + rng.randint(2, 3)] for i in range(0, len(text) - 3, 3)]
    if stream:
        return stream
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(20_000)]
    return [vocab[min(int(rng.paretovariate(1.1)) - 1, len(vocab) - 1)] for _ in range(300_000)]


def pairs_and_vectors(n: int, dim: int, seed: int = 0) -> tuple[list[Pair], np.ndarray]:
    rng = random.Random(seed)
    stream = words(seed)
    pairs = [Pair(i, " ".join(rng.choices(stream, k=rng.randint(5, 25))), f"answer {i}") for i in range(1, n + 1)]
    gen = np.random.default_rng(seed)
    centroids = gen.standard_normal((max(n // 100, 1), dim), dtype=np.float32)
    vectors = centroids[gen.integers(0, len(centroids), n)] + 0.6 * gen.standard_normal((n, dim), dtype=np.float32)
    return pairs, vectors


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def main(n: int, dim: int, queries: int, compare: bool) -> dict[str, object]:
    pairs, vectors = pairs_and_vectors(n, dim)
    rng = random.Random(1)
    stream = words(1)
    texts = [" ".join(rng.choices(stream, k=rng.randint(3, 12))) for _ in range(queries)]
    qvecs = vectors[[rng.randrange(n) for _ in range(queries)]] + 0.3 * np.random.default_rng(1).standard_normal(
        (queries, dim), dtype=np.float32)

    lexical = RetrievalIndex()
    t0, c0 = time.perf_counter(), time.process_time()
    lexical.add(pairs)
    lexical_s, lexical_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    lexical.add([Pair(n + 1, "one more approved pair about adapters", "x")])
    add_one_s = time.perf_counter() - t0
    lex_ms = [_timed(lexical.query, t, 3) for t in texts]
    del lexical
    # What the lexical index keeps (tracemalloc sees numpy's buffers too), beyond the pairs' own text objects.
    tracemalloc.start()
    lexical = RetrievalIndex()
    lexical.add(pairs)
    lexical_mb = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    del lexical

    base = rss_mb()
    hybrid = RetrievalIndex()
    t0, c0 = time.perf_counter(), time.process_time()
    hybrid.add(pairs, vectors)
    hybrid_s, hybrid_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    hybrid_mb = rss_mb() - base
    dense = hybrid._dense
    usearch_mb = dense.index.memory_usage / 2**20 if dense is not None else 0.0
    all_ms = [_timed(hybrid.query, t, 3, vector=v) for t, v in zip(texts, qvecs, strict=True)]
    delta = set(rng.sample(range(1, n + 1), min(2000, n)))
    delta_ms = [_timed(hybrid.query, t, 3, vector=v, allow=delta) for t, v in zip(texts, qvecs, strict=True)]
    # Recall of the int8 HNSW against exact float32 cosine on the same vectors.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    recall = []
    for v in qvecs[:100]:
        exact = set((np.argsort(-(unit @ (v / np.linalg.norm(v))))[:10] + 1).tolist())
        found = dense.search(v, None, 10, -1.0) if dense is not None else []
        recall.append(len(exact & {i for i, _ in found}) / 10)

    figures: dict[str, object] = {
        "pairs": n, "dim": dim,
        "lexical_index_s": round(lexical_s, 2), "lexical_index_cpu_s": round(lexical_cpu_s, 2),
        "lexical_add_one_at_n_s": round(add_one_s, 3),
        "lexical_mb": round(lexical_mb), "index_mb": round(lexical_mb + usearch_mb),
        "lexical_query_p50_ms": round(percentiles(lex_ms)[0], 2),
        "lexical_query_p99_ms": round(percentiles(lex_ms)[1], 2),
        "hybrid_index_s": round(hybrid_s, 1), "hybrid_index_cpu_s": round(hybrid_cpu_s, 1),
        "usearch_mb": round(usearch_mb), "hybrid_rss_mb": round(hybrid_mb),
        "hybrid_query_p50_ms": round(percentiles(all_ms)[0], 2),
        "hybrid_query_p99_ms": round(percentiles(all_ms)[1], 2),
        "delta2000_query_p50_ms": round(percentiles(delta_ms)[0], 2),
        "delta2000_query_p99_ms": round(percentiles(delta_ms)[1], 2),
        "hnsw_recall_at_10": round(float(np.mean(recall)), 3),
    }
    if compare:
        figures.update(compare_libraries(unit, qvecs[:20]))
    return figures


def _timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1000


def compare_libraries(unit: np.ndarray, qvecs: np.ndarray) -> dict[str, float]:
    """Brute force with numpy (float32; float16 and int8 widened in chunks, numpy has no BLAS for them) and
    usearch's exact search, p50 ms per query."""
    from usearch.index import search

    f16, i8 = unit.astype(np.float16), np.round(unit * 127 / np.abs(unit).max()).astype(np.int8)

    def chunked(matrix: np.ndarray, q: np.ndarray) -> np.ndarray:
        out = np.empty(len(matrix), np.float32)
        for start in range(0, len(matrix), 8192):
            out[start:start + 8192] = matrix[start:start + 8192].astype(np.float32) @ q
        return np.argpartition(-out, 10)[:10]

    runs = {
        "numpy_f32": lambda q: np.argpartition(-(unit @ q), 10)[:10],
        "numpy_f16": lambda q: chunked(f16, q),
        "numpy_i8": lambda q: chunked(i8, q),
        "usearch_exact_f32": lambda q: search(unit, q, 10, exact=True),
    }
    return {f"compare_{name}_p50_ms": round(percentiles([_timed(fn, q) for q in qvecs])[0], 1)
            for name, fn in runs.items()}


GOALS = {"lexical_index_s": ("≤", 10), "hybrid_query_p50_ms": ("≤", 10), "hybrid_query_p99_ms": ("≤", 30),
         "delta2000_query_p50_ms": ("≤", 10), "delta2000_query_p99_ms": ("≤", 30), "index_mb": ("≤", 200)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    for key, value in main(args.n, args.dim, args.queries, args.compare).items():
        goal = GOALS.get(key)
        print(f"{key:28} {value!s:>10}" + (f"   goal {goal[0]} {goal[1]}" if goal else ""))
