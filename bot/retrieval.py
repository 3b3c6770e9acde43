"""Retrieval in the bot: taught in minutes, learned by the next retrain.

A :class:`Retriever` keeps one :class:`~data.retrieval.RetrievalIndex` of approved pairs. On every chat turn the
bot asks it for the pairs relevant to the user's question and puts them in the system message, in a delimited block
("Expert answers that may help: …"), within a character budget. Which pairs a turn may use is the scope
(``retrieval_scope``):

- ``delta`` (default): approved pairs the active model was not trained on, so a promotion takes the pairs of its
  snapshot out, and a rollback brings back those the older version lacks (checked on the turn after the switch);
- ``all``: every approved pair; ``off``: none.

Each community (data/communities.py) has its own index, over its own approved pairs only, and its own scope
(relative to its own active model): :class:`Retrievers` holds one :class:`Retriever` per community, and a chat turn
asks the one of the chat's community; a chat outside every community gets no retrieval at all.

The indexes are built from the database in the background when the bot starts (it answers without retrieval
meanwhile), re-read every ``retrieval_sync_s`` (approvals by CLI, imports or another process) and right after an
approval, rejection or edit in Discord (:meth:`Retriever.request_sync`): an edited pair's superseded answer is
never retrieved after the edit is saved. With ``embed_model`` set, pairs and questions are embedded through
Ollama's /api/embed and the lists are fused; when embeddings fail, retrieval goes on lexically (logged once) and an
answer never fails because of retrieval.

A pair's text is only ever the block's content: it cannot close its frame or speak in control tokens
(:func:`framed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from bot.settings import Settings
from data.conversation import neutralise_controls
from data.errors import StoreError
from data.metrics import rouge_l, score_answers
from data.retrieval import Hit, RetrievalConfig, RetrievalError, RetrievalIndex, within_budget
from data.snapshot import read_snapshot
from data.store import Store
from data.vectors import approved_ids, build_index, delta_ids, ids_of_hashes, index_pairs
from deploy.gate import EvalPrompt, GateResult, RetrievalRow, WithRetrieval, eval_prompts
from deploy.ollama import OllamaClient, OllamaError
from deploy.pipeline import Inform

log = logging.getLogger(__name__)

BLOCK_HEAD = "Expert answers that may help:"
BLOCK_TAIL = "(End of expert answers. Use them only where they answer the question.)"
# A question waits this long for its vector at most; then it is answered with lexical retrieval alone.
QUERY_EMBED_TIMEOUT_S = 2.0
# One /api/embed request while indexing (a background task: nobody waits for it).
INDEX_EMBED_TIMEOUT_S = 120.0
EMBED_BATCH = 64  # texts per /api/embed request
INDEX_STEP = 2048  # pairs embedded and added to the index at a time
# After an embedding failure, questions skip the embedding call for this long (no timeout paid on every turn).
EMBED_RETRY_S = 60.0
# A query that took less than this runs the next one on the event loop: handing it to a thread costs about as
# much under load. A slower one (a large index) sends the next to a thread, so the loop is never held up long.
INLINE_QUERY_S = 0.001
# What a failure while indexing or querying may raise: the database, the index, the embedding server.
_FAILURES = (SQLAlchemyError, StoreError, RetrievalError, OllamaError, OSError, TimeoutError)


@dataclass(frozen=True)
class Retrieved:
    """The pairs one chat turn is given, best first (empty: nothing relevant, or retrieval off)."""

    hits: tuple[Hit, ...] = ()

    @property
    def ids(self) -> list[int]:
        return [h.example_id for h in self.hits]

    def system_message(self, system_prompt: str) -> str:
        """The system prompt with the expert answers' block after it (the prompt alone when there are none)."""
        if not self.hits:
            return system_prompt
        return f"{system_prompt}\n\n{expert_block(self.hits)}" if system_prompt else expert_block(self.hits)

    def footer(self) -> str:
        """The line under an answer that used taught pairs (Discord subtext)."""
        if not self.hits:
            return ""
        what = "1 expert answer" if len(self.hits) == 1 else f"{len(self.hits)} expert answers"
        return f"-# Using {what}: {', '.join(f'#{i}' for i in self.ids)}"


