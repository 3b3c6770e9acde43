"""The store's tables (SQLAlchemy 2 declarative). Portable across SQLite and PostgreSQL."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime, TypeDecorator

from data.community_names import COMMUNITY_MAX

SOURCES = ("teach", "correction", "chat-feedback", "import")
EXAMPLE_STATUSES = ("pending", "approved", "rejected", "superseded")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both SQLite (which drops tzinfo) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Example(Base):
    __tablename__ = "examples"
    # A conversation is stored once per community: another community may hold the same text (and never hears of it).
    __table_args__ = (UniqueConstraint("community", "content_hash", name="uq_examples_community_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    messages: Mapped[list[Any]] = mapped_column(JSON)
    tools: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    author_id: Mapped[int | None] = mapped_column(BigInteger)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    # The bot answer this example corrects (source "correction").
    answer_id: Mapped[int | None] = mapped_column(ForeignKey("answers.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # When the example was last approved: "new approved data since the active model" counts from this.
    approved_at: Mapped[datetime | None] = mapped_column(index=True)
    # The edited copy that replaced this example (status superseded). No foreign key: SQLite cannot add one to
    # an existing table without copying it, and examples are never deleted once visible.
    superseded_by: Mapped[int | None] = mapped_column(Integer)
    # The bulk import that wrote this row (NULL: added one by one). Hidden while that import is a PendingImport.
    import_batch: Mapped[str | None] = mapped_column(String(32))
    # The community that owns it (data/communities.py); NULL only for rows an upgrade has not assigned yet, which
    # no community sees.
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX), index=True)


class PendingImport(Base):
    """A bulk import still being written, in batches (each a short transaction, so SQLite's write lock is never
    held for long). Its examples (or preference records) stay invisible to every query until this row is deleted:
    one small statement publishes any number of rows at once, and a failed import's rows are deleted with it."""

    __tablename__ = "pending_imports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class Rating(Base):
    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("example_id", "rater_id", name="uq_rating_example_rater"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    example_id: Mapped[int] = mapped_column(ForeignKey("examples.id", ondelete="CASCADE"), index=True)
    rater_id: Mapped[int] = mapped_column(BigInteger)
    score: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Answer(Base):
    """One bot answer in Discord: what was asked, what it said, and which model said it."""

    __tablename__ = "answers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(Text)
    model_tag: Mapped[str] = mapped_column(String(200))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    # The approved examples retrieval put in front of the model for this answer (bot/retrieval.py), in order.
    pair_ids: Mapped[list[int] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # NULL: an answer given outside every community (an unconfigured server, a DM without dm_community), which
    # no community's experts see.
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX), index=True)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("answer_id", "user_id", name="uq_feedback_answer_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    answer_id: Mapped[int] = mapped_column(ForeignKey("answers.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[int] = mapped_column(Integer)  # +1 or -1
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SnapshotRecord(Base):
    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX))


# A model version's life: created → registered (the tag exists in Ollama) → evaluated (the gate ran) → promoted (it
# is or was the active model) | rejected (the gate refused it) | failed (see failure_reason); rolled_back: an
# operator rolled it back.
VersionStatus = Literal["created", "registered", "evaluated", "promoted", "rejected", "failed", "rolled_back"]
VERSION_STATUSES: tuple[VersionStatus, ...] = typing.get_args(VersionStatus)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_version_name_n"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    tag: Mapped[str] = mapped_column(String(200), unique=True)
    base_model: Mapped[str] = mapped_column(Text)
    ollama_base: Mapped[str] = mapped_column(String(200))
    snapshot_sha256: Mapped[str | None] = mapped_column(String(64))
    snapshot_path: Mapped[str | None] = mapped_column(Text)
    hyperparams: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # One of VERSION_STATUSES (the store refuses any other).
    status: Mapped[str] = mapped_column(String(20), default="created")
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # Whether the tag currently exists in Ollama (retention deletes it there and clears this).
    in_ollama: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX), index=True)


class ActiveModel(Base):
    """The pointer to the model a community's chats are answered with (one row per community; none: the base)."""

    __tablename__ = "active_model"
    __table_args__ = (UniqueConstraint("community", name="uq_active_model_community"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    switched_at: Mapped[datetime] = mapped_column(default=utcnow)
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX))


