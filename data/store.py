"""The store: one async object over SQLAlchemy 2 for everything loraloop remembers.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) works with the same code.
Objects returned are detached ORM rows: read them, don't mutate them — change things through methods.
"""

from __future__ import annotations

import asyncio
import copy
import statistics
import time
import typing
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import Text, bindparam, cast, delete, event, func, insert, not_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from data.communities import DEFAULT_COMMUNITY, Assignment, assign_communities, check_name
from data.conversation import Conversation
from data.errors import (  # re-exported: callers import the store's errors from data.store
    DuplicateExample,
    HourlyLimitReached,
    ImportFailed,
    InvalidRating,
    NoRollbackTarget,
    NotEditable,  # noqa: F401 (re-exported)
    NotFound,
    RunInProgress,  # noqa: F401 (re-exported)
    RunStateError,  # noqa: F401 (re-exported)
    SelfRating,
    StoreError,
    Superseded,
    UnfilledPlaceholders,
    UnstorableText,
)
from data.import_lease import ImportLease
from data.models import (
    EXAMPLE_STATUSES,
    SOURCES,
    VERSION_STATUSES,
    ActiveModel,
    Answer,
    Base,
    Comparison,
    Example,
    Feedback,
    ModelVersion,
    PendingImport,
    PreferenceRecord,
    Promotion,
    Rating,
    RetrainRun,
    SnapshotRecord,
    VersionStatus,
    utcnow,
)
from data.review import ReviewPolicy, agreement, disagreement

if typing.TYPE_CHECKING:
    from sqlalchemy.orm import QueryableAttribute
    from sqlalchemy.sql.elements import ColumnElement

    from data.snapshot import WrittenSnapshot

# The role of the prompt entry that lists the retrieved pairs an answer was given with (record_answer).
# Statuses a version can be rolled back to (it served well and was not rolled back itself).
_GOOD_FOR_ROLLBACK = ("promoted",)
# Statuses a moderator may set directly; superseded is only ever the effect of an edit.
_MODERATOR_STATUSES = ("pending", "approved", "rejected")
# Statuses an example may be edited from (an edited copy always starts pending review again).
_EDITABLE = ("pending", "approved", "rejected")
# Rows per batch of a streamed snapshot or export. Small: the rows alive at once get promoted to the garbage
# collector's old generations, which then run full collections (5,000-row batches cost a third more CPU).
SNAPSHOT_BATCH_ROWS = 1000
# Rows per import transaction: each batch holds SQLite's write lock for some tens of milliseconds only.
IMPORT_BATCH_ROWS = 2000
# After this long writing batches back to back, an import pauses for longer than SQLite's longest busy-wait
# sleep (100 ms), so a writer waiting for the lock (the bot) surely gets it: it waits well under half a second
# (a window plus one batch), never its 10 s busy timeout, however big the import.
_IMPORT_WRITE_WINDOW_S = 0.3
_IMPORT_PAUSE_S = 0.12
# The window of the per-user submission limit (add_example's and import_conversations' hourly_limit).
SUBMISSION_WINDOW = timedelta(hours=1)
# PostgreSQL: the first key of the per-author advisory lock that serialises their submissions under a limit (two
# 32-bit keys: a key space apart from import leases' single 64-bit keys).
_SUBMISSIONS_LOCK = 0x4C4C5355
# What get_or_404 calls each kind of row it finds for a caller (the NotFound message: "there is no …").
_NOT_FOUND = {Example: "example #{}", Answer: "answer #{}", ModelVersion: "model version {!r}",
              RetrainRun: "retrain run #{}", PreferenceRecord: "preference record #{}", Comparison: "comparison #{}"}
_Row = TypeVar("_Row", bound=Base)


def visible(import_batch: ColumnElement[str | None] | QueryableAttribute[str | None]) -> ColumnElement[bool]:
    """The rows every query sees, given their ``import_batch`` column: not those of an import still being written
    (see Store.import_batch)."""
    return or_(import_batch.is_(None), import_batch.not_in(select(PendingImport.id)))


_VISIBLE = visible(Example.import_batch)


def _approved_text(community: str, *, in_order_added: bool = False) -> Any:
    """A community's training set as snapshots and exports read it, sorted by hash: messages and tags as the JSON
    text stored, on PostgreSQL too (a cast in SQL, or asyncpg decodes it on the event loop). Columns in
    SnapshotWriter.write_rows's order. ``in_order_added``: in the order the examples were stored (an export keeps
    a file's record order)."""
    return (select(Example.content_hash, cast(Example.messages, Text).label("messages"),
                   cast(Example.tags, Text).label("tags"), Example.source, Example.tools)
            .where(Example.status == "approved", Example.community == community, _VISIBLE)
            .order_by(Example.id if in_order_added else Example.content_hash))


@dataclass(frozen=True)
class RatingOutcome:
    example: Example
    scores: list[int]
    mean: float
    disagreement: float
    decided: str | None  # the status this rating decided ('approved'/'rejected'), if it decided one
    changed: bool = False  # True when this rater had rated the example before: the rating was changed
    # Why the ratings' approval did not take (unfilled template placeholders): the example stays pending.
    held: str | None = None


@dataclass(frozen=True)
class ImportOutcome:
    imported: int
    # Indices (into the given sequence) of conversations already in the store or earlier in the same batch.
    duplicates: list[int] = field(default_factory=list)
    # Indices of conversations another import, still being written, holds (hidden): not imported, not duplicates
    # either until that import is published.
    in_flight: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetStats:
    total: int
    by_status: dict[str, int]
    by_source: dict[str, int]
    approved_by_source: dict[str, int]
    rated_examples: int
    ratings: int
    agreement: float | None
    new_approved_since_active: int
    feedback_up: int
    feedback_down: int
    # Preference records (data.preferences): total, by_status, by_source, approved_by_source.
    preferences: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class _AnsweringCache:
    """The active version of each community as last read, shared by a store and every store scoped from it.

    A read is kept only if no switch happened while it ran (``switches``): a promotion made through these stores
    is never hidden by a read that started before it."""

    def __init__(self) -> None:
        self.read: dict[str, tuple[float, tuple[str, int] | None]] = {}
        self.switches: Counter[str] = Counter()

    def switched(self, community: str) -> None:
        self.switches[community] += 1
        self.read.pop(community, None)