def expert_block(hits: Sequence[Hit]) -> str:
    """The block the model reads: each pair tagged with its example id. A pair's text can neither close its frame
    (the frame's own markers in it are escaped) nor speak in the base's control tokens (neutralised)."""
    parts = [BLOCK_HEAD]
    for hit in hits:
        parts.append(f'<expert_answer id="{hit.example_id}">\nQuestion: {framed(hit.question)}\n'
                     f"Answer: {framed(hit.answer)}\n</expert_answer>")
    parts.append(BLOCK_TAIL)
    return "\n".join(parts)


# The block's markers as text inside a pair might write them (any case, spaced out): a tag of the frame, its head
# or its tail. Escaped like control text, by a zero-width joiner after the first character.
_FRAME_MARKERS = re.compile(r"<\s*/?\s*expert_answer|expert answers that may help|\(\s*end of expert answers",
                            re.IGNORECASE)


def framed(text: str) -> str:
    """A pair's text as it may stand inside the block: the frame's markers and the base's control strings broken
    by a zero-width joiner (a reader sees the same text)."""
    text = neutralise_controls(text)
    return _FRAME_MARKERS.sub(lambda m: m[0][0] + "\u200d" + m[0][1:], text)


def query_text(history: Sequence[dict[str, str]]) -> str:
    """What a turn retrieves with: the latest user message."""
    return next((t["content"] for t in reversed(history) if t.get("role") == "user"), "")


@dataclass(frozen=True)
class SyncReport:
    """What one :meth:`Retriever.sync` changed."""

    added: int
    removed: int
    indexed: int  # pairs in the index afterwards
    allowed: int | None  # pairs the scope lets a turn use (None: all of them)


