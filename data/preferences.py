"""Preference records: for a conversation, the answer experts chose over the one they rejected.

Where they come from: an approved correction (the expert's answer is chosen, the bot's recorded answer rejected;
made by the store when the correction is approved, see ``record_correction``) and preference files (imported
pending review, or approved by an admin). They are reviewed by the same rule as pairs — a quorum of expert
ratings of the chosen answer, never by its author — and snapshots carry the approved ones for the DPO stage.

Functions take a Store; the session-level helper ``record_correction`` runs inside the store's own transactions
(the store imports it where it approves an example).
"""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import func, not_, select, update
from sqlalchemy.exc import IntegrityError, StatementError

from data.conversation import InvalidConversation, Message
from data.errors import ImportFailed, InvalidRating, SelfRating
from data.formats.preference import Preference
from data.models import (
    PREFERENCE_SOURCES,
    PREFERENCE_STATUSES,
    Answer,
    Example,
    Feedback,
    PreferenceRating,
    PreferenceRecord,
    utcnow,
)
from data.store import (
    IMPORT_BATCH_ROWS,
    Store,
    _check_choice,
    _check_storable,
    _db_reason,
    _import_insert,
    _json_text,
    _to_the_end,
    visible,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult
    from sqlalchemy.ext.asyncio import AsyncSession


# The records every query sees: not those of an import still being written.
_VISIBLE = visible(PreferenceRecord.import_batch)


@dataclass(frozen=True)
class PreferenceImport:
    imported: int
    duplicates: list[int] = field(default_factory=list)  # indices into the given sequence
    # Indices of records another import, still being written, holds (hidden): neither imported nor duplicates.
    in_flight: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PreferenceRatingOutcome:
    record: PreferenceRecord
    scores: list[int]
    mean: float
    decided: str | None


def preference_of(row: Any) -> Preference:
    """A stored record (or a row with prompt/chosen/rejected/tags) as a Preference."""
    return Preference.from_row(row.prompt, row.chosen, row.rejected, row.tags or (), row.tools)


# ---- made by the store: an approved correction ------------------------------------------------------------


async def record_correction(s: AsyncSession, example_id: int) -> PreferenceRecord | None:
    """Inside the store's transaction that approved ``example_id``: its preference record, if it is a correction.

    chosen = the correction's answer, rejected = the bot's recorded answer, prompt = what the bot was asked (the
    answer's prompt, as sent to the model). Approved at once: the experts' approval of the correction is the review
    of its chosen side. Nothing when the example is no correction, its answer is gone, the two answers are the same,
    or a record for it exists already (a second approval after a moderator's back-and-forth).
    """
    example = await s.get(Example, example_id)
    if example is None or example.source != "correction" or example.answer_id is None:
        return None
    answer = await s.get(Answer, example.answer_id)
    if answer is None or await s.scalar(select(PreferenceRecord.id)
                                        .where(PreferenceRecord.example_id == example_id)) is not None:
        return None
    chosen = example.messages[-1]
    prompt = [{"role": m["role"], "content": m["content"]} for m in answer.prompt
              if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
              and isinstance(m.get("content"), str)]
    pref = Preference.from_row(prompt, chosen, {"role": "assistant", "content": answer.answer}, example.tags or ())
    try:
        pref.validate()
    except InvalidConversation:
        # The recorded prompt is not a plain conversation (or the bot's answer was empty): fall back to the
        # correction's own question, which the expert saw and may have edited.
        pref = Preference(tuple(Message(m["role"], m["content"]) for m in example.messages[:-1]),
                          pref.chosen, pref.rejected, pref.tags)
        try:
            pref.validate()
        except InvalidConversation:
            return None
    digest = pref.content_hash()
    if await s.scalar(select(PreferenceRecord.id).where(PreferenceRecord.content_hash == digest,
                                                        PreferenceRecord.community == example.community)) is not None:
        return None
    thumbs_down = await s.scalar(select(Feedback.id).where(Feedback.answer_id == answer.id,
                                                            Feedback.user_id == example.author_id,
                                                            Feedback.value == -1))
    now = utcnow()
    record = PreferenceRecord(**pref.to_row(), content_hash=digest,
                              source="thumbs-down" if thumbs_down is not None else "suggestion",
                              status="approved", rejected_model=answer.model_tag,
                              rejected_version_id=answer.model_version_id, answer_id=answer.id, example_id=example_id,
                              author_id=example.author_id, guild_id=example.guild_id, approved_at=now,
                              community=example.community)
    s.add(record)
    await s.flush()
    return record


# ---- imports ------------------------------------------------------------------------------------------------


async def import_preferences(store: Store, prefs: Sequence[Preference], *, approve: bool = False,
                             author_id: int | None = None, guild_id: int | None = None,
                             batch_rows: int | None = None) -> PreferenceImport:
    """Insert validated preferences, all or nothing; duplicates are skipped and listed.

    Pending review unless ``approve`` (an admin's bulk import). Raises UnstorableText before writing anything.
    Written as a pair import is (Store.import_batch, Store.import_slices): in short transactions of
    ``batch_rows`` rows, so the bot's own writes go on meanwhile, hidden until the last one is in, deleted on any
    failure or cancellation.
    """
    batch_rows = batch_rows or IMPORT_BATCH_ROWS
    community = store.owner()
    # Off the event loop: checking, serialising and hashing a 100k-record file takes seconds.
    stored = await asyncio.to_thread(_storable_rows, prefs)
    status = "approved" if approve else "pending"
    sql = _import_insert(store.engine.dialect, approve, PreferenceRecord, _IMPORT_COLUMNS)
    seen: set[str] = set()  # stored already, or written by an earlier batch of this import
    duplicates: list[int] = []
    elsewhere: list[int] = []

    async def write(batch_id: str, start: int, stop: int) -> int:
        for attempt in (1, 2):
            try:
                async with store.session() as s, s.begin():
                    wanted = {row[0] for row in stored[start:stop]} - seen
                    found = (await s.execute(select(PreferenceRecord.content_hash, not_(_VISIBLE))
                                             .where(PreferenceRecord.content_hash.in_(wanted),
                                                    PreferenceRecord.community == community))).all()
                    known = {d for d, hidden in found if not hidden}
                    held = {d for d, hidden in found if hidden}  # a live concurrent import's: no duplicates (yet)
                    rows, dups, others, fresh = [], [], [], set()
                    for index in range(start, stop):
                        digest = stored[index][0]
                        if digest in held:
                            others.append(index)
                        elif digest in seen or digest in known or digest in fresh:
                            dups.append(index)
                        else:
                            fresh.add(digest)
                            rows.append((*stored[index], "import", status, author_id, guild_id, batch_id,
                                         community))
                    if rows:  # the driver's executemany, as for pairs (Store._write_batch)
                        await (await s.connection()).exec_driver_sql(sql, rows)
                break
            except IntegrityError:  # a concurrent writer stored one of them meanwhile: looked up once more
                if attempt == 2:
                    raise
        seen.update(known, fresh)
        duplicates.extend(dups)
        elsewhere.extend(others)
        return len(rows)

    imported = 0
    try:
        async with store.import_batch() as batch_id:
            async for start, stop in store.import_slices(len(prefs), batch_rows):
                imported += await _to_the_end(write(batch_id, start, stop))
    except StatementError as exc:
        raise ImportFailed(f"the database refused a record of this import ({_db_reason(exc)}); nothing was "
                           "imported") from exc
    return PreferenceImport(imported=imported, duplicates=duplicates, in_flight=elsewhere)


# The columns a preference import binds, in the table's order: a stored row's (_storable_rows), then source,
# status, author_id, guild_id, import_batch, community.
_IMPORT_COLUMNS = ("content_hash", "prompt", "chosen", "rejected", "tags", "tools", "source", "status", "author_id",
                   "guild_id", "import_batch", "community")


def _storable_rows(prefs: Sequence[Preference]) -> list[tuple[str, str, str, str, str, str | None]]:
    """Each preference as (content hash, prompt, chosen, rejected and tags as stored JSON text, tools);
    UnstorableText for the first one the database cannot store."""
    rows = []
    for i, pref in enumerate(prefs):
        _check_storable(pref.chosen_conversation(), f"preference {i}: ")
        _check_storable(pref.rejected_conversation(), f"preference {i} (rejected): ")
        row = pref.to_row()
        rows.append((pref.content_hash(), _json_text(row["prompt"]), _json_text(row["chosen"]),
                     _json_text(row["rejected"]), _json_text(row["tags"]), pref.tools))
    return rows


# ---- review -------------------------------------------------------------------------------------------------


async def get_preference(store: Store, preference_id: int) -> PreferenceRecord:
    async with store.session() as s:
        return await store.get_or_404(s, PreferenceRecord, preference_id)


async def list_preferences(store: Store, *, status: str | None = None,
                           limit: int | None = None) -> list[PreferenceRecord]:
    query = (select(PreferenceRecord).where(_VISIBLE, PreferenceRecord.community == store.community)
             .order_by(PreferenceRecord.id))
    if status is not None:
        query = query.where(PreferenceRecord.status == status)
    if limit is not None:
        query = query.limit(limit)
    async with store.session() as s:
        return list(await s.scalars(query))


async def next_preference_for_review(store: Store, reviewer_id: int) -> PreferenceRecord | None:
    """The community's oldest pending preference record the reviewer neither wrote nor rated yet (as
    ``next_for_review``)."""
    rated = select(PreferenceRating.preference_id).where(PreferenceRating.rater_id == reviewer_id)
    query = (select(PreferenceRecord)
             .where(PreferenceRecord.status == "pending", PreferenceRecord.community == store.community,
                    PreferenceRecord.id.not_in(rated), _VISIBLE)
             .where(PreferenceRecord.author_id.is_(None) | (PreferenceRecord.author_id != reviewer_id))
             .order_by(PreferenceRecord.id).limit(1))
    async with store.session() as s:
        return await s.scalar(query)


async def preference_scores(store: Store, preference_id: int) -> list[int]:
    """The experts' ratings of one record's chosen answer, oldest first."""
    await get_preference(store, preference_id)
    async with store.session() as s:
        return list(await s.scalars(select(PreferenceRating.score)
                                    .where(PreferenceRating.preference_id == preference_id)
                                    .order_by(PreferenceRating.id)))


async def set_preference_status(store: Store, preference_id: int, status: str) -> PreferenceRecord:
    """A moderator's direct decision (pending/approved/rejected), overriding the rating rule."""
    _check_choice("status", status, PREFERENCE_STATUSES)
    await get_preference(store, preference_id)
    now = utcnow()
    async with store.session() as s, s.begin():
        await s.execute(update(PreferenceRecord).where(PreferenceRecord.id == preference_id).values(
            status=status, updated_at=now, **({"approved_at": now} if status == "approved" else {})))
    return await get_preference(store, preference_id)


async def rate_preference(store: Store, preference_id: int, rater_id: int, score: int) -> PreferenceRatingOutcome:
    """One expert's 1–5 rating of the chosen answer (a second one by the same expert changes it); the store's
    review policy decides a pending record, exactly as for examples. Its author cannot rate it."""
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
        raise InvalidRating(f"a rating is a whole number from 1 to 5, not {score!r}")
    for attempt in (1, 2):
        try:
            async with store.session() as s, s.begin():
                # Locked (PostgreSQL) so concurrent raters each count the other's committed rating.
                record = await store.get_or_404(s, PreferenceRecord, preference_id, lock=True)
                if record.author_id is not None and record.author_id == rater_id:
                    raise SelfRating()
                rating = await s.scalar(select(PreferenceRating).where(PreferenceRating.preference_id == preference_id,
                                                                       PreferenceRating.rater_id == rater_id))
                if rating is None:
                    s.add(PreferenceRating(preference_id=preference_id, rater_id=rater_id, score=score))
                else:
                    rating.score = score
                await s.flush()
                scores = list(await s.scalars(select(PreferenceRating.score)
                                              .where(PreferenceRating.preference_id == preference_id)))
                decided = store.policy.decide(scores)
                if decided is not None:
                    now = utcnow()
                    # An UPDATE's result is a CursorResult (it has rowcount); execute() is typed as a plain Result.
                    moved = cast("CursorResult[Any]", await s.execute(
                        update(PreferenceRecord).where(PreferenceRecord.id == preference_id,
                                                       PreferenceRecord.status == "pending")
                        .values(status=decided, updated_at=now,
                                **({"approved_at": now} if decided == "approved" else {}))
                        .execution_options(synchronize_session=False)))
                    decided = decided if moved.rowcount == 1 else None
            break
        except IntegrityError:  # the same rater's concurrent first rating won: once more changes it
            if attempt == 2:
                raise
    record = await get_preference(store, preference_id)
    return PreferenceRatingOutcome(record, scores, statistics.fmean(scores), decided)


# ---- statistics, snapshots, exports -------------------------------------------------------------------------


async def preference_stats(store: Store) -> dict[str, Any]:
    """Counts by status and source, approved ones by source."""
    async with store.session() as s:
        rows = (await s.execute(select(PreferenceRecord.status, PreferenceRecord.source, func.count())
                                .where(_VISIBLE, PreferenceRecord.community == store.community)
                                .group_by(PreferenceRecord.status, PreferenceRecord.source))).all()
    by_status: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    approved: Counter[str] = Counter()
    for status, source, n in rows:
        by_status[status] += n
        by_source[source] += n
        if status == "approved":
            approved[source] += n
    return {"total": by_status.total(), "by_status": {k: by_status[k] for k in PREFERENCE_STATUSES},
            "by_source": {k: by_source[k] for k in PREFERENCE_SOURCES},
            "approved_by_source": {k: approved[k] for k in PREFERENCE_SOURCES}}


async def approved_preferences(store: Store, *, in_order_added: bool = False) -> list[PreferenceRecord]:
    """The approved records sorted by content hash (a snapshot's order), or in the order they were stored."""
    async with store.session() as s:
        return list(await s.scalars(select(PreferenceRecord).where(PreferenceRecord.status == "approved", _VISIBLE,
                                                                   PreferenceRecord.community == store.community)
                                    .order_by(PreferenceRecord.id if in_order_added
                                              else PreferenceRecord.content_hash)))


async def export_preferences(store: Store, out: Path, format: str, *, split: str = "all",
                             eval_fraction: float = 0.1) -> int:
    """Write the approved preference records, in the order they were stored, to ``out``; ``split`` as for
    pairs."""
    from data.formats import preference as preference_format
    from data.snapshot import is_eval

    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be train, eval or all, not {split!r}")
    rows = await approved_preferences(store, in_order_added=True)
    prefs = [preference_of(r) for r in rows
             if split == "all" or is_eval(r.content_hash, eval_fraction) == (split == "eval")]
    return await asyncio.to_thread(preference_format.write_file, prefs, out, format)


def preference_summary(p: dict[str, Any]) -> str:
    """Preference records (chosen vs rejected answers, for the DPO stage): total, by status, approved by source."""
    if not p.get("total"):
        return "0"
    status = ", ".join(f"{k} {v}" for k, v in p["by_status"].items())
    sources = ", ".join(f"{k} {v}" for k, v in p["approved_by_source"].items() if v)
    return f"{p['total']} ({status})" + (f" · approved from {sources}" if sources else "")
