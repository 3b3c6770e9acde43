"""Retrieval over approved pairs: lexical BM25 (bm25s) always, dense vectors when given, fused by reciprocal rank.

A plain in-process library: no database, no Discord, no torch. ``data.vectors`` stores the vectors and rebuilds
an index from the database; the chat path asks ``RetrievalIndex.query`` for the pairs to put in the prompt.

Scores a caller sees (``Hit``):
- ``lexical``: the BM25 score divided by the query's own IDF mass (query words unknown to the index count at the
  highest IDF), so about 1.0 when a pair's question holds every query word once, 0 when it holds none. Raw BM25
  grows with the corpus and the query length; this fraction does not, so one cutoff serves every deployment.
- ``dense``: cosine similarity of the query vector and the pair's vector.
- ``score``: reciprocal rank fusion, sum of 1/(rrf_k + rank) over the lists in which the pair passed its cutoff.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from data.errors import LoraloopError

# Han, kana, Hangul: scripts written without spaces, so a word splitter sees a whole sentence as one token.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_CJK_RUN = re.compile(rf"[{_CJK}]")
_STOPWORDS = frozenset(STOPWORDS_EN)
# Up to this many allowed ids (the usual delta set) a dense query compares them all exactly, from a cached float32
# copy of their rows (12 MB at 4096 × 768); above, it searches the HNSW graph deeper and filters.
_EXACT_DENSE_LIMIT = 4096


class RetrievalError(LoraloopError, ValueError):
    """A request the index cannot serve (e.g. a vector of the wrong dimension); the message says why."""


def tokenize(text: str) -> list[str]:
    """Index terms: lower-cased words (English stopwords and single letters dropped, plurals folded, accents
    removed) and CJK character bigrams.

    CJK text has no spaces; overlapping bigrams are the usual stand-in for a word segmenter and need no model.
    """
    tokens: list[str] = []
    for run in _TOKEN.findall(_fold(text)):
        if _CJK_RUN.match(run):
            tokens.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
        elif run not in _STOPWORDS and not (len(run) == 1 and run.isalpha()):  # the "s" of "what's"
            tokens.append(_stem(run))
    return tokens


def _fold(text: str) -> str:
    """Case- and accent-folded NFKC ("Schrödinger" finds "schrodinger"); NFC afterwards recomposes Hangul."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def _stem(word: str) -> str:
    """Lucene's EnglishMinimalStemmer: plural endings only (so "models" finds "model"), never a meaning change."""
    if len(word) < 3 or word[-1] != "s" or word[-2] in "us":
        return word
    if word[-2] == "e":
        if len(word) > 3 and word[-3] == "i" and word[-4] not in "ae":
            return word[:-3] + "y"
        if word[-3] in "iaoe":
            return word
    return word[:-1]


