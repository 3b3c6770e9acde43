"""Retrieval's persistent side: stored embeddings, the approved pairs, the delta set, and rebuilding the index.

Vectors live in the database (table ``example_vectors``, migration 0004) as little-endian float32 bytes, so the
same code runs on SQLite and PostgreSQL and a restarted bot rebuilds its index without calling the embedding
model again. The table is a SQLAlchemy Core table in data/models.py (the schema check sees it).
"""

from __future__ import annotations

import asyncio
import functools
import typing
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.engine import CursorResult

from data.models import ActiveModel, Example, ModelVersion, SnapshotRecord, example_vectors, utcnow
from data.retrieval import Pair, RetrievalConfig, RetrievalError, RetrievalIndex
from data.snapshot import HOLDOUT, SnapshotError, read_snapshot
from data.store import Store

# Embeds texts with the configured model (e.g. Ollama's /api/embed): one vector per text, in order.
Embed = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]
# Rows per statement when reading or writing vectors (PostgreSQL allows 32767 bind parameters).
_CHUNK = 5000


async def save_vectors(store: Store, model: str, vectors: Mapping[int, Sequence[float] | np.ndarray]) -> None:
    """Store (or replace) each example's vector for ``model`` in one transaction."""
    rows = []
    for example_id, vector in vectors.items():
        array = np.asarray(vector, dtype="<f4").reshape(-1)
        if not array.size or not np.isfinite(array).all():
            raise RetrievalError(f"example #{example_id}: the embedding model returned an empty or non-finite vector")
        rows.append({"example_id": example_id, "model": model, "dim": int(array.size), "vector": array.tobytes(),
                     "created_at": utcnow()})
    if not rows:
        return
    async with store.session() as s, s.begin():
        for chunk in _chunks(list(vectors)):
            await s.execute(delete(example_vectors).where(example_vectors.c.model == model,
                                                          example_vectors.c.example_id.in_(chunk)))
        for start in range(0, len(rows), _CHUNK):
            await s.execute(insert(example_vectors), rows[start:start + _CHUNK])


async def load_vectors(store: Store, model: str, ids: Collection[int] | None = None) -> dict[int, np.ndarray]:
    """The stored float32 vectors for ``model`` of the store's community's examples (of ``ids`` only, when
    given), by example id."""
    query = (select(example_vectors.c.example_id, example_vectors.c.vector)
             .join(Example, Example.id == example_vectors.c.example_id)
             .where(example_vectors.c.model == model, Example.community == store.community))
    out: dict[int, np.ndarray] = {}
    async with store.session() as s:
        for chunk in ([None] if ids is None else _chunks(sorted(ids))):
            q = query if chunk is None else query.where(example_vectors.c.example_id.in_(chunk))
            for example_id, blob in await s.execute(q):
                out[example_id] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    return out


async def delete_vectors(store: Store, *, keep_model: str | None = None) -> int:
    """Delete the vectors of every model except ``keep_model`` (all of them with None); returns rows deleted."""
    query = delete(example_vectors)
    if keep_model is not None:
        query = query.where(example_vectors.c.model != keep_model)
    async with store.session() as s, s.begin():
        # A DELETE's result is a CursorResult (it has rowcount); SQLAlchemy types execute() as a plain Result.
        gone = typing.cast("CursorResult[Any]", await s.execute(query))
        return gone.rowcount or 0


def _retrievable(tags: Any) -> bool:
    """Held-out eval questions (tag ``holdout``) are never retrieved: their answers are the gate's references."""
    return not tags or HOLDOUT not in tags


async def approved_pairs(store: Store, ids: Collection[int] | None = None) -> list[Pair]:
    """Approved examples as retrieval pairs (of ``ids`` only, when given), by id; held-out questions left out."""
    query = (select(Example.id, Example.messages, Example.tags)
             .where(Example.status == "approved", Example.community == store.community).order_by(Example.id))
    pairs: list[Pair] = []
    async with store.session() as s:
        for chunk in ([None] if ids is None else _chunks(sorted(ids))):
            q = query if chunk is None else query.where(Example.id.in_(chunk))
            pairs.extend(pair_of(example_id, messages) for example_id, messages, tags in await s.execute(q)
                         if _retrievable(tags))
    return pairs


async def approved_ids(store: Store) -> set[int]:
    """The ids of every retrievable approved example: what a running index is compared with to find approvals made
    elsewhere."""
    async with store.session() as s:
        rows = await s.execute(select(Example.id, Example.tags).where(Example.status == "approved",
                                                                      Example.community == store.community))
        return {example_id for example_id, tags in rows if _retrievable(tags)}


async def ids_of_hashes(store: Store, hashes: Collection[str]) -> set[int]:
    """The ids of the examples whose content hash is in ``hashes`` (a snapshot's ids are content hashes)."""
    out: set[int] = set()
    async with store.session() as s:
        wanted = sorted(hashes)
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            out.update(await s.scalars(select(Example.id).where(Example.content_hash.in_(chunk),
                                                                Example.community == store.community)))
    return out


def pair_of(example_id: int, messages: Sequence[Mapping[str, str]]) -> Pair:
    """The question is every user turn (a multi-turn pair is found by any of them); the answer is the last one."""
    question = "\n".join(m["content"] for m in messages if m["role"] == "user")
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return Pair(example_id, question, answers[-1] if answers else "")