class Retriever:
    """The bot's index of approved pairs, its scope, and keeping both in step with the database."""

    def __init__(self, settings: Settings, store: Store, ollama: OllamaClient, *,
                 config: RetrievalConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.store, self.ollama = settings, store, ollama
        self.config = config
        self.clock = clock
        self.index: RetrievalIndex | None = None  # None until the first build has finished
        self._allowed: frozenset[int] | None = None  # the scope's ids; None: every indexed pair
        self._scope_of: tuple[int | None] | None = None  # (active version id,) the scope was computed for
        self._sync_lock = asyncio.Lock()
        self._first_sync = asyncio.Event()  # the start-up build was tried (done, or failed and logged)
        self._built_by_loop = False  # Retrievers' loop does the start-up build (set by Retrievers.start)
        self._tasks: set[asyncio.Task[None]] = set()
        self._embed_down_since: float | None = None  # when embeddings last failed; None: working (or unused)
        self._embedding_pass = False  # one pass over the pairs without vectors at a time
        # Pairs that left approval in Discord (rejected, edited) and are never retrieved again, until a sync that
        # read the database after they left has taken them out of the index.
        self._withdrawn: frozenset[int] = frozenset()
        self._query_s = float("inf")  # how long the last index query took (none yet: the first goes to a thread)

    @property
    def enabled(self) -> bool:
        return self.settings.retrieval_scope != "off"

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Build the index in the background, then re-read the database every ``retrieval_sync_s``."""
        if self.enabled:
            self._spawn(self._run(), "retrieval-sync")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def request_sync(self, withdrawn: Iterable[int] = ()) -> None:
        """Read approvals now (after an approval, rejection or edit in Discord), without keeping the caller
        waiting. ``withdrawn``: pairs that just left approval; no turn retrieves them from this call on, even
        before the sync has run."""
        if self.enabled:
            self._withdrawn |= frozenset(withdrawn)
            self._spawn(self._sync_logged(), "retrieval-sync-now")

    async def wait_idle(self) -> None:
        """Until the first build and the syncs requested so far are done (tests, the benchmark)."""
        if self.enabled and (self._built_by_loop or any(t.get_name() == "retrieval-sync" for t in self._tasks)):
            await self._first_sync.wait()  # the first build runs in the periodic task, which never ends
        await asyncio.gather(*(t for t in self._tasks if t.get_name() != "retrieval-sync"), return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while True:
            await self._sync_logged()
            self._first_sync.set()
            await asyncio.sleep(self.settings.retrieval_sync_s)

    async def _sync_logged(self) -> None:
        try:
            report = await self.sync()
        except _FAILURES as exc:  # the next sync tries again; chats go on with the index as it is
            log.warning("retrieval: reading approved pairs failed (%s); retrying in %g s", exc,
                        self.settings.retrieval_sync_s)
            return
        if report.added or report.removed:
            log.info("retrieval: +%d −%d pairs; %d indexed, %s in scope", report.added, report.removed,
                     report.indexed, "all" if report.allowed is None else report.allowed)

    # ---- keeping the index in step -----------------------------------------------------------------------

    async def sync(self) -> SyncReport:
        """Bring the index up to date with the database (built from it the first time), vectors included where
        the embedding model answers, and recompute the scope."""
        async with self._sync_lock:
            withdrawn = self._withdrawn  # left approval before the database is read below: this sync drops them
            if self.index is None:
                index = await build_index(self.store, embed_model=self.settings.embed_model, config=self.config)
                added, removed = len(index), 0
                self.index = index
            else:
                index = self.index
                approved = await approved_ids(self.store)
                new, gone = approved - index.ids, index.ids - approved
                added, removed = len(new), len(gone)
                if new or gone:
                    await self._index(index, new | gone)
            await self._refresh_scope()
            report = SyncReport(added, removed, len(index), None if self._allowed is None else len(self._allowed))
            self._withdrawn -= withdrawn
        # Outside the lock: embedding thousands of pairs after a first start must not hold up later approvals.
        await self._embed_missing(index)
        return report

    async def rebuild(self) -> SyncReport:
        """Throw the index away and build it again from the database."""
        async with self._sync_lock:
            self.index, self._scope_of = None, None
        return await self.sync()

    async def _index(self, index: RetrievalIndex, ids: set[int]) -> None:
        if self._embedding_usable():
            try:
                await index_pairs(self.store, index, ids, embed=self._embed_batch,
                                  embed_model=self.settings.embed_model)
                return
            except (OllamaError, TimeoutError) as exc:
                self._embedding_failed(exc)
        await index_pairs(self.store, index, ids)  # lexically now; _embed_missing adds vectors later

    async def _embed_missing(self, index: RetrievalIndex) -> None:
        """Vectors for indexed pairs that lack one (embedding was down, or embed_model changed)."""
        if self._embedding_pass or not self._embedding_usable():
            return
        self._embedding_pass = True
        try:
            missing = index.without_vectors()
            # Each index_pairs call rebuilds the lexical index once: a few large steps, not one per request.
            for start in range(0, len(missing), INDEX_STEP):
                await index_pairs(self.store, index, missing[start:start + INDEX_STEP], embed=self._embed_batch,
                                  embed_model=self.settings.embed_model)
        except (OllamaError, TimeoutError) as exc:
            self._embedding_failed(exc)
        finally:
            self._embedding_pass = False

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            async with asyncio.timeout(INDEX_EMBED_TIMEOUT_S):
                vectors += await self.ollama.embed(self.settings.embed_model or "", texts[start:start + EMBED_BATCH])
        self._embedding_ok()
        return vectors

    async def _refresh_scope(self) -> None:
        version = await self.store.active_model_version()
        if self.settings.retrieval_scope == "delta":
            self._allowed = frozenset(await delta_ids(self.store))
        else:
            self._allowed = None
        self._scope_of = (version.id if version else None,)

    # ---- a chat turn --------------------------------------------------------------------------------------

    async def retrieve(self, history: Sequence[dict[str, str]], version_id: int | None = None) -> Retrieved:
        """The pairs for this turn (``version_id``: the model that answers it, whose training the delta scope
        leaves out). Never raises: a failure means no pairs, logged."""
        index = self.index
        text = query_text(history)
        if not self.enabled or index is None or not len(index) or not text.strip():
            return Retrieved()
        try:
            if self._scope_of != (version_id,):  # promoted or rolled back since: the delta changed
                await self._refresh_scope()  # not behind the sync lock: a long sync must not hold up a turn
            return Retrieved(tuple(await self.search(text, index)))
        except _FAILURES as exc:
            log.warning("retrieval failed for this turn (%s); answering without it", exc)
            return Retrieved()

    async def search(self, text: str, index: RetrievalIndex | None = None, *,
                     allowed: Collection[int] | None | EllipsisType = ...) -> list[Hit]:
        """The scope's best pairs for ``text`` within the budget (the CLI's query shows these); ``allowed``: these
        ids instead of the scope's (None: every indexed pair)."""
        index = index or self.index
        if index is None:
            return []
        vector = await self._query_vector(text) if index.dim is not None else None
        k = self.settings.retrieval_k
        if isinstance(allowed, EllipsisType):
            allowed = self._allowed
        try:
            hits = await self._query(index, text, k, vector, allowed)
        except RetrievalError as exc:  # a vector of another dimension: embed_model changed under a built index
            self._embedding_failed(exc)
            hits = await self._query(index, text, k, None, allowed)
        return within_budget(hits, self.settings.retrieval_max_chars)

    async def _query(self, index: RetrievalIndex, text: str, k: int, vector: list[float] | None,
                     allowed: Collection[int] | None) -> list[Hit]:
        """``index.query`` on the loop while queries are quick (``INLINE_QUERY_S``), else in a thread."""
        def timed() -> list[Hit]:
            start = time.perf_counter()
            try:
                return index.query(text, k, vector=vector, allow=allowed, exclude=self._withdrawn)
            finally:
                self._query_s = time.perf_counter() - start

        return timed() if self._query_s < INLINE_QUERY_S else await asyncio.to_thread(timed)

    async def _query_vector(self, text: str) -> list[float] | None:
        if not self._embedding_usable():
            return None
        try:
            async with asyncio.timeout(QUERY_EMBED_TIMEOUT_S):
                [vector] = await self.ollama.embed(self.settings.embed_model or "", [text])
        except (OllamaError, TimeoutError) as exc:
            self._embedding_failed(exc)
            return None
        self._embedding_ok()
        return vector

    # ---- embedding health -----------------------------------------------------------------------------------

    @property
    def embedding_working(self) -> bool:
        """Whether the last embedding call succeeded (False also without embed_model)."""
        return bool(self.settings.embed_model) and self._embed_down_since is None

    def _embedding_usable(self) -> bool:
        if not self.settings.embed_model:
            return False
        return self._embed_down_since is None or self.clock() - self._embed_down_since >= EMBED_RETRY_S

    def _embedding_failed(self, exc: Exception) -> None:
        if self._embed_down_since is None:  # logged once per outage, not on every turn
            log.warning("retrieval: embeddings from %r failed (%s); lexical retrieval only until they work again",
                        self.settings.embed_model, exc)
        self._embed_down_since = self.clock()

    def _embedding_ok(self) -> None:
        if self._embed_down_since is not None:
            log.info("retrieval: embeddings from %r work again", self.settings.embed_model)
            self._embed_down_since = None