class Store:
    """All persistent state. Create with an async SQLAlchemy URL, then ``await migrate()``.

    A store is scoped to one community (data.communities): every method reads and writes that community's rows
    only, and ids of another community's rows are "not found". ``scoped`` gives the same database seen as
    another community; the first store owns the connections (close that one).

    The store is how everything reaches the database. Examples, ratings, answers and their feedback, imports,
    snapshots and model versions are its methods; each other group of queries is a module of functions that take
    the store as their first argument (data.runs, data.quality, data.preferences, data.vectors) and go through its
    ``session``, ``owner`` and ``get_or_404``, so the community scope is kept in one place.
    """

    def __init__(
        self,
        url: str,
        *,
        policy: ReviewPolicy | None = None,
        connect_args: dict[str, Any] | None = None,
        echo: bool = False,
        community: str = DEFAULT_COMMUNITY,
    ) -> None:
        self.url = url
        self.community: str | None = check_name(community)
        self.connect_args = connect_args or {}
        self.policy = policy or ReviewPolicy()
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        # orjson for the JSON columns: bulk imports and snapshots spend most of their time there.
        self.engine: AsyncEngine = create_async_engine(
            url, echo=echo, connect_args=connect_args or {}, json_serializer=_json_text, json_deserializer=orjson.loads
        )
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._answering = _AnsweringCache()

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision; then delete what imports killed mid-way left hidden."""
        from data.migrations import upgrade

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)
        await self.discard_abandoned_imports()

    def scoped(self, community: str | None) -> Store:
        """This database seen as ``community`` (the same connections). None: outside every community (an
        unconfigured server, a DM): only answers and their votes are kept there, which no community sees."""
        clone = copy.copy(self)
        clone.community = None if community is None else check_name(community)
        return clone

    def owner(self) -> str:
        """The community new knowledge is written to; StoreError outside every community."""
        if self.community is None:
            raise StoreError("this server is not part of any community: nothing can be taught or trained here")
        return self.community

    async def assign_communities(self, by_guild: typing.Mapping[int, str], fallback: str) -> Assignment:
        """Give rows written before communities existed their community (data.communities.assign_communities)."""
        return await assign_communities(self.engine, by_guild, check_name(fallback))

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self) -> AsyncSession:
        return self._sessions()

    async def get_or_404(self, s: AsyncSession, entity: type[_Row], key: int | str, *, lock: bool = False) -> _Row:
        """This community's ``entity`` row with id ``key`` (a model version: its tag, when ``key`` is text) as the
        database has it now, this session's own writes included; NotFound when there is none, when it is another
        community's or when an import still being written holds it. ``lock``: row-locked until commit (PostgreSQL).
        """
        columns = entity.__table__.c
        query = select(entity).where(columns["tag" if isinstance(key, str) else "id"] == key,
                                     columns["community"] == self.community)
        if "import_batch" in columns:
            query = query.where(visible(columns["import_batch"]))
        if lock:
            query = query.with_for_update()
        row = await s.scalar(query.execution_options(populate_existing=True))
        if row is None:
            raise NotFound("there is no " + _NOT_FOUND[entity].format(key))
        return row

    # ---- examples -------------------------------------------------------------------------------------

    async def add_example(
        self,
        conversation: Conversation,
        *,
        source: str,
        author_id: int | None = None,
        guild_id: int | None = None,
        status: str = "pending",
        answer_id: int | None = None,
        max_chars: int | None = None,
        hourly_limit: int | None = None,
    ) -> Example:
        """Add one validated example; raises DuplicateExample if its normalised content is already stored.

        ``hourly_limit``: the most examples ``author_id`` may submit in an hour (None or 0: no limit); raises
        HourlyLimitReached when this one would go over, decided in the transaction that stores it.
        """
        _check_choice("source", source, SOURCES)
        _check_choice("status", status, EXAMPLE_STATUSES)
        conversation.validate(max_chars)
        _check_storable(conversation)
        digest = conversation.content_hash()
        async with self.session() as s:
            existing = await s.scalar(self._same_content(digest))
            if existing is not None:
                raise DuplicateExample(existing)
            if hourly_limit and author_id is not None:
                await _decide_submissions(s, author_id, hourly_limit, 1)
            example = Example(**_example_row(conversation, digest, source, author_id, guild_id, status),
                              community=self.owner(), answer_id=answer_id,
                              approved_at=utcnow() if status == "approved" else None)
            s.add(example)
            try:
                await s.commit()
            except IntegrityError:  # a concurrent insert of the same content won the race
                await s.rollback()
                existing = await s.scalar(self._same_content(digest))
                raise DuplicateExample(existing or 0) from None
            return example

    def _same_content(self, digest: str) -> Any:
        """The id of this community's example with content hash ``digest`` (hidden imports' rows included)."""
        return select(Example.id).where(Example.content_hash == digest, Example.community == self.community)

    async def import_conversations(
        self,
        conversations: Sequence[Conversation],
        *,
        source: str = "import",
        author_id: int | None = None,
        guild_id: int | None = None,
        approve: bool = False,
        batch_rows: int = IMPORT_BATCH_ROWS,
        reject: Collection[int] = frozenset(),
        hourly_limit: int | None = None,
    ) -> ImportOutcome:
        """Insert many (already validated) conversations, all or nothing; duplicates are skipped and listed.

        ``reject``: indices of conversations stored as rejected whatever ``approve`` says (a KTO file's
        undesirable answers: kept for preference use, never trained on). ``hourly_limit``: as add_example's, for
        every row this import stores (rejected ones too, duplicates not), decided when it publishes them.

        Written in short transactions of ``batch_rows`` rows, so the bot's own writes get SQLite's write lock
        between them; the rows stay hidden until the end publishes them all (see ``import_batch``).
        Raises UnstorableText before writing anything, ImportFailed when the database refuses a row.
        """
        _check_choice("source", source, SOURCES)
        self.owner()
        # Off the event loop: a 100k-row import's text takes a while to check, serialise and hash.
        stored = await asyncio.to_thread(_storable_rows, conversations)
        inserts = (_import_insert(self.engine.dialect, approve), _import_insert(self.engine.dialect, False))
        lookup = _known_digests(self.engine.dialect, min(batch_rows, len(conversations)) or 1, self.community)
        seen: set[str] = set()  # digests already stored, or written by an earlier batch of this import
        duplicates: list[int] = []
        elsewhere: list[int] = []
        imported = 0

        async def within_limit(s: AsyncSession) -> None:  # in the publishing transaction, once all is written
            if hourly_limit and author_id is not None and imported:
                await _decide_submissions(s, author_id, hourly_limit, imported)

        try:
            async with self.import_batch(before_publish=within_limit) as batch_id:
                async for start, stop in self.import_slices(len(conversations), batch_rows):
                    written, dups, others = await _to_the_end(self._write_batch(
                        stored, start, stop, seen, inserts, lookup, batch_id, source, author_id, guild_id, approve,
                        reject))
                    imported += written
                    duplicates += dups
                    elsewhere += others
        except StatementError as exc:
            raise ImportFailed(f"the database refused a conversation of this import ({_db_reason(exc)}); "
                               "nothing was imported") from exc
        return ImportOutcome(imported=imported, duplicates=duplicates, in_flight=elsewhere)

    async def _write_batch(self, stored: Sequence[_StoredRow], start: int, stop: int, seen: set[str],
                           inserts: tuple[str, str], lookup: tuple[str, int, bool], batch_id: str, source: str,
                           author_id: int | None, guild_id: int | None, approve: bool,
                           reject: Collection[int] = frozenset()) -> tuple[int, list[int], list[int]]:
        """Write stored[start:stop] in one transaction; returns (rows written, duplicate indices, indices another
        import still being written holds).

        Duplicates are looked up per batch, just before writing it; when a concurrent writer stored one of the
        same conversations in between (the unique hash refuses the batch), the batch is looked up and written
        once more. ``inserts``: the kept rows' and the rejected rows' INSERT (_import_insert); ``lookup``: the
        SELECT of known hashes and how many it takes (_known_digests).
        """
        status = "approved" if approve else "pending"
        for attempt in (1, 2):
            try:
                async with self.session() as s, s.begin():
                    wanted = [d for d in dict.fromkeys(row[0] for row in stored[start:stop]) if d not in seen]
                    conn = await s.connection()
                    known: set[str] = set()
                    held: set[str] = set()  # hidden rows of a live concurrent import: no duplicates (yet)
                    if wanted:  # padded with repeats to the one size the statement takes
                        sql, size, community_first = lookup
                        hashes = (*wanted, *[wanted[0]] * (size - len(wanted)))
                        found = await conn.exec_driver_sql(
                            sql, (self.community, *hashes) if community_first else (*hashes, self.community))
                        for digest, hidden in typing.cast("list[tuple[str, Any]]", found.all()):
                            (held if hidden else known).add(digest)
                    # One _IMPORT_COLUMNS row each: the stored row's fields plus its source, status and ids.
                    rows: list[tuple[Any, ...]] = []
                    rejected: list[tuple[Any, ...]] = []
                    dups: list[int] = []
                    others: list[int] = []
                    fresh: set[str] = set()
                    for index in range(start, stop):
                        digest, messages, tags, tools = stored[index]
                        if digest in held:
                            others.append(index)
                            continue
                        if digest in seen or digest in known or digest in fresh:
                            dups.append(index)
                            continue
                        fresh.add(digest)
                        refused = index in reject
                        # In _IMPORT_COLUMNS' order.
                        (rejected if refused else rows).append((digest, messages, tools, tags, source,
                                                                "rejected" if refused else status, author_id,
                                                                guild_id, batch_id, self.community))
                    # The driver's executemany with the rows as tuples: SQLAlchemy's per-row parameter handling
                    # would cost more than the database's own work.
                    if rows:
                        await conn.exec_driver_sql(inserts[0], rows)
                    if rejected:
                        await conn.exec_driver_sql(inserts[1], rejected)
                    rows += rejected
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        seen.update(known, fresh)
        return len(rows), dups, others

    # ---- imports: batches written hidden, published at once -------------------------------------------

    @asynccontextmanager
    async def import_batch(self, *, before_publish: Callable[[AsyncSession], Awaitable[None]] | None = None
                           ) -> AsyncIterator[str]:
        """A new import batch's id: rows written with it (their ``import_batch``) stay hidden from every query
        until the block ends, then are published all at once by one small statement; if the block raises or is
        cancelled, they are deleted.

        The importing process holds the batch's lease (data.import_lease) from before the batch exists until it
        is published or deleted, so an import whose process died is told from a live one at once: its rows are
        deleted by the next import or start (``discard_abandoned_imports``), a live one's never.
        ``before_publish`` runs first in the publishing transaction (the hourly limit); raising, it discards them.
        """
        await self.discard_abandoned_imports()
        batch_id = uuid.uuid4().hex
        lease = await ImportLease.take(self.engine, batch_id)
        if lease is None:  # a fresh random id: never held
            raise RuntimeError(f"the lease of the new import batch {batch_id} is held")
        try:
            async with self.session() as s, s.begin():
                s.add(PendingImport(id=batch_id))
            try:
                yield batch_id
                await _to_the_end(self._publish_import(batch_id, before_publish))
            except BaseException:  # cancellation included: the hidden rows must not outlive the import
                await asyncio.shield(self._discard_import(batch_id))
                raise
        finally:
            await asyncio.shield(lease.release())

    async def import_slices(self, total: int, batch_rows: int) -> AsyncIterator[tuple[int, int]]:
        """(start, stop) of each batch of an import of ``total`` rows, each to be written in its own transaction.

        On SQLite, after writing for _IMPORT_WRITE_WINDOW_S it pauses for longer than SQLite's longest busy-wait
        sleep, so a writer waiting for the lock (the bot) surely gets it. PostgreSQL's writers never wait for an
        import's rows: no pause.
        """
        pace = self.engine.dialect.name == "sqlite"
        window_start = time.monotonic()
        for start in range(0, total, batch_rows):
            yield start, min(start + batch_rows, total)
            if pace and time.monotonic() - window_start >= _IMPORT_WRITE_WINDOW_S:
                await asyncio.sleep(_IMPORT_PAUSE_S)
                window_start = time.monotonic()

    async def _publish_import(self, batch_id: str,
                              before: Callable[[AsyncSession], Awaitable[None]] | None = None) -> None:
        """Make an import's rows visible, all at once."""
        async with self.session() as s, s.begin():
            if before is not None:
                await before(s)
            await s.execute(delete(PendingImport).where(PendingImport.id == batch_id))

    async def _discard_import(self, batch_id: str) -> None:
        """Delete a batch's rows, if it is still pending: a batch published meanwhile keeps them."""
        async with self.session() as s, s.begin():
            gone = typing.cast("CursorResult[Any]", await s.execute(
                delete(PendingImport).where(PendingImport.id == batch_id)))
            if gone.rowcount:
                for table in (Example, PreferenceRecord):
                    await s.execute(delete(table).where(table.import_batch == batch_id)
                                    .execution_options(synchronize_session=False))

    async def discard_abandoned_imports(self) -> int:
        """Delete the hidden rows of imports whose process died mid-import (nobody holds their lease); returns
        how many imports. Imports still being written, in any process, are left alone."""
        async with self.session() as s:
            pending = list(await s.scalars(select(PendingImport.id)))
        discarded = 0
        for batch_id in pending:
            lease = await ImportLease.take(self.engine, batch_id)
            if lease is None:
                continue  # alive
            try:
                await self._discard_import(batch_id)
                discarded += 1
            finally:
                await asyncio.shield(lease.release())
        return discarded

    async def get_example(self, example_id: int) -> Example:
        async with self.session() as s:
            return await self.get_or_404(s, Example, example_id)

    async def list_examples(self, *, status: str | None = None, limit: int | None = None) -> list[Example]:
        query = select(Example).where(_VISIBLE, Example.community == self.community).order_by(Example.id)
        if status is not None:
            query = query.where(Example.status == status)
        if limit is not None:
            query = query.limit(limit)
        async with self.session() as s:
            return list(await s.scalars(query))

    async def count_submissions(self, author_id: int, since: datetime) -> int:
        """How many examples ``author_id`` submitted since ``since`` (the per-user rate limit counts these)."""
        async with self.session() as s:
            return await _submissions_since(s, author_id, since)

    async def next_for_review(self, reviewer_id: int) -> Example | None:
        """The oldest pending example of this community the reviewer neither wrote nor rated yet."""
        rated = select(Rating.example_id).where(Rating.rater_id == reviewer_id)
        query = (
            select(Example)
            .where(Example.status == "pending", Example.community == self.community, _VISIBLE,
                   Example.id.not_in(rated))
            .where((Example.author_id.is_(None)) | (Example.author_id != reviewer_id))
            .order_by(Example.id)
            .limit(1)
        )
        async with self.session() as s:
            return await s.scalar(query)

    async def set_example_status(self, example_id: int, status: str, *, allow_placeholders: bool = False) -> Example:
        """A moderator's direct decision (pending/approved/rejected), overriding the rating rule.

        Raises Superseded when an edit replaced the example (even one that lands while this runs), and
        UnfilledPlaceholders when approving one that still holds template placeholders (``{{name}}``) unless
        ``allow_placeholders``: what is approved is exactly what trains.
        """
        # data.preferences builds on the store (it imports this module): imported where the store needs it.
        from data.preferences import record_correction

        _check_choice("status", status, _MODERATOR_STATUSES)
        async with self.session() as s, s.begin():
            current = await self.get_or_404(s, Example, example_id, lock=True)
            if status == "approved" and not allow_placeholders and (held := _unfilled(current)):
                raise UnfilledPlaceholders(held)
            # Conditional on the status at the moment of writing: on SQLite the read above may predate an edit
            # committed since (its write lock is only taken here).
            moved = await _move_status(s, example_id, status, frm=_EDITABLE)
            example = await self.get_or_404(s, Example, example_id)
            if not moved:
                raise Superseded(example_id, example.superseded_by)
            if status == "approved":  # an approved correction is a preference judgement too
                await record_correction(s, example_id)
        return example

    async def replace_pending_copies(self, copies: Sequence[tuple[str, str]]) -> int:
        """Supersede pending examples by their filled copies: ``copies`` holds (content hash of a conversation as
        written with template placeholders, content hash of the same with them filled). Each pending example of
        the first kind whose filled copy is stored becomes superseded by it; returns how many.

        What a re-import with ``--set`` does, so the placeholder copies an earlier import left pending can no
        longer be approved beside the filled ones."""
        if not copies:
            return 0
        filled_of = dict(copies)
        replaced = 0
        async with self.session() as s, s.begin():
            for start in range(0, len(copies), 1000):
                chunk = [c[0] for c in copies[start:start + 1000]]
                pending = dict((await s.execute(select(Example.content_hash, Example.id).where(
                    Example.content_hash.in_(chunk), Example.status == "pending",
                    Example.community == self.community, _VISIBLE))).all())
                wanted = {filled_of[h] for h in pending}
                copy_ids = dict((await s.execute(select(Example.content_hash, Example.id).where(
                    Example.content_hash.in_(wanted), Example.community == self.community, _VISIBLE))).all())
                for digest, example_id in pending.items():
                    copy_id = copy_ids.get(filled_of[digest])
                    if copy_id is not None and await _move_status(s, example_id, "superseded", frm=("pending",),
                                                                  superseded_by=copy_id):
                        replaced += 1
        return replaced

    async def edit_example(self, example_id: int, conversation: Conversation, *, editor_id: int,
                           max_chars: int | None = None) -> Example:
        """Replace an example by an edited copy: the copy enters review (pending), the original is superseded.

        Pending, approved and rejected examples can be edited; a superseded one cannot (raises Superseded:
        edit its copy), so of two racing edits exactly one wins.
        """
        conversation.validate(max_chars)
        _check_storable(conversation)
        digest = conversation.content_hash()
        try:
            async with self.session() as s, s.begin():
                original = await self.get_or_404(s, Example, example_id, lock=True)
                if original.status not in _EDITABLE:
                    raise Superseded(example_id, original.superseded_by)
                existing = await s.scalar(self._same_content(digest))
                if existing is not None:
                    raise DuplicateExample(existing)
                edited = Example(**_example_row(conversation, digest, original.source, editor_id, original.guild_id,
                                                "pending"), community=self.community, answer_id=original.answer_id)
                s.add(edited)
                await s.flush()
                if not await _move_status(s, example_id, "superseded", frm=_EDITABLE, superseded_by=edited.id):
                    # Another edit superseded it after our read (SQLite: before we held the write lock).
                    original = await self.get_or_404(s, Example, example_id)
                    raise Superseded(example_id, original.superseded_by)
        except IntegrityError:  # a concurrent insert of the same content won the race
            async with self.session() as s:
                existing = await s.scalar(self._same_content(digest))
            raise DuplicateExample(existing or 0) from None
        return edited

    # ---- ratings -------------------------------------------------------------------------------------

    async def rate(self, example_id: int, rater_id: int, score: int, comment: str | None = None) -> RatingOutcome:
        """Record (or change) one expert's 1–5 rating; applies the review policy to a pending example.

        Safe against concurrent raters (the decision counts every committed rating), concurrent edits (a
        superseded example is never decided again) and double clicks (the second click changes the rating).
        """
        if not isinstance(score, int) or not 1 <= score <= 5:
            raise InvalidRating(f"a rating is a whole number from 1 to 5, not {score!r}")
        if comment is not None:
            _check_text(comment, "the comment")
        try:
            return await self._rate(example_id, rater_id, score, comment)
        except IntegrityError:
            # The same rater's concurrent first rating (a double click) was inserted after this one looked for
            # it; once more, this finds it and changes it.
            return await self._rate(example_id, rater_id, score, comment)

    async def _rate(self, example_id: int, rater_id: int, score: int, comment: str | None) -> RatingOutcome:
        from data.preferences import record_correction

        async with self.session() as s, s.begin():
            # PostgreSQL: lock the example row, so a concurrent rating of it waits for this one to commit and
            # then counts it (READ COMMITTED would otherwise let each see only its own: nobody decides).
            # SQLite ignores FOR UPDATE; its single writer gives the same guarantee from the flush below on.
            example = await self.get_or_404(s, Example, example_id, lock=True)
            if example.author_id is not None and example.author_id == rater_id:
                raise SelfRating()
            if example.status == "superseded":
                raise Superseded(example_id, example.superseded_by)
            rating = await s.scalar(
                select(Rating).where(Rating.example_id == example_id, Rating.rater_id == rater_id)
            )
            changed = rating is not None
            if rating is None:
                s.add(Rating(example_id=example_id, rater_id=rater_id, score=score, comment=comment))
            else:
                rating.score, rating.comment, rating.updated_at = score, comment, utcnow()
            await s.flush()
            # Read the status again now that this transaction writes (SQLite: holds the write lock).
            example = await self.get_or_404(s, Example, example_id)
            if example.status == "superseded":
                raise Superseded(example_id, example.superseded_by)
            scores = list(await s.scalars(select(Rating.score).where(Rating.example_id == example_id)))
            decided = self.policy.decide(scores)
            held = _unfilled(example) if decided == "approved" else None
            # Ratings decide pending examples only: a moderator's decision stands, a superseded one stays so; an
            # example with unfilled placeholders is never approved by ratings (its author or an admin fills them).
            if decided is None or held or not await _move_status(s, example_id, decided, frm=("pending",)):
                decided = None
            if decided == "approved":  # an approved correction is a preference judgement too
                await record_correction(s, example_id)
            example = await self.get_or_404(s, Example, example_id)
        return RatingOutcome(example, scores, statistics.fmean(scores), disagreement(scores), decided, changed, held)

    async def ratings_for(self, example_id: int) -> list[Rating]:
        async with self.session() as s:
            return list(await s.scalars(select(Rating).join(Example, Example.id == Rating.example_id)
                                        .where(Rating.example_id == example_id, Example.community == self.community)
                                        .order_by(Rating.id)))

    # ---- chat answers and feedback ---------------------------------------------------------------------

    async def record_answer(
        self,
        *,
        prompt: list[dict[str, Any]],
        answer: str,
        model_tag: str,
        model_version_id: int | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        message_id: int | None = None,
        user_id: int | None = None,
        pair_ids: Sequence[int] = (),
    ) -> Answer:
        """``pair_ids``: the approved examples retrieval showed the model (bot/retrieval.py), in order.

        The texts are what a model and people wrote, kept whatever they hold: a NUL or an unpaired surrogate, which
        no database stores, is written as U+FFFD."""
        prompt = [{k: _storable(v) if isinstance(v, str) else v for k, v in turn.items()} for turn in prompt]
        row = Answer(prompt=prompt, answer=_storable(answer), model_tag=model_tag, model_version_id=model_version_id,
                     guild_id=guild_id, channel_id=channel_id, message_id=message_id, user_id=user_id,
                     pair_ids=[int(i) for i in pair_ids] or None, community=self.community)
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def get_answer(self, answer_id: int) -> Answer:
        async with self.session() as s:
            return await self.get_or_404(s, Answer, answer_id)

    async def add_feedback(self, answer_id: int, user_id: int, value: int) -> Feedback:
        """👍 (+1) or 👎 (-1); one per user and answer, a second click changes it.

        One upsert (INSERT … ON CONFLICT DO UPDATE, on SQLite and PostgreSQL): a double click's two first votes
        cannot both insert, whichever commits first; the later click's value stands.
        """
        if value not in (1, -1):
            raise StoreError("feedback is +1 or -1")
        now = utcnow()
        upsert = _dialect_insert(self.engine.dialect)(Feedback).values(
            answer_id=answer_id, user_id=user_id, value=value, created_at=now, updated_at=now)
        upsert = upsert.on_conflict_do_update(index_elements=[Feedback.answer_id, Feedback.user_id],
                                              set_={"value": value, "updated_at": now})
        async with self.session() as s, s.begin():
            await self.get_or_404(s, Answer, answer_id)
            try:
                await s.execute(upsert)
            except IntegrityError:  # the answer was deleted meanwhile (its foreign key)
                raise NotFound(f"there is no answer #{answer_id}") from None
            row = await s.scalar(select(Feedback).where(Feedback.answer_id == answer_id, Feedback.user_id == user_id)
                                 .execution_options(populate_existing=True))
        if row is None:  # the answer was deleted between the two statements
            raise NotFound(f"there is no answer #{answer_id}")
        return row

    async def pair_feedback(self, pair_ids: Collection[int]) -> dict[int, tuple[int, int]]:
        """👍 and 👎 counts, per example, of the answers that were given with it retrieved (every id in
        ``pair_ids`` is in the result, (0, 0) when unused or unrated)."""
        wanted = set(pair_ids)
        counts = dict.fromkeys(wanted, (0, 0))
        query = (select(Answer.pair_ids, Feedback.value).join(Feedback, Feedback.answer_id == Answer.id)
                 .where(Answer.pair_ids.is_not(None), Answer.community == self.community))
        async with self.session() as s:
            for used, value in await s.execute(query):
                for example_id in set(used or ()) & wanted:  # never None (the WHERE): the column's type allows it
                    up, down = counts[example_id]
                    counts[example_id] = (up + (value > 0), down + (value < 0))
        return counts

    # ---- statistics ------------------------------------------------------------------------------------

    async def dataset_stats(self) -> DatasetStats:
        from data.preferences import preference_stats

        mine = (_VISIBLE, Example.community == self.community)
        async with self.session() as s:
            by_status = dict((await s.execute(select(Example.status, func.count()).where(*mine)
                                              .group_by(Example.status))).all())
            by_source = dict((await s.execute(select(Example.source, func.count()).where(*mine)
                                              .group_by(Example.source))).all())
            approved_by_source = dict((await s.execute(
                select(Example.source, func.count()).where(Example.status == "approved", *mine)
                .group_by(Example.source)
            )).all())
            per_example: dict[int, list[int]] = {}
            for example_id, score in (await s.execute(
                    select(Rating.example_id, Rating.score).join(Example, Example.id == Rating.example_id)
                    .where(Example.community == self.community))).all():
                per_example.setdefault(example_id, []).append(score)
            since = await self._active_since(s)
            new_query = select(func.count()).select_from(Example).where(Example.status == "approved", *mine)
            if since is not None:
                new_query = new_query.where(Example.approved_at > since)
            new_approved = await s.scalar(new_query) or 0
            feedback = Counter(await s.scalars(select(Feedback.value).join(Answer, Answer.id == Feedback.answer_id)
                                               .where(Answer.community == self.community)))
        return DatasetStats(
            total=sum(by_status.values()),
            by_status={k: by_status.get(k, 0) for k in EXAMPLE_STATUSES},
            by_source={k: by_source.get(k, 0) for k in SOURCES},
            approved_by_source={k: approved_by_source.get(k, 0) for k in SOURCES},
            rated_examples=len(per_example),
            ratings=sum(len(v) for v in per_example.values()),
            agreement=agreement(per_example.values()),
            new_approved_since_active=new_approved,
            feedback_up=feedback[1],
            feedback_down=feedback[-1],
            preferences=await preference_stats(self),
        )

    async def _active_since(self, s: AsyncSession) -> datetime | None:
        """When the active model's training data was frozen (its snapshot), or None without one."""
        active = await self._active(s)
        if active is None or active.snapshot_sha256 is None:
            return None
        return await s.scalar(
            select(func.min(SnapshotRecord.created_at)).where(SnapshotRecord.sha256 == active.snapshot_sha256,
                                                              SnapshotRecord.community == self.community)
        ) or active.created_at

    async def approved_examples(self) -> list[Any]:
        """The training set as light rows (content_hash, messages, tags, source, tools), sorted by hash."""
        query = (select(Example.content_hash, Example.messages, Example.tags, Example.source, Example.tools)
                 .where(Example.status == "approved", Example.community == self.community, _VISIBLE)
                 .order_by(Example.content_hash))
        async with self.session() as s:
            return list(await s.execute(query))

    async def approved_examples_batches(self, batch_rows: int = SNAPSHOT_BATCH_ROWS, *, in_order_added: bool = False
                                        ) -> AsyncGenerator[Sequence[Any], None]:
        """``approved_examples``' rows, ``batch_rows`` at a time, fetched as they are consumed; ``messages`` and
        ``tags`` are the JSON text the store holds, on every database (snapshots embed it as is: decoding and
        re-encoding 100k rows dominated snapshot time).

        One SELECT, so one consistent view however long the reading takes; memory holds one batch. Read through a
        plain connection (no ORM session: a third of the fetch time). Close it early with contextlib.aclosing.
        """
        async with self.engine.connect() as conn:
            query = _approved_text(self.owner(), in_order_added=in_order_added)
            result = await conn.stream(query.execution_options(yield_per=batch_rows))
            async for batch in result.partitions():
                yield batch

    async def record_snapshot(self, sha256: str, path: str, counts: dict[str, Any]) -> SnapshotRecord:
        row = SnapshotRecord(sha256=sha256, path=path, counts=counts, community=self.owner())
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def create_snapshot(self, out_dir: Path, eval_fraction: float = 0.1, *,
                              batch_rows: int = SNAPSHOT_BATCH_ROWS) -> WrittenSnapshot:
        """Freeze the approved examples into ``out_dir`` (see data.snapshot); returns where and its manifest.

        Streamed: each batch of rows goes to the file (off the event loop) as it arrives, so memory stays one
        batch's however many examples there are; a failure or cancellation leaves no half-written snapshot.
        """
        from data.preferences import approved_preferences
        from data.snapshot import SnapshotWriter

        # SQLite snapshots embed the stored JSON text as it is; PostgreSQL ones have always held it decoded and
        # re-encoded (asyncpg used to decode it on the way): each keeps its bytes, decoded in the writer's thread.
        decode = self.engine.dialect.name != "sqlite"

        def write(batch: Sequence[Any]) -> None:  # a generator: each row's decoded JSON dropped once written
            writer.write_rows(((example_id, orjson.loads(messages), orjson.loads(tags), source, tools)
                               for example_id, messages, tags, source, tools in batch) if decode else batch)

        writer = await asyncio.to_thread(SnapshotWriter, Path(out_dir), eval_fraction)
        with writer:
            async with aclosing(self.approved_examples_batches(batch_rows)) as batches:
                async for batch in batches:
                    # To the end even when cancelled: the clean-up must not race a write still in its thread.
                    await _to_the_end(asyncio.to_thread(write, batch))
            # The approved preference records ride along in their own file (few: read at once).
            preferences = await approved_preferences(self)
            if preferences:
                await _to_the_end(asyncio.to_thread(writer.write_preferences, preferences))
            written = await _to_the_end(asyncio.to_thread(writer.close))
        await self.record_snapshot(written.sha256, str(written.path), written.manifest.counts.model_dump())
        return written

    async def export_approved(self, out: Path, format: str, *, split: str = "all", eval_fraction: float = 0.1,
                              batch_rows: int = SNAPSHOT_BATCH_ROWS) -> int:
        """Write the approved examples, in the order they were stored (an imported file's own order), to ``out`` in
        ``format``; returns how many.

        ``split``: train, eval or all, the snapshots' hash-stable split for ``eval_fraction``. Streamed like
        create_snapshot; raises ValueError for a bad file name or a conversation the format cannot express, and
        then leaves no file (see formats.DatasetWriter).
        """
        from data import formats
        from data.snapshot import is_eval

        if split not in ("train", "eval", "all"):
            raise ValueError(f"split must be train, eval or all, not {split!r}")
        want_eval = split == "eval"

        def write(batch: Sequence[Any]) -> None:
            # A generator: each row decoded just before it is written, dropped just after (see formats._Encoder);
            # rows unpacked, not read by attribute (5× cheaper).
            writer.write_stored((_decoded(messages), _decoded(tags), tools)
                                for example_id, messages, tags, _, tools in batch
                                if split == "all" or is_eval(example_id, eval_fraction) == want_eval)

        writer = await asyncio.to_thread(formats.DatasetWriter, out, format)
        with writer:
            async with aclosing(self.approved_examples_batches(batch_rows, in_order_added=True)) as batches:
                async for batch in batches:
                    await _to_the_end(asyncio.to_thread(write, batch))
            return await _to_the_end(asyncio.to_thread(writer.commit))

    # ---- model versions ----------------------------------------------------------------------------------

    async def create_model_version(
        self,
        *,
        name: str,
        base_model: str,
        ollama_base: str,
        snapshot_sha256: str | None = None,
        snapshot_path: str | None = None,
        hyperparams: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """A new version of this community with the next number N for ``name``; its Ollama tag is
        ``loraloop-<name>:v<N>`` (name it with data.communities.lineage_name: tags are global in Ollama)."""
        community = self.owner()
        for _attempt in range(5):
            async with self.session() as s:
                n = (await s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0) + 1
                row = ModelVersion(
                    name=name, version=n, tag=f"loraloop-{name}:v{n}", base_model=base_model,
                    ollama_base=ollama_base, snapshot_sha256=snapshot_sha256, snapshot_path=snapshot_path,
                    hyperparams=hyperparams or {}, artifacts=artifacts or {}, metrics={}, evaluation={},
                    status="created", community=community,
                )
                s.add(row)
                try:
                    await s.commit()
                    return row
                except IntegrityError:  # another process took N at the same moment
                    await s.rollback()
        raise StoreError(f"could not allocate a version number for {name!r}")

    async def update_model_version(
        self,
        version: int | str,
        *,
        status: VersionStatus | None = None,
        metrics: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        artifacts: dict[str, Any] | None = None,
        hyperparams: dict[str, Any] | None = None,
        in_ollama: bool | None = None,
        failure_reason: str | None = None,
        snapshot_sha256: str | None = None,
        snapshot_path: str | None = None,
    ) -> ModelVersion:
        """Set the given fields on one version (those left None keep their value)."""
        if status is not None:
            _check_choice("model version status", status, VERSION_STATUSES)
        fields = {"status": status, "metrics": metrics, "evaluation": evaluation, "artifacts": artifacts,
                  "hyperparams": hyperparams, "in_ollama": in_ollama, "failure_reason": failure_reason,
                  "snapshot_sha256": snapshot_sha256, "snapshot_path": snapshot_path}
        async with self.session() as s, s.begin():
            row = await self.get_or_404(s, ModelVersion, version)
            for key, value in fields.items():
                if value is not None:
                    setattr(row, key, value)
        return row

    async def get_model_version(self, version: int | str) -> ModelVersion:
        async with self.session() as s:
            return await self.get_or_404(s, ModelVersion, version)

    async def list_model_versions(self) -> list[ModelVersion]:
        """Newest first."""
        async with self.session() as s:
            return list(await s.scalars(select(ModelVersion).where(ModelVersion.community == self.community)
                                        .order_by(ModelVersion.id.desc())))

    async def active_model_version(self) -> ModelVersion | None:
        async with self.session() as s:
            return await self._active(s)

    async def answering_model(self, max_age: float) -> tuple[str, int] | None:
        """The active version's ``(tag, id)`` (None: the base answers), read from the database at most ``max_age``
        seconds ago; the chat path asks it every turn. One read refreshes every community's (one statement, kept
        by the store and its scoped copies), so a bot in many servers reads once per ``max_age``, not once per
        server. A promotion or rollback made through these stores is seen at once; one made by another process
        (the CLI, a second bot) within ``max_age``."""
        community = self.community
        if community is None:
            return None
        cache = self._answering
        now = time.monotonic()
        if (cached := cache.read.get(community)) is not None and now - cached[0] <= max_age:
            return cached[1]
        switches = cache.switches.copy()
        async with self.engine.connect() as conn:  # no ORM objects: this is on the chat path
            rows = await conn.execute(
                select(ActiveModel.community, ModelVersion.tag, ModelVersion.id)
                .join(ModelVersion, ActiveModel.model_version_id == ModelVersion.id))
            found = {row.community: (row.tag, row.id) for row in rows}
        for name in found.keys() | cache.read.keys() | {community}:
            if cache.switches[name] == switches[name]:  # no switch while reading: what was read still holds
                cache.read[name] = (now, found.get(name))
        return found.get(community)

    async def _active(self, s: AsyncSession) -> ModelVersion | None:
        pointer = await s.scalar(select(ActiveModel).where(ActiveModel.community == self.community))
        if pointer is None or pointer.model_version_id is None:
            return None
        return await s.get(ModelVersion, pointer.model_version_id)

    async def promote(self, version: int | str) -> ModelVersion:
        """Make ``version`` the one the bot answers with: one transaction moves the single pointer."""
        async with self.session() as s, s.begin():
            row = await self.get_or_404(s, ModelVersion, version)
            if row.status in ("failed", "rejected") or not row.in_ollama:
                why = row.failure_reason or row.status if row.in_ollama else "it is not registered in Ollama"
                raise StoreError(f"{row.tag} cannot be promoted: {why}")
            await _point_at(s, row, "promote", self.owner())
        self._answering.switched(self.owner())
        return row

    async def rollback_target(self) -> ModelVersion | None:
        async with self.session() as s:
            return await self._rollback_target(s)

    async def _rollback_target(self, s: AsyncSession) -> ModelVersion | None:
        active = await self._active(s)
        history = await s.scalars(select(Promotion.model_version_id).where(Promotion.community == self.community)
                                  .order_by(Promotion.id.desc()))
        for version_id in history:
            if active is not None and version_id == active.id:
                continue
            candidate = await s.get(ModelVersion, version_id)
            if candidate is not None and candidate.status in _GOOD_FOR_ROLLBACK and candidate.in_ollama:
                return candidate
        return None

    async def rollback(self) -> ModelVersion:
        """Point back at the previous good version; the current one is marked rolled_back."""
        async with self.session() as s, s.begin():
            target = await self._rollback_target(s)
            if target is None:
                raise NoRollbackTarget("there is no earlier good model version to roll back to")
            current = await self._active(s)
            if current is not None:
                current.status = "rolled_back"
            await _point_at(s, target, "rollback", self.owner())
        self._answering.switched(self.owner())
        return target

    async def rollback_to_base(self) -> ModelVersion:
        """Answer with the clean base model again; returns the version that was active (now rolled_back).

        What an operator does when the only fine-tune, or every earlier one, went bad. Raises NoRollbackTarget
        when the base already answers."""
        community = self.owner()
        async with self.session() as s, s.begin():
            current = await self._active(s)
            if current is None:
                raise NoRollbackTarget("the base model already answers; there is nothing to roll back")
            current.status = "rolled_back"
            now = utcnow()
            await s.execute(update(ActiveModel).where(ActiveModel.community == community)
                            .values(model_version_id=None, switched_at=now))
            s.add(Promotion(model_version_id=current.id, action="base", created_at=now, community=community))
        self._answering.switched(community)
        return current

    async def retention_candidates(self, keep: int) -> list[ModelVersion]:
        """Versions whose Ollama tags may be deleted: beyond the newest ``keep`` still in Ollama,
        never the active one nor the rollback target."""
        async with self.session() as s:
            active = await self._active(s)
            target = await self._rollback_target(s)
            protected = {v.id for v in (active, target) if v is not None}
            in_ollama = list(await s.scalars(
                select(ModelVersion).where(ModelVersion.in_ollama.is_(True), ModelVersion.community == self.community)
                .order_by(ModelVersion.version.desc())
            ))
        return [v for v in in_ollama[keep:] if v.id not in protected]


_T = TypeVar("_T")


async def _to_the_end(coro: Awaitable[_T]) -> _T:
    """Await ``coro``; if the caller is cancelled meanwhile, let it finish first, then pass the cancellation on.

    A transaction cut off mid-statement leaves its connection (and SQLite's write lock) held until the pool
    notices; an import's clean-up after a cancellation needs that lock, and must see every batch it wrote.
    """
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller hears about
        raise


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _decoded(value: Any) -> Any:
    """A JSON column read as text: SQLite gives the text, asyncpg has already decoded it (its json codec)."""
    return orjson.loads(value) if isinstance(value, str) else value


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


async def _submissions_since(s: AsyncSession, author_id: int, since: datetime) -> int:
    """Every stored example of ``author_id`` since ``since``, whatever its status (a KTO file's rejected ones too)."""
    return await s.scalar(select(func.count(Example.id)).where(
        Example.author_id == author_id, Example.created_at >= since, _VISIBLE)) or 0


async def _decide_submissions(s: AsyncSession, author_id: int, limit: int, wanted: int) -> None:
    """Whether ``author_id`` may store ``wanted`` more examples under an hourly ``limit``, decided in ``s``'s
    transaction before it writes: raises HourlyLimitReached when not; else the caller's rows commit with it.

    The author's other submissions wait for this transaction to end, then count its rows: PostgreSQL, a
    transaction-scoped advisory lock per author; SQLite, the database's write lock taken now (BEGIN IMMEDIATE)
    rather than at the first write, after a count that another writer could have made stale.
    """
    conn = await s.connection()
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_advisory_xact_lock(_SUBMISSIONS_LOCK, author_id % 2**31)))
    else:
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
    used = await _submissions_since(s, author_id, utcnow() - SUBMISSION_WINDOW)
    if used + wanted > limit:
        raise HourlyLimitReached(used, limit, wanted)


