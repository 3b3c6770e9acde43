"""The store: one async object over SQLAlchemy 2 for everything loraloop remembers.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) works with the same code.
Objects returned are detached ORM rows: read them, don't mutate them — change things through methods.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Text, event, func, insert, select, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from data.conversation import Conversation
from data.models import (
    EXAMPLE_STATUSES,
    SOURCES,
    ActiveModel,
    Answer,
    Example,
    Feedback,
    ModelVersion,
    Promotion,
    Rating,
    SnapshotRecord,
    utcnow,
)
from data.review import ReviewPolicy, agreement, disagreement
from data.runs import RunsMixin

# Statuses a version can be rolled back to (it served well and was not rolled back itself).
_GOOD_FOR_ROLLBACK = ("promoted",)
_HASH_CHUNK = 5000


class StoreError(Exception):
    """A request the store refuses; ``str(exc)`` is a message fit to show the user."""


class NotFound(StoreError):
    pass


class DuplicateExample(StoreError):
    def __init__(self, existing_id: int) -> None:
        super().__init__(f"this pair is already in the dataset (example #{existing_id})")
        self.existing_id = existing_id


class SelfRating(StoreError):
    def __init__(self) -> None:
        super().__init__("you cannot rate your own example")


class InvalidRating(StoreError):
    pass


class NoRollbackTarget(StoreError):
    pass


class RunInProgress(StoreError):
    """A retrain proposal or run is already open (at most one at a time)."""

    def __init__(self, run: Any) -> None:
        what = f"#{run.id} ({run.state})" if run is not None else "another one"
        super().__init__(f"a retrain is already open: {what}; wait for it to finish or cancel it")
        self.run = run


class RunStateError(StoreError):
    """A retrain run is not in a state that allows the requested change."""


@dataclass(frozen=True)
class RatingOutcome:
    example: Example
    scores: list[int]
    mean: float
    disagreement: float
    decided: str | None  # the status this rating decided ('approved'/'rejected'), if it decided one


@dataclass(frozen=True)
class ImportOutcome:
    imported: int
    # Indices (into the given sequence) of conversations already in the store or earlier in the same batch.
    duplicates: list[int] = field(default_factory=list)


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

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Store(RunsMixin):
    """All persistent state. Create with an async SQLAlchemy URL, then ``await migrate()``."""

    def __init__(
        self,
        url: str,
        *,
        policy: ReviewPolicy | None = None,
        connect_args: dict[str, Any] | None = None,
        echo: bool = False,
    ) -> None:
        self.url = url
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

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from data.migrations import upgrade

        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def session(self) -> AsyncSession:
        return self._sessions()

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
    ) -> Example:
        """Add one validated example; raises DuplicateExample if its normalised content is already stored."""
        _check_choice("source", source, SOURCES)
        _check_choice("status", status, EXAMPLE_STATUSES)
        conversation.validate(max_chars)
        digest = conversation.content_hash()
        async with self.session() as s:
            existing = await s.scalar(select(Example.id).where(Example.content_hash == digest))
            if existing is not None:
                raise DuplicateExample(existing)
            example = Example(**_example_row(conversation, digest, source, author_id, guild_id, status),
                              answer_id=answer_id, approved_at=utcnow() if status == "approved" else None)
            s.add(example)
            try:
                await s.commit()
            except IntegrityError:  # a concurrent insert of the same content won the race
                await s.rollback()
                existing = await s.scalar(select(Example.id).where(Example.content_hash == digest))
                raise DuplicateExample(existing or 0) from None
            return example

    async def import_conversations(
        self,
        conversations: Sequence[Conversation],
        *,
        source: str = "import",
        author_id: int | None = None,
        guild_id: int | None = None,
        approve: bool = False,
    ) -> ImportOutcome:
        """Insert many (already validated) conversations in one transaction; duplicates are skipped and listed."""
        _check_choice("source", source, SOURCES)
        status = "approved" if approve else "pending"
        digests = [c.content_hash() for c in conversations]
        async with self.session() as s, s.begin():
            known: set[str] = set()
            unique = list(dict.fromkeys(digests))
            for i in range(0, len(unique), _HASH_CHUNK):
                chunk = unique[i : i + _HASH_CHUNK]
                known.update(await s.scalars(select(Example.content_hash).where(Example.content_hash.in_(chunk))))
            rows, duplicates = [], []
            for index, (conv, digest) in enumerate(zip(conversations, digests, strict=True)):
                if digest in known:
                    duplicates.append(index)
                    continue
                known.add(digest)
                rows.append(_example_row(conv, digest, source, author_id, guild_id, status))
            if rows:
                # Core executemany, timestamps stamped by the database once per statement: binding three
                # datetimes per row costs more than everything else in a 100k-row import.
                now = func.now()
                stmt = insert(Example.__table__).values(created_at=now, updated_at=now,
                                                        approved_at=now if approve else None)
                await s.execute(stmt, rows)
        return ImportOutcome(imported=len(rows), duplicates=duplicates)

    async def get_example(self, example_id: int) -> Example:
        async with self.session() as s:
            example = await s.get(Example, example_id)
            if example is None:
                raise NotFound(f"there is no example #{example_id}")
            return example

    async def list_examples(self, *, status: str | None = None, limit: int | None = None) -> list[Example]:
        query = select(Example).order_by(Example.id)
        if status is not None:
            query = query.where(Example.status == status)
        if limit is not None:
            query = query.limit(limit)
        async with self.session() as s:
            return list(await s.scalars(query))

    async def count_submissions(self, author_id: int, since: datetime) -> int:
        """How many examples ``author_id`` submitted since ``since`` (the per-user rate limit counts these)."""
        async with self.session() as s:
            return await s.scalar(select(func.count(Example.id)).where(
                Example.author_id == author_id, Example.created_at >= since)) or 0

    async def next_for_review(self, reviewer_id: int, guild_id: int | None = None) -> Example | None:
        """The oldest pending example the reviewer neither wrote nor rated yet."""
        rated = select(Rating.example_id).where(Rating.rater_id == reviewer_id)
        query = (
            select(Example)
            .where(Example.status == "pending", Example.id.not_in(rated))
            .where((Example.author_id.is_(None)) | (Example.author_id != reviewer_id))
            .order_by(Example.id)
            .limit(1)
        )
        if guild_id is not None:
            query = query.where((Example.guild_id == guild_id) | Example.guild_id.is_(None))
        async with self.session() as s:
            return await s.scalar(query)

    async def set_example_status(self, example_id: int, status: str) -> Example:
        """A moderator's direct decision (approve/reject), overriding the rating rule."""
        _check_choice("status", status, EXAMPLE_STATUSES)
        async with self.session() as s, s.begin():
            example = await _get_or_404(s, example_id)
            _set_status(example, status)
        return example

    async def edit_example(self, example_id: int, conversation: Conversation, *, editor_id: int,
                           max_chars: int | None = None) -> Example:
        """Replace an example by an edited copy: the copy enters review (pending), the original is superseded."""
        conversation.validate(max_chars)
        digest = conversation.content_hash()
        async with self.session() as s, s.begin():
            original = await _get_or_404(s, example_id)
            existing = await s.scalar(select(Example.id).where(Example.content_hash == digest))
            if existing is not None:
                raise DuplicateExample(existing)
            copy = Example(**_example_row(conversation, digest, original.source, editor_id, original.guild_id,
                                          "pending"), answer_id=original.answer_id)
            s.add(copy)
            _set_status(original, "superseded")
        return copy

    # ---- ratings -------------------------------------------------------------------------------------

    async def rate(self, example_id: int, rater_id: int, score: int, comment: str | None = None) -> RatingOutcome:
        """Record (or change) one expert's 1–5 rating; applies the review policy."""
        if not isinstance(score, int) or not 1 <= score <= 5:
            raise InvalidRating(f"a rating is a whole number from 1 to 5, not {score!r}")
        async with self.session() as s, s.begin():
            example = await _get_or_404(s, example_id)
            if example.author_id is not None and example.author_id == rater_id:
                raise SelfRating()
            if example.status == "superseded":
                raise InvalidRating(f"example #{example_id} was replaced by an edited version; rate that one")
            rating = await s.scalar(
                select(Rating).where(Rating.example_id == example_id, Rating.rater_id == rater_id)
            )
            if rating is None:
                s.add(Rating(example_id=example_id, rater_id=rater_id, score=score, comment=comment))
            else:
                rating.score, rating.comment, rating.updated_at = score, comment, utcnow()
            await s.flush()
            scores = list(await s.scalars(select(Rating.score).where(Rating.example_id == example_id)))
            decided = self.policy.decide(scores)
            if decided is not None and example.status in ("pending", "approved", "rejected") \
                    and decided != example.status:
                _set_status(example, decided)
            else:
                decided = None
        return RatingOutcome(example, scores, statistics.fmean(scores), disagreement(scores), decided)

    async def ratings_for(self, example_id: int) -> list[Rating]:
        async with self.session() as s:
            return list(await s.scalars(select(Rating).where(Rating.example_id == example_id).order_by(Rating.id)))

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
    ) -> Answer:
        row = Answer(prompt=prompt, answer=answer, model_tag=model_tag, model_version_id=model_version_id,
                     guild_id=guild_id, channel_id=channel_id, message_id=message_id, user_id=user_id)
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def get_answer(self, answer_id: int) -> Answer:
        async with self.session() as s:
            answer = await s.get(Answer, answer_id)
            if answer is None:
                raise NotFound(f"there is no answer #{answer_id}")
            return answer

    async def add_feedback(self, answer_id: int, user_id: int, value: int) -> Feedback:
        """👍 (+1) or 👎 (-1); one per user and answer, a second click changes it."""
        if value not in (1, -1):
            raise StoreError("feedback is +1 or -1")
        async with self.session() as s, s.begin():
            if await s.get(Answer, answer_id) is None:
                raise NotFound(f"there is no answer #{answer_id}")
            row = await s.scalar(select(Feedback).where(Feedback.answer_id == answer_id, Feedback.user_id == user_id))
            if row is None:
                row = Feedback(answer_id=answer_id, user_id=user_id, value=value)
                s.add(row)
            else:
                row.value, row.updated_at = value, utcnow()
        return row

    async def feedback_counts(self, answer_id: int) -> tuple[int, int]:
        async with self.session() as s:
            values = list(await s.scalars(select(Feedback.value).where(Feedback.answer_id == answer_id)))
        return values.count(1), values.count(-1)

    # ---- statistics ------------------------------------------------------------------------------------

    async def dataset_stats(self) -> DatasetStats:
        async with self.session() as s:
            by_status = dict((await s.execute(select(Example.status, func.count()).group_by(Example.status))).all())
            by_source = dict((await s.execute(select(Example.source, func.count()).group_by(Example.source))).all())
            approved_by_source = dict((await s.execute(
                select(Example.source, func.count()).where(Example.status == "approved").group_by(Example.source)
            )).all())
            per_example: dict[int, list[int]] = {}
            for example_id, score in (await s.execute(select(Rating.example_id, Rating.score))).all():
                per_example.setdefault(example_id, []).append(score)
            since = await self._active_since(s)
            new_query = select(func.count()).select_from(Example).where(Example.status == "approved")
            if since is not None:
                new_query = new_query.where(Example.approved_at > since)
            new_approved = await s.scalar(new_query) or 0
            feedback = Counter(await s.scalars(select(Feedback.value)))
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
        )

    async def _active_since(self, s: AsyncSession) -> datetime | None:
        """When the active model's training data was frozen (its snapshot), or None without one."""
        active = await self._active(s)
        if active is None or active.snapshot_sha256 is None:
            return None
        return await s.scalar(
            select(func.min(SnapshotRecord.created_at)).where(SnapshotRecord.sha256 == active.snapshot_sha256)
        ) or active.created_at

    async def approved_examples(self) -> list[Any]:
        """The training set as light rows (content_hash, messages, tags, source, tools), sorted by hash."""
        query = (select(Example.content_hash, Example.messages, Example.tags, Example.source, Example.tools)
                 .where(Example.status == "approved").order_by(Example.content_hash))
        async with self.session() as s:
            return list(await s.execute(query))

    async def approved_examples_raw(self) -> list[Any]:
        """Like ``approved_examples`` but ``messages`` and ``tags`` stay the JSON text the store holds
        (snapshots embed it as is: decoding and re-encoding 100k rows dominated snapshot time)."""
        query = (select(type_coerce(Example.messages, Text).label("messages"),
                        type_coerce(Example.tags, Text).label("tags"),
                        Example.content_hash, Example.source, Example.tools)
                 .where(Example.status == "approved").order_by(Example.content_hash))
        async with self.session() as s:
            return list(await s.execute(query))

    async def record_snapshot(self, sha256: str, path: str, counts: dict[str, Any]) -> SnapshotRecord:
        row = SnapshotRecord(sha256=sha256, path=path, counts=counts)
        async with self.session() as s, s.begin():
            s.add(row)
        return row

    async def create_snapshot(self, out_dir: Path, eval_fraction: float = 0.1) -> Any:
        """Freeze the approved examples into ``out_dir`` (see data.snapshot); returns the manifest."""
        import asyncio

        from data.snapshot import write_snapshot

        examples = await self.approved_examples_raw()
        manifest = await asyncio.to_thread(write_snapshot, examples, Path(out_dir), eval_fraction)
        await self.record_snapshot(manifest["sha256"], manifest["path"], manifest["counts"])
        return manifest

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
        """A new version with the next number N for ``name``; its Ollama tag is ``loraloop-<name>:v<N>``."""
        for _attempt in range(5):
            async with self.session() as s:
                n = (await s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0) + 1
                row = ModelVersion(
                    name=name, version=n, tag=f"loraloop-{name}:v{n}", base_model=base_model,
                    ollama_base=ollama_base, snapshot_sha256=snapshot_sha256, snapshot_path=snapshot_path,
                    hyperparams=hyperparams or {}, artifacts=artifacts or {}, metrics={}, evaluation={},
                    status="created",
                )
                s.add(row)
                try:
                    await s.commit()
                    return row
                except IntegrityError:  # another process took N at the same moment
                    await s.rollback()
        raise StoreError(f"could not allocate a version number for {name!r}")

    async def update_model_version(self, version: int | str, **fields: Any) -> ModelVersion:
        """Set fields (status, metrics, evaluation, artifacts, in_ollama, failure_reason, …) on one version."""
        allowed = {"status", "metrics", "evaluation", "artifacts", "in_ollama", "failure_reason", "hyperparams",
                   "snapshot_sha256", "snapshot_path"}
        unknown = set(fields) - allowed
        if unknown:
            raise StoreError(f"cannot set {', '.join(sorted(unknown))} on a model version")
        async with self.session() as s, s.begin():
            row = await _version_or_404(s, version)
            for key, value in fields.items():
                setattr(row, key, value)
        return row

    async def mark_failed(self, version: int | str, reason: str) -> ModelVersion:
        return await self.update_model_version(version, status="failed", failure_reason=reason)

    async def get_model_version(self, version: int | str) -> ModelVersion:
        async with self.session() as s:
            return await _version_or_404(s, version)

    async def list_model_versions(self) -> list[ModelVersion]:
        """Newest first."""
        async with self.session() as s:
            return list(await s.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))

    async def active_model_version(self) -> ModelVersion | None:
        async with self.session() as s:
            return await self._active(s)

    async def _active(self, s: AsyncSession) -> ModelVersion | None:
        pointer = await s.get(ActiveModel, 1)
        if pointer is None or pointer.model_version_id is None:
            return None
        return await s.get(ModelVersion, pointer.model_version_id)

    async def promote(self, version: int | str) -> ModelVersion:
        """Make ``version`` the one the bot answers with: one transaction moves the single pointer."""
        async with self.session() as s, s.begin():
            row = await _version_or_404(s, version)
            if row.status in ("failed", "rejected") or not row.in_ollama:
                why = row.failure_reason or row.status if row.in_ollama else "it is not registered in Ollama"
                raise StoreError(f"{row.tag} cannot be promoted: {why}")
            await _point_at(s, row, "promote")
        return row

    async def rollback_target(self) -> ModelVersion | None:
        async with self.session() as s:
            return await self._rollback_target(s)

    async def _rollback_target(self, s: AsyncSession) -> ModelVersion | None:
        active = await self._active(s)
        history = await s.scalars(select(Promotion.model_version_id).order_by(Promotion.id.desc()))
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
            await _point_at(s, target, "rollback")
        return target

    async def retention_candidates(self, keep: int) -> list[ModelVersion]:
        """Versions whose Ollama tags may be deleted: beyond the newest ``keep`` still in Ollama,
        never the active one nor the rollback target."""
        async with self.session() as s:
            active = await self._active(s)
            target = await self._rollback_target(s)
            protected = {v.id for v in (active, target) if v is not None}
            in_ollama = list(await s.scalars(
                select(ModelVersion).where(ModelVersion.in_ollama.is_(True)).order_by(ModelVersion.version.desc())
            ))
        return [v for v in in_ollama[keep:] if v.id not in protected]


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


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


def _set_status(example: Example, status: str) -> None:
    example.status = status
    example.updated_at = utcnow()
    if status == "approved":
        example.approved_at = utcnow()


async def _get_or_404(s: AsyncSession, example_id: int) -> Example:
    example = await s.get(Example, example_id)
    if example is None:
        raise NotFound(f"there is no example #{example_id}")
    return example


async def _version_or_404(s: AsyncSession, version: int | str) -> ModelVersion:
    column = ModelVersion.tag if isinstance(version, str) else ModelVersion.id
    row = await s.scalar(select(ModelVersion).where(column == version))
    if row is None:
        raise NotFound(f"there is no model version {version!r}")
    return row


async def _point_at(s: AsyncSession, row: ModelVersion, action: str) -> None:
    now = utcnow()
    pointer = await s.get(ActiveModel, 1)
    if pointer is None:
        s.add(ActiveModel(id=1, model_version_id=row.id, switched_at=now))
    else:
        await s.execute(update(ActiveModel).where(ActiveModel.id == 1)
                        .values(model_version_id=row.id, switched_at=now))
    row.status = "promoted"
    row.promoted_at = now
    s.add(Promotion(model_version_id=row.id, action=action, created_at=now))