class Retrievers:
    """One :class:`Retriever` per community, over the same database: the configured communities' indexes are built
    when the bot starts and re-read by one loop every ``retrieval_sync_s``; another community's (none in a bot
    whose settings name every community) is made on first use."""

    def __init__(self, settings: Settings, store: Store, ollama: OllamaClient, communities: Iterable[str] = ()) -> None:
        self.settings, self.store, self.ollama = settings, store, ollama
        self._by_community: dict[str, Retriever] = {}
        self._task: asyncio.Task[None] | None = None
        self._first_sync = asyncio.Event()
        for community in communities:
            self.of(community)

    @property
    def enabled(self) -> bool:
        return self.settings.retrieval_scope != "off"

    def of(self, community: str) -> Retriever:
        """The community's retriever (made, and its index built in the background, on first use)."""
        retriever = self._by_community.get(community)
        if retriever is None:
            retriever = Retriever(self.settings, self.store.scoped(community), self.ollama)
            self._by_community[community] = retriever
            if self._task is not None:  # the loop has started: build this one now, not at its next round
                retriever.request_sync()
        return retriever

    def __iter__(self) -> Iterator[Retriever]:
        return iter(list(self._by_community.values()))

    def start(self) -> None:
        """Build every community's index in the background, then re-read each every ``retrieval_sync_s``."""
        if self.enabled and self._task is None:
            for retriever in self:
                retriever._built_by_loop = True
            self._task = asyncio.get_running_loop().create_task(self._run(), name="retrieval-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for retriever in self:
            await retriever.stop()

    async def _run(self) -> None:
        while True:
            for retriever in self:  # one after the other: ten first builds at once would hold up the chats
                await retriever._sync_logged()
                retriever._first_sync.set()
            self._first_sync.set()
            await asyncio.sleep(self.settings.retrieval_sync_s)

    def request_sync(self, community: str | None, withdrawn: Iterable[int] = ()) -> None:
        """:meth:`Retriever.request_sync` for the community whose pairs changed (None: nothing to do)."""
        if community is not None:
            self.of(community).request_sync(withdrawn)

    async def retrieve(self, community: str | None, history: Sequence[dict[str, str]],
                       version_id: int | None = None) -> Retrieved:
        """The community's pairs for this turn; none outside every community."""
        if community is None:
            return Retrieved()
        return await self.of(community).retrieve(history, version_id)

    async def wait_idle(self) -> None:
        """Until the first builds and the syncs requested so far are done (tests, the benchmark)."""
        if self._task is not None:
            await self._first_sync.wait()
        for retriever in self:
            await retriever.wait_idle()

    async def sync(self) -> dict[str, SyncReport]:
        """Bring every community's index up to date now."""
        return {retriever.store.community or "": await retriever.sync() for retriever in self}


# ---- the gate's second table ------------------------------------------------------------------------------------


def gate_with_retrieval(settings: Settings, store: Store, ollama: OllamaClient,
                        retriever: Retriever | None = None) -> Inform:
    """What ``conclude_candidate(inform=…)`` runs: the candidate answers the gate's eval prompts again, now with the
    expert answers the bot would retrieve once the candidate answers (the scope taken relative to the candidate's
    own snapshot), at the gate's options and scored the same way. For information: the verdict judged the weights
    alone. The eval split's own pairs are never retrieved (their answers are the references). ``retriever``: the
    bot's own, whose index is reused (brought up to date first); without it one is built from the database."""

    async def measure(tag: str, gate: GateResult) -> WithRetrieval:
        if settings.retrieval_scope == "off":
            return {"skipped": "retrieval is off (retrieval_scope: off)"}
        weights = gate.scores.get("candidate")
        if not weights or not weights.get("count"):
            return {"skipped": "the gate had no eval prompts"}
        version = await store.get_model_version(tag)
        if not version.snapshot_path:
            return {"skipped": f"{tag} records no snapshot"}
        snapshot = await asyncio.to_thread(read_snapshot, Path(version.snapshot_path))
        prompts = eval_prompts(snapshot.eval, int(weights["count"]))
        live = retriever or Retriever(settings, store, ollama)
        await live.sync()
        held_out = await ids_of_hashes(store, snapshot.ids["eval"])
        if settings.retrieval_scope == "delta":
            allowed = await delta_ids(store, tag) - held_out
        else:
            allowed = set(live.index.ids if live.index else ()) - held_out
        rows: list[RetrievalRow] = []
        used: set[int] = set()
        for prompt in prompts:
            hits = await live.search(prompt.question, allowed=frozenset(allowed))
            answer = await ollama.chat(tag, _with_block(prompt, hits, settings.system_prompt), gate.options,
                                       think=False)  # as the gate's own answers (deploy/gate.py)
            used.update(h.example_id for h in hits)
            rows.append({"question": prompt.question, "pair_ids": [h.example_id for h in hits], "answer": answer,
                         "rouge_l": rouge_l(answer, prompt.reference or "")})
        scores = score_answers([str(r["answer"]) for r in rows], [p.reference or "" for p in prompts],
                               [p.question for p in prompts])
        return {"scope": settings.retrieval_scope, "k": settings.retrieval_k, "max_chars": settings.retrieval_max_chars,
                "search": "lexical + vectors" if live.embedding_working else "lexical",
                "prompts": len(prompts), "with_pairs": sum(1 for r in rows if r["pair_ids"]), "pairs": len(used),
                "weights": dict(weights), "candidate": scores.to_dict(), "rows": rows}

    return measure


def _with_block(prompt: EvalPrompt, hits: Sequence[Hit], system_prompt: str) -> list[dict[str, str]]:
    """The eval chat as the bot would send it: the expert answers' block after its system message (the chat's own,
    else the bot's system prompt); unchanged when nothing was retrieved."""
    messages = [dict(m) for m in prompt.messages]
    if not hits:
        return messages
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = Retrieved(tuple(hits)).system_message(messages[0]["content"])
        return messages
    return [{"role": "system", "content": Retrieved(tuple(hits)).system_message(system_prompt)}, *messages]