def _dialect_insert(dialect: Dialect) -> Any:
    """The dialect's INSERT construct, the one with ``on_conflict_do_update`` (SQLite's and PostgreSQL's)."""
    return postgresql.insert if dialect.name == "postgresql" else sqlite.insert


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise StoreError(f"unknown {what} {value!r} (expected one of {', '.join(choices)})")


def _example_row(conv: Conversation, digest: str, source: str, author_id: int | None, guild_id: int | None,
                 status: str) -> dict[str, Any]:
    """An example's columns, timestamps aside (the model's defaults or the bulk insert stamp those)."""
    return {
        "content_hash": digest, "messages": conv.to_dicts(), "tools": conv.tools, "tags": list(conv.tags),
        "source": source, "status": status, "author_id": author_id, "guild_id": guild_id,
    }


def _unfilled(example: Example) -> str | None:
    """Why ``example`` may not be approved as it is (its unfilled template placeholders), or None."""
    from data.placeholders import placeholders_in_order

    names = list(dict.fromkeys(placeholders_in_order(Conversation.from_dicts(example.messages, example.tags or ()))))
    if not names:
        return None
    shown = ", ".join("{{" + n + "}}" for n in names)
    fill = " ".join(f"--set {n}=VALUE" for n in names)
    return (f"example #{example.id} still holds the template placeholder(s) {shown}: edit it, or import its file "
            f"again with {fill} (that replaces the pending copies); --allow-placeholders approves it as written")