class Promotion(Base):
    """History of the active pointer: every promote and rollback."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback | base (rolled back to the base model)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX), index=True)


# A retrain's life. Non-terminal states hold the single run slot (see RetrainRun.slot).
RUN_STATES = ("proposed", "approved", "snapshotted", "training", "converting", "registering", "evaluating",
              "evaluated", "promoted", "rejected", "failed", "cancelled", "expired")
RUN_TERMINAL = ("promoted", "rejected", "failed", "cancelled", "expired")
# States in which a job exists on a dispatcher (what a restarted bot must reattach or fail).
RUN_DISPATCHED = ("snapshotted", "training", "converting", "registering", "evaluating")


class RetrainRun(Base):
    """One retrain, from proposal to promotion (or the reason it stopped).

    ``slot`` is 1 while the run is not finished and NULL after: its unique constraint (per community) is the
    database-level guarantee that at most one proposal or run per community is open at a time, whatever races
    happen above it.
    """

    __tablename__ = "retrain_runs"
    __table_args__ = (UniqueConstraint("community", "slot", name="uq_retrain_runs_community_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    slot: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)  # why it was rejected, failed, cancelled or expired
    proposed_by: Mapped[int | None] = mapped_column(BigInteger)  # None: the scheduler
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the numbers shown to the experts
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(BigInteger)  # the proposal message
    status_message_id: Mapped[int | None] = mapped_column(BigInteger)  # the live progress message
    expires_at: Mapped[datetime | None] = mapped_column()
    reminded_at: Mapped[datetime | None] = mapped_column()
    snapshot_sha256: Mapped[str | None] = mapped_column(String(64))
    snapshot_path: Mapped[str | None] = mapped_column(Text)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    dispatcher: Mapped[str | None] = mapped_column(String(16))
    job_ref: Mapped[str | None] = mapped_column(String(200))  # celery task id, or the local job's directory
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX), index=True)


class RetrainVote(Base):
    """An expert's vote on a run: approve/reject the proposal, promote/discard an evaluated candidate."""

    __tablename__ = "retrain_votes"
    __table_args__ = (UniqueConstraint("run_id", "user_id", "stage", name="uq_retrain_vote"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("retrain_runs.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    stage: Mapped[str] = mapped_column(String(16))  # proposal | promotion
    approve: Mapped[bool] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- quality (data/quality.py): experts' blind comparisons, regression alerts --------------------------


class Comparison(Base):
    """A blind side-by-side of a candidate and the model answering now, on questions from its gate table.

    ``items`` hold, per question, the two answers as "a" and "b" and which of them is the candidate's: drawn at
    random per question when the comparison is made, and only ever shown to an expert after their vote."""

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("retrain_runs.id", ondelete="SET NULL"), index=True)
    candidate_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    candidate_tag: Mapped[str] = mapped_column(String(200))
    opponent_tag: Mapped[str] = mapped_column(String(200))
    items: Mapped[list[Any]] = mapped_column(JSON)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX))


class ComparisonVote(Base):
    """One expert's verdict on one question of a comparison: "a", "b" or "tie"."""

    __tablename__ = "comparison_votes"
    __table_args__ = (UniqueConstraint("comparison_id", "item", "user_id", name="uq_comparison_vote"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), index=True)
    item: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(BigInteger)
    choice: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class QualityAlert(Base):
    """A regression alarm that was raised: one per version, so experts are told once."""

    __tablename__ = "quality_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"),
                                                  unique=True)
    compared_with: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---- preferences (data/preferences.py): a chosen and a rejected answer to the same conversation -------------

# suggestion: an expert's "Suggest a better answer"; thumbs-down: a 👎 on the answer, then the same user's
# correction; import: a preference file (LLaMA-Factory ranking, TRL/OpenAI preference shape).
PREFERENCE_SOURCES = ("suggestion", "thumbs-down", "import")
PREFERENCE_STATUSES = ("pending", "approved", "rejected")


class PreferenceRecord(Base):
    """For this conversation prefix, ``chosen`` is the better answer and ``rejected`` the worse one.

    ``prompt`` holds the prefix as the store keeps messages (system?, user, … ending with a user turn); the two
    answers are assistant messages as dicts (content, reasoning). Reviewed like examples: experts rate the chosen
    answer (PreferenceRating), or it is approved with the correction it came from."""

    __tablename__ = "preference_records"
    __table_args__ = (UniqueConstraint("community", "content_hash", name="uq_preference_records_community_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[list[Any]] = mapped_column(JSON)
    chosen: Mapped[dict[str, Any]] = mapped_column(JSON)
    rejected: Mapped[dict[str, Any]] = mapped_column(JSON)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    tools: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    # The model that produced the rejected answer (the bot's tag), when known.
    rejected_model: Mapped[str | None] = mapped_column(String(200))
    rejected_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    answer_id: Mapped[int | None] = mapped_column(ForeignKey("answers.id", ondelete="SET NULL"))
    # The approved correction (an Example) that is the chosen side; one preference per correction.
    example_id: Mapped[int | None] = mapped_column(ForeignKey("examples.id", ondelete="SET NULL"), unique=True)
    author_id: Mapped[int | None] = mapped_column(BigInteger)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column()
    # The preference import that wrote this row (NULL: made one by one). Hidden while that import is a PendingImport.
    import_batch: Mapped[str | None] = mapped_column(String(32))
    community: Mapped[str | None] = mapped_column(String(COMMUNITY_MAX), index=True)


class PreferenceRating(Base):
    """An expert's 1–5 rating of a preference record's chosen answer (the same rule as for examples)."""

    __tablename__ = "preference_ratings"
    __table_args__ = (UniqueConstraint("preference_id", "rater_id", name="uq_preference_rating"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    preference_id: Mapped[int] = mapped_column(ForeignKey("preference_records.id", ondelete="CASCADE"), index=True)
    rater_id: Mapped[int] = mapped_column(BigInteger)
    score: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# Retrieval's stored embeddings (data/vectors.py): little-endian float32 bytes, one row per example and model.
example_vectors = Table(
    "example_vectors",
    Base.metadata,
    Column("example_id", Integer, ForeignKey("examples.id", ondelete="CASCADE"), nullable=False),
    Column("model", String(200), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(timezone=True), nullable=False, default=utcnow),
    PrimaryKeyConstraint("example_id", "model"),
)