@dataclass(frozen=True, slots=True)
class Pair:
    """What the index holds for one approved example: its id, the user side and the answer."""

    example_id: int
    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved pair and why: JSON-able with ``to_dict`` (what ``loraloop retrieval query --json`` shows)."""

    example_id: int
    question: str
    answer: str
    score: float  # reciprocal rank fusion
    lexical: float | None  # normalised BM25 (see the module docstring); None: not in the lexical list
    bm25: float | None  # the raw BM25 score behind ``lexical`` (bm25s's Lucene variant)
    dense: float | None  # cosine; None: no vectors, or not in the dense list
    lexical_rank: int | None  # 1-based rank among pairs that passed the lexical cutoff
    dense_rank: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RetrievalConfig:
    """Tuning, with the defaults the fixed evaluation set (tests/data/retrieval_set.py) was measured with."""

    min_lexical: float = 0.3  # a pair needs this share of the query's IDF mass to count as a lexical match
    min_dense: float = 0.5  # cosine below this is not a dense match
    rrf_k: int = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)
    candidates: int = 50  # how deep each list is read before fusion
    k1: float = 1.5
    b: float = 0.75
    # HNSW (usearch) graph parameters; vectors are kept as int8, the quantisation usearch offers for cosine.
    connectivity: int = 16
    expansion_add: int = 64
    expansion_search: int = 128  # search breadth: bench/bench_retrieval.py prints its recall and latency


def within_budget(hits: Sequence[Hit], max_chars: int) -> list[Hit]:
    """The best hits, in order, whose questions and answers fit in ``max_chars`` together; stops at the first
    that does not fit, so a long low-ranked pair never pushes out a short better one."""
    kept: list[Hit] = []
    used = 0
    for hit in hits:
        used += len(hit.question) + len(hit.answer)
        if used > max_chars:
            break
        kept.append(hit)
    return kept


@dataclass(frozen=True, slots=True)
class _Docs:
    """Every indexed question's token ids in three flat arrays: 100k small arrays (or lists) would cost more
    memory than the score matrix, and concatenating them would dominate each rebuild."""

    ids: np.ndarray  # document number → example id (int64)
    lengths: np.ndarray  # document number → how many tokens (int64)
    tokens: np.ndarray  # all documents' token ids, back to back (int32)

    @classmethod
    def empty(cls) -> _Docs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32))

    def without(self, ids: np.ndarray) -> _Docs:
        keep = ~np.isin(self.ids, ids)
        if keep.all():
            return self
        return _Docs(self.ids[keep], self.lengths[keep], self.tokens[np.repeat(keep, self.lengths)])

    def plus(self, ids: np.ndarray, token_lists: list[list[int]]) -> _Docs:
        lengths = np.fromiter((len(t) for t in token_lists), np.int64, count=len(token_lists))
        flat = np.fromiter((t for ts in token_lists for t in ts), np.int32, count=int(lengths.sum()))
        return _Docs(np.concatenate([self.ids, ids]), np.concatenate([self.lengths, lengths]),
                     np.concatenate([self.tokens, flat]))


@dataclass(frozen=True, slots=True)
class _Lexical:
    """One immutable generation of the lexical index: queries read it while a writer builds the next."""

    bm25: bm25s.BM25 | None
    ids: np.ndarray  # document number → example id (int64)
    vocab: dict[str, int]  # shared with later generations; only ever grows
    idf: np.ndarray  # token id → idf, the same (Lucene) formula bm25s scores with
    max_idf: float  # what a word unknown to the index weighs in the normalising mass
    k1: float

    @classmethod
    def build(cls, docs: _Docs, vocab: dict[str, int], k1: float, b: float) -> _Lexical:
        """bm25s's own index build is a Python loop (about 10 s for 100k pairs here, and every approval would
        pay it again); this computes the same eager score matrix with numpy and hands it to bm25s, which scores
        the queries. tests/data/test_retrieval.py checks the matrix equals the one bm25s builds itself."""
        ids, lengths = docs.ids, docs.lengths
        n, size = len(ids), len(vocab)
        idf_none = _idf(0, n)
        if not n or not len(docs.tokens):
            return cls(None, ids, vocab, np.full(size, idf_none, np.float32), idf_none, k1)
        tokens = docs.tokens.astype(np.int64)
        numbers = np.repeat(np.arange(n, dtype=np.int64), lengths)
        # Token-major keys: one sort gives the CSC order bm25s reads (a column per token, documents ascending).
        cells, tf = np.unique(tokens * n + numbers, return_counts=True)
        tok, doc = cells // n, cells % n
        df = np.bincount(tok, minlength=size)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * lengths[doc] / lengths.mean())
        scores = idf[tok] * (tf / (norm + tf))
        bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        bm25.scores = {"data": scores.astype(np.float32), "indices": doc.astype(np.int32),
                       "indptr": np.concatenate([[0], np.cumsum(df)]).astype(np.int64), "num_docs": n}
        bm25.vocab_dict = vocab
        bm25.nonoccurrence_array = None
        return cls(bm25, ids, vocab, idf.astype(np.float32), idf_none, k1)

    def search(self, tokens: list[str], allowed: np.ndarray | None, depth: int, cutoff: float
               ) -> list[tuple[int, float, float]]:
        """(example id, normalised score, raw BM25) best first, at most ``depth``, all at or above ``cutoff``."""
        if self.bm25 is None or not tokens:
            return []
        unique = list(dict.fromkeys(tokens))
        known = [self.vocab[t] for t in unique if t in self.vocab and self.vocab[t] < len(self.idf)]
        mass = float(self.idf[known].sum()) + self.max_idf * (len(unique) - len(known))
        if not known or mass <= 0:
            return []
        raw = self.bm25.get_scores_from_ids(known)
        # bm25s (like Lucene) leaves out BM25's (k1 + 1) factor: put it back so a pair of average length that
        # holds each query word once scores its full idf, and the fraction is near 1.
        norm = raw * (1.0 + self.k1) / mass
        if allowed is not None:
            norm = np.where(allowed, norm, 0.0)
        return _top(norm, raw, self.ids, depth, cutoff)


def _idf(df: int, n: int) -> float:
    return math.log1p((n - df + 0.5) / (df + 0.5))


def _top(scores: np.ndarray, raw: np.ndarray, ids: np.ndarray, depth: int, cutoff: float
         ) -> list[tuple[int, float, float]]:
    passing = np.flatnonzero(scores >= max(cutoff, 1e-9))
    if len(passing) > depth:
        passing = passing[np.argpartition(-scores[passing], depth - 1)[:depth]]
    order = passing[np.lexsort((ids[passing], -scores[passing]))]  # ties: the older pair first, stably
    return [(int(ids[i]), float(scores[i]), float(raw[i])) for i in order]


class _Dense:
    """Vectors in a usearch HNSW index (int8), keyed by example id; exact comparison for small allowed sets."""

    def __init__(self, dim: int, config: RetrievalConfig) -> None:
        from usearch.index import Index

        self.dim = dim
        # The allowed set's vectors, widened and normalised: the chat path asks with the same delta set every
        # turn, and reading rows back out of usearch costs far more than comparing them.
        self._exact: tuple[bytes, np.ndarray, np.ndarray] | None = None
        self.index = Index(ndim=dim, metric="cos", dtype="i8", connectivity=config.connectivity,
                           expansion_add=config.expansion_add, expansion_search=config.expansion_search)

    def __len__(self) -> int:
        return len(self.index)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        present = ids[np.asarray(self.index.contains(ids), dtype=bool)]
        if len(present):
            self.index.remove(present)
        self.index.add(ids, _unit(vectors))
        self._exact = None

    def remove(self, ids: Sequence[int]) -> None:
        present = [i for i in ids if i in self.index]
        if present:
            self.index.remove(present)
            self._exact = None

    def search(self, vector: np.ndarray, allowed_ids: np.ndarray | None, depth: int, cutoff: float
               ) -> list[tuple[int, float]]:
        """(example id, cosine) best first, at most ``depth``, all at or above ``cutoff``."""
        if len(self.index) == 0:
            return []
        query = _unit(vector.reshape(1, -1))[0]
        if allowed_ids is not None and len(allowed_ids) <= _EXACT_DENSE_LIMIT:
            keys, stored = self._allowed_rows(allowed_ids)
            if not len(keys):
                return []
            # einsum's own loop, not BLAS: a multi-threaded BLAS call this small waits on a busy second core
            # (p50 10-20 ms instead of 1 ms on the loaded 2-core bench machine).
            cos = np.einsum("ij,j->i", stored, query)
            return [(i, s) for i, s, _ in _top(cos, cos, keys, depth, cutoff)]
        allow = None if allowed_ids is None else set(allowed_ids.tolist())
        # Deep enough that ``depth`` allowed ids are likely among the neighbours read.
        count = depth if allow is None else int(depth * 2 * len(self.index) / max(len(allow), 1))
        while True:
            found = self.index.search(query, min(count, len(self.index)))
            hits = [(int(key), 1.0 - float(dist)) for key, dist in zip(found.keys, found.distances, strict=True)
                    if allow is None or int(key) in allow]
            hits = [(key, cos) for key, cos in hits if cos >= cutoff]
            if len(hits) >= depth or count >= len(self.index) or (found.distances.size and
                                                                  1.0 - float(found.distances[-1]) < cutoff):
                return hits[:depth]
            count *= 4  # the allowed set is sparse among the neighbours: read deeper


    def _allowed_rows(self, allowed_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The allowed ids that have vectors, and those vectors as unit float32 rows (cached per allowed set)."""
        key = allowed_ids.tobytes()
        if self._exact is None or self._exact[0] != key:
            keys = allowed_ids.astype(np.uint64)
            keys = keys[np.asarray(self.index.contains(keys), dtype=bool)]
            # The int8 codes themselves (usearch's widening to float32 is ten times slower); _unit rescales.
            codes = self.index.get(keys, dtype="i8") if len(keys) else np.zeros((0, self.dim), np.int8)
            rows = _unit(np.asarray(codes, dtype=np.float32).reshape(len(keys), self.dim))
            self._exact = (key, keys.astype(np.int64), rows)
        return self._exact[1], self._exact[2]


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    unit: np.ndarray = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit


class RetrievalIndex:
    """Approved pairs searchable by text (always) and by vector (when pairs were added with vectors).

    Thread-safe: add/remove may run in a worker thread while the event loop queries. ``add`` rebuilds the
    lexical index from cached tokens (bm25s indexes are static); queries keep using the previous one until the
    new one is swapped in, so run ``add`` off the event loop for large indexes.
    """

    def __init__(self, config: RetrievalConfig | None = None) -> None:
        self.config = config or RetrievalConfig()
        self._pairs: dict[int, Pair] = {}
        self._vocab: dict[str, int] = {}
        self._docs = _Docs.empty()
        self._lexical = self._build(self._docs)
        self._dense: _Dense | None = None
        self._write = threading.Lock()  # one writer at a time; readers never wait for a lexical rebuild
        self._dense_lock = threading.Lock()  # usearch is not safe against a concurrent remove
        # The last scope asked for, resolved: a chat's scope changes with promotions and withdrawals, not per turn.
        self._scope: tuple[object, object, _Lexical, np.ndarray | None, np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, example_id: object) -> bool:
        return example_id in self._pairs

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(self._pairs)

    @property
    def dim(self) -> int | None:
        """The vectors' dimension, or None while no vector has been added."""
        return self._dense.dim if self._dense is not None else None

    def has_vector(self, example_id: int) -> bool:
        return self._dense is not None and example_id in self._dense.index

    def without_vectors(self) -> list[int]:
        """Indexed ids that have no vector (searchable lexically only), ascending."""
        return sorted(i for i in self._pairs if not self.has_vector(i))

    def _build(self, docs: _Docs) -> _Lexical:
        return _Lexical.build(docs, self._vocab, self.config.k1, self.config.b)

    def add(self, pairs: Sequence[Pair], vectors: np.ndarray | Sequence[Sequence[float]] | None = None) -> None:
        """Index ``pairs``, replacing any with the same id; ``vectors`` (a row per pair) make them dense-searchable."""
        if vectors is not None:
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) != len(pairs):
                raise RetrievalError(f"expected {len(pairs)} vectors (one per pair), got an array of shape "
                                     f"{vectors.shape}")
        pairs = list({p.example_id: p for p in pairs}.values()) if vectors is None else pairs
        words = [tokenize(p.question) for p in pairs]
        ids = np.fromiter((p.example_id for p in pairs), np.int64, count=len(pairs))
        if len(np.unique(ids)) != len(ids):
            raise RetrievalError("the same example id is given twice with vectors: give each pair once")
        with self._write:
            if vectors is not None:
                if self._dense is None:
                    self._dense = _Dense(vectors.shape[1], self.config)
                elif vectors.shape[1] != self._dense.dim:
                    raise RetrievalError(f"vectors have {vectors.shape[1]} dimensions but the index holds "
                                         f"{self._dense.dim}: rebuild it after changing the embedding model")
            vocab = self._vocab  # only this writer adds to it; readers tolerate ids newer than their generation
            docs = self._docs.without(ids).plus(ids, [[vocab.setdefault(w, len(vocab)) for w in ws] for ws in words])
            lexical = self._build(docs)
            with self._dense_lock:
                if vectors is not None and self._dense is not None:
                    self._dense.add(ids.astype(np.uint64), vectors)
                elif self._dense is not None:  # re-added without a vector: an old vector would describe old text
                    self._dense.remove([p.example_id for p in pairs])
            self._pairs = {**self._pairs, **{p.example_id: p for p in pairs}}
            self._docs = docs
            self._lexical = lexical

    def remove(self, ids: Iterable[int]) -> None:
        """Drop these example ids (unknown ids are ignored)."""
        with self._write:
            gone = {i for i in ids if i in self._pairs}
            if not gone:
                return
            docs = self._docs.without(np.fromiter(gone, np.int64, count=len(gone)))
            lexical = self._build(docs)
            with self._dense_lock:
                if self._dense is not None:
                    self._dense.remove(sorted(gone))
            self._pairs = {i: p for i, p in self._pairs.items() if i not in gone}
            self._docs = docs
            self._lexical = lexical

    def query(self, text: str, k: int = 3, *, vector: np.ndarray | Sequence[float] | None = None,
              allow: Collection[int] | None = None, exclude: Collection[int] = ()) -> list[Hit]:
        """The ``k`` best pairs for ``text`` (and ``vector``, when given and the index has vectors), fused.

        ``allow`` restricts the search to those ids (e.g. the delta set: approved pairs the active model was not
        trained on); ``exclude`` removes ids. An empty list means nothing passed the cutoffs.
        """
        if k <= 0:
            return []
        lexical, dense, pairs = self._lexical, self._dense, self._pairs
        allowed_ids, mask = self._resolve(lexical, allow, exclude)
        depth = max(k, self.config.candidates)
        lexical_hits = lexical.search(tokenize(text), mask, depth, self.config.min_lexical)
        dense_hits: list[tuple[int, float]] = []
        if vector is not None and dense is not None:
            vector = np.asarray(vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != dense.dim:
                raise RetrievalError(f"the query vector has {vector.shape[0]} dimensions, the index {dense.dim}")
            with self._dense_lock:
                dense_hits = dense.search(vector, allowed_ids, depth, self.config.min_dense)
            dense_hits = [(i, s) for i, s in dense_hits if i in pairs]
        return _fuse(lexical_hits, dense_hits, pairs, k, self.config.rrf_k)

    def _resolve(self, lexical: _Lexical, allow: Collection[int] | None,
                 exclude: Collection[int]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The allowed ids and the lexical index's mask for a scope; the last immutable scope is kept (the same
        frozensets against the same index give the same answer)."""
        cached = self._scope
        if cached is not None and cached[0] is allow and cached[1] is exclude and cached[2] is lexical:
            return cached[3], cached[4]
        allowed_ids = _allowed(allow, exclude, lexical.ids)
        mask = None if allowed_ids is None else np.isin(lexical.ids, allowed_ids, assume_unique=True)
        if isinstance(allow, frozenset | None) and isinstance(exclude, frozenset | tuple):
            self._scope = (allow, exclude, lexical, allowed_ids, mask)
        return allowed_ids, mask


def _allowed(allow: Collection[int] | None, exclude: Collection[int], ids: np.ndarray) -> np.ndarray | None:
    if allow is None and not exclude:
        return None
    chosen = ids if allow is None else np.fromiter(set(allow), dtype=np.int64)
    if exclude:
        chosen = np.setdiff1d(chosen, np.fromiter(set(exclude), dtype=np.int64), assume_unique=True)
    return np.sort(chosen)


def _fuse(lexical: list[tuple[int, float, float]], dense: list[tuple[int, float]], pairs: dict[int, Pair],
          k: int, rrf_k: int) -> list[Hit]:
    fused: dict[int, float] = {}
    lex = {i: (rank, score) for rank, (i, score, _) in enumerate(lexical, start=1) if i in pairs}
    raw = {i: bm25 for i, _, bm25 in lexical}
    den = {i: (rank, score) for rank, (i, score) in enumerate(dense, start=1)}
    for ranks in (lex, den):
        for i, (rank, _) in ranks.items():
            fused[i] = fused.get(i, 0.0) + 1.0 / (rrf_k + rank)
    # Ties (a pair first in one list, another first in the other) go to the lexical list's choice, then id.
    order = sorted(fused, key=lambda i: (-fused[i], lex.get(i, (math.inf,))[0], i))[:k]
    hits = []
    for i in order:
        pair = pairs[i]
        lrank, lscore = lex.get(i, (None, None))
        drank, dscore = den.get(i, (None, None))
        hits.append(Hit(example_id=i, question=pair.question, answer=pair.answer, score=round(fused[i], 6),
                        lexical=None if lscore is None else round(lscore, 4),
                        bm25=None if lscore is None else round(raw[i], 4), dense=None if dscore is None
                        else round(dscore, 4), lexical_rank=lrank, dense_rank=drank))
    return hits