def _check_storable(conv: Conversation, where: str = "") -> None:
    """Raise UnstorableText when a conversation's text holds what the database cannot store."""
    for i, m in enumerate(conv.messages):
        _check_text(m.content, f"{where}message {i} ({m.role})")
        if m.reasoning is not None:
            _check_text(m.reasoning, f"{where}message {i} ({m.role}) reasoning")
    if conv.tools is not None:
        _check_text(conv.tools, f"{where}the tool schema text")
    for tag in conv.tags:
        _check_text(tag, f"{where}tag {tag!r}")


# A conversation as an import writes it: (content hash, messages as stored JSON text, tags as stored JSON text,
# tools). A plain tuple: a hundred thousand of them are made at once.
_StoredRow = tuple[str, str, str, str | None]


def _storable_rows(conversations: Sequence[Conversation]) -> list[_StoredRow]:
    """Each conversation's row; UnstorableText for the first one holding text the database cannot store.

    The JSON text is exactly what the JSON columns' serializer (_json_text) writes, made here once. Its making is
    the check too, so the text is not scanned twice: orjson refuses an unpaired surrogate, and writes NUL as the
    escape \\u0000, which only then calls for a closer look (the same escape typed as text is a false alarm).
    """
    rows = []
    for index, conv in enumerate(conversations):
        try:
            messages, tags = orjson.dumps(conv.to_dicts()), orjson.dumps(list(conv.tags))
        except orjson.JSONEncodeError:
            _check_storable(conv, f"conversation {index}: ")
            raise  # not a text problem: no better message to give
        if conv.tools is not None or b"\\u0000" in messages or b"\\u0000" in tags:
            _check_storable(conv, f"conversation {index}: ")
        rows.append((conv.content_hash(), messages.decode(), tags.decode(), conv.tools))
    return rows