async def delta_ids(store: Store, tag: str | None = None) -> set[int]:
    """Approved examples the active model was not trained on (scope ``delta``): every approved example when no
    version is active, else those whose content hash is not in the active version's snapshot. ``tag``: the same
    for that version instead of the active one (the gate's with-retrieval table asks it for a candidate).

    Without a readable snapshot (deleted, or modified since), it falls back to the examples approved after the
    snapshot was recorded."""
    async with store.session() as s:
        if tag is not None:
            version = await s.scalar(select(ModelVersion).where(ModelVersion.tag == tag,
                                                                ModelVersion.community == store.community))
            if version is None:
                raise LookupError(f"no model version is tagged {tag}")
        else:
            pointer = await s.scalar(select(ActiveModel).where(ActiveModel.community == store.community))
            version = (await s.get(ModelVersion, pointer.model_version_id)
                       if pointer and pointer.model_version_id else None)
        mine = (Example.status == "approved", Example.community == store.community)
        approved = select(Example.id, Example.content_hash).where(*mine)
        if version is None or version.snapshot_sha256 is None:
            return {i for i, _ in await s.execute(approved)}
        sha, path = version.snapshot_sha256, version.snapshot_path
        frozen_at = await s.scalar(select(func.min(SnapshotRecord.created_at))
                                   .where(SnapshotRecord.sha256 == sha, SnapshotRecord.community == store.community)
                                   ) or version.created_at
        rows = list(await s.execute(approved))
        late = {i for (i,) in await s.execute(select(Example.id).where(*mine, Example.approved_at > frozen_at))}
    try:
        trained = await asyncio.to_thread(snapshot_hashes, path, sha) if path else None
    except SnapshotError:
        trained = None
    if trained is None:
        return late
    return {i for i, digest in rows if digest not in trained}


@functools.lru_cache(maxsize=4)
def snapshot_hashes(path: str, sha256: str) -> frozenset[str]:
    """Content hashes of a snapshot's examples (train and eval), read and verified once per (path, sha256)."""
    snap = read_snapshot(Path(path))
    if snap.sha256 != sha256:
        raise SnapshotError(f"{path} holds snapshot {snap.sha256[:12]}…, not {sha256[:12]}…")
    return frozenset(snap.ids["train"]) | frozenset(snap.ids["eval"])


async def build_index(store: Store, *, embed_model: str | None = None, ids: Collection[int] | None = None,
                      config: RetrievalConfig | None = None) -> RetrievalIndex:
    """Rebuild the index from the database: the approved pairs (of ``ids`` only, when given) with their stored
    vectors for ``embed_model``. Pairs without a stored vector are indexed lexically only; ``index_pairs`` with
    an ``embed`` callable fills them in (``RetrievalIndex.without_vectors`` lists them)."""
    pairs = await approved_pairs(store, ids)
    vectors = await load_vectors(store, embed_model, [p.example_id for p in pairs]) if embed_model else {}
    index = RetrievalIndex(config)
    with_vector = [p for p in pairs if p.example_id in vectors]
    without = [p for p in pairs if p.example_id not in vectors]
    dims = {vectors[p.example_id].size for p in with_vector}
    if len(dims) > 1:
        raise RetrievalError(f"stored vectors for {embed_model} have different dimensions {sorted(dims)}: "
                             "delete them (delete_vectors) and embed again")
    # Blocking numpy and usearch work: off the event loop.
    if with_vector:
        matrix = np.stack([vectors[p.example_id] for p in with_vector])
        await asyncio.to_thread(index.add, with_vector, matrix)
    if without:
        await asyncio.to_thread(index.add, without)
    return index


async def index_pairs(store: Store, index: RetrievalIndex, ids: Iterable[int], *, embed: Embed | None = None,
                      embed_model: str | None = None) -> list[int]:
    """Index newly approved examples (call after approval): stored vectors are reused, missing ones embedded
    with ``embed`` and stored for ``embed_model``. Ids that are not approved any more are removed from the index.
    Returns the ids indexed."""
    wanted = set(ids)
    pairs = await approved_pairs(store, wanted)
    gone = wanted - {p.example_id for p in pairs}
    if gone:
        await asyncio.to_thread(index.remove, gone)
    if not pairs:
        return []
    if embed is None or embed_model is None:
        await asyncio.to_thread(index.add, pairs)
        return [p.example_id for p in pairs]
    vectors = await load_vectors(store, embed_model, [p.example_id for p in pairs])
    missing = [p for p in pairs if p.example_id not in vectors]
    if missing:
        fresh = await embed([p.question for p in missing])
        if len(fresh) != len(missing):
            raise RetrievalError(f"the embedding model returned {len(fresh)} vectors for {len(missing)} texts")
        new = {p.example_id: np.asarray(v, dtype=np.float32) for p, v in zip(missing, fresh, strict=True)}
        await save_vectors(store, embed_model, new)
        vectors.update(new)
    matrix = np.stack([vectors[p.example_id] for p in pairs])
    await asyncio.to_thread(index.add, pairs, matrix)
    return [p.example_id for p in pairs]


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    ids = list(ids)
    for start in range(0, len(ids), _CHUNK):
        yield ids[start:start + _CHUNK]