# The columns an import binds, in the table's order (as the compiled INSERT lists them).
_IMPORT_COLUMNS = ("content_hash", "messages", "tools", "tags", "source", "status", "author_id", "guild_id",
                   "import_batch", "community")


def _known_digests(dialect: Dialect, size: int, community: str | None) -> tuple[str, int, bool]:
    """(SELECT of which of ``size`` content hashes ``community`` stores, and whether each is hidden, as the driver
    takes it; ``size``; whether the community is its first parameter, else its last: dialects order them
    differently).

    Made once per import, not per batch: SQLAlchemy would build each batch's IN list of thousands of parameters
    anew, one by one.
    """
    query = select(Example.content_hash, not_(_VISIBLE)).where(Example.content_hash.in_([""] * size),
                                                                 Example.community == bindparam("community", ""))
    compiled = query.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    order = list(compiled.positiontup or ())
    if "community" not in (order[:1] + order[-1:]):
        raise RuntimeError(f"the import's lookup binds {order}: the community neither first nor last")
    return compiled.string, size, order[0] == "community"


def _import_insert(dialect: Dialect, approved: bool, table: Any = Example,
                   columns: tuple[str, ...] = _IMPORT_COLUMNS) -> str:
    """An import's INSERT into ``table`` as the driver takes it, parameters in ``columns``' order (the table's
    order, as the compiled INSERT lists them).

    The timestamps are the database's clock, read once per statement: binding three datetimes per row costs
    more than anything else in a big import. ``approved``: approved_at is stamped too.
    """
    now = func.now()
    stamps = {"created_at": now, "updated_at": now, **({"approved_at": now} if approved else {})}
    compiled = (insert(table).inline()
                .values(**{c: bindparam(c) for c in columns}, **stamps).compile(dialect=dialect))
    if tuple(compiled.positiontup or ()) != columns:
        raise RuntimeError(f"the import's INSERT binds {compiled.positiontup}, not {columns}")
    return compiled.string


def _check_text(text: Any, what: str) -> None:
    if not isinstance(text, str):
        return  # not text at all: Conversation.validate says so
    if "\x00" in text:
        raise UnstorableText(f"{what} contains a NUL character, which cannot be stored; remove it")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise UnstorableText(f"{what} contains an unpaired surrogate (broken Unicode), which cannot be stored; "
                                 "fix the text's encoding") from None


def _storable(text: str) -> str:
    """``text`` with what no database stores (NUL: PostgreSQL's text refuses it; unpaired surrogates: no UTF-8)
    replaced by U+FFFD, for text that must be kept rather than refused (a model's answer)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # one U+FFFD per lone surrogate; a pair written as two halves is joined
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _db_reason(exc: StatementError) -> str:
    """The database's own words, without SQLAlchemy's statement dump (which repeats the rows)."""
    return str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0][:300]


async def _move_status(s: AsyncSession, example_id: int, status: str, *, frm: Sequence[str], **values: Any) -> bool:
    """Set an example's status if (and only if) it is in one of ``frm`` when the UPDATE runs."""
    now = utcnow()
    values.update(status=status, updated_at=now)
    if status == "approved":
        values["approved_at"] = now
    # An UPDATE's result is a CursorResult (it has rowcount); SQLAlchemy types execute() as a plain Result.
    moved = typing.cast("CursorResult[Any]", await s.execute(
        update(Example).where(Example.id == example_id, Example.status.in_(frm))
        .values(**values).execution_options(synchronize_session=False)))
    return moved.rowcount == 1


async def _point_at(s: AsyncSession, row: ModelVersion, action: str, community: str) -> None:
    now = utcnow()
    pointer = await s.scalar(select(ActiveModel).where(ActiveModel.community == community))
    if pointer is None:
        s.add(ActiveModel(model_version_id=row.id, switched_at=now, community=community))
    else:
        await s.execute(update(ActiveModel).where(ActiveModel.community == community)
                        .values(model_version_id=row.id, switched_at=now))
    row.status = "promoted"
    row.promoted_at = now
    s.add(Promotion(model_version_id=row.id, action=action, created_at=now, community=community))
