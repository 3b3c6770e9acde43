"""Retrain runs in the store: proposals, expert votes, and the run's state machine; each function takes the Store
whose community's runs it reads and writes.

At most one run per community is open (proposed … evaluated) at a time. Two things guarantee it in the database itself,
whatever happens in the processes above: the unique ``slot`` column (1 while open, NULL once finished) and
conditional state changes (``UPDATE … WHERE state IN (…)``): of two racing approvals exactly one moves a
proposal to ``approved``; the other sees that it lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from data.errors import RunInProgress, RunStateError, StoreError
from data.models import RUN_STATES, RUN_TERMINAL, RetrainRun, RetrainVote, utcnow

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.engine import CursorResult

    from data.store import Store

# The working states, in order: a run only moves forward along them (or ends).
_CHAIN = ("proposed", "approved", "snapshotted", "training", "converting", "registering", "evaluating", "evaluated")
_ENDS_FROM = {
    "promoted": ("evaluating", "evaluated"),
    "rejected": ("proposed", "evaluating", "evaluated"),
    "expired": ("proposed",),
    "failed": _CHAIN[1:],
    "cancelled": _CHAIN,
}
VOTE_STAGES = {"proposal": "proposed", "promotion": "evaluated"}
_SETTABLE = {"summary", "channel_id", "message_id", "status_message_id", "reminded_at", "snapshot_sha256",
             "snapshot_path", "model_version_id", "dispatcher", "job_ref", "progress", "result", "guild_id"}


def allowed_from(state: str) -> tuple[str, ...]:
    """The states a run may be in to move to ``state``."""
    if state in _ENDS_FROM:
        return _ENDS_FROM[state]
    if state in _CHAIN:
        return _CHAIN[: _CHAIN.index(state)]
    raise ValueError(f"unknown run state {state!r}; one of {', '.join(RUN_STATES)}")


@dataclass(frozen=True)
class VoteOutcome:
    run: RetrainRun
    approvals: list[int]  # user ids, in vote order
    rejections: list[int]


async def propose_run(store: Store, *, summary: dict[str, Any], proposed_by: int | None = None,
                      guild_id: int | None = None, channel_id: int | None = None,
                      expires_at: datetime | None = None) -> RetrainRun:
    """Open a proposal; raises RunInProgress when a proposal or run is already open."""
    row = RetrainRun(state="proposed", slot=1, summary=summary, proposed_by=proposed_by, guild_id=guild_id,
                     channel_id=channel_id, expires_at=expires_at, progress={}, result={}, community=store.owner())
    async with store.session() as s:
        s.add(row)
        try:
            await s.commit()
        except IntegrityError:
            await s.rollback()
            existing = await s.scalar(_open(store))
            raise RunInProgress(existing) from None
    return row


def _open(store: Store) -> Select[RetrainRun]:
    return select(RetrainRun).where(RetrainRun.slot == 1, RetrainRun.community == store.community)


async def open_run(store: Store) -> RetrainRun | None:
    """This community's proposal or run holding its slot, if any."""
    async with store.session() as s:
        return await s.scalar(_open(store))


async def get_run(store: Store, run_id: int) -> RetrainRun:
    async with store.session() as s:
        return await store.get_or_404(s, RetrainRun, run_id)


async def list_runs(store: Store, limit: int = 10) -> list[RetrainRun]:
    """Newest first."""
    async with store.session() as s:
        return list(await s.scalars(select(RetrainRun).where(RetrainRun.community == store.community)
                                    .order_by(RetrainRun.id.desc()).limit(limit)))


async def runs_in(store: Store, states: tuple[str, ...]) -> list[RetrainRun]:
    async with store.session() as s:
        return list(await s.scalars(select(RetrainRun).where(RetrainRun.state.in_(states),
                                                             RetrainRun.community == store.community)
                                    .order_by(RetrainRun.id)))


async def queue_position(store: Store, run_id: int) -> int | None:
    """Where this community's dispatched run waits among every community's runs sent to the GPU workers and not
    started yet (1: next); None when it is not waiting. Counts only: nothing else of other communities.

    The queue is in approval order (``started_at``), which is the order runs are handed to the workers: a run
    proposed earlier but approved later waits behind."""
    async with store.session() as s:
        run = await store.get_or_404(s, RetrainRun, run_id)
        if run.state != "snapshotted":
            return None
        approved = run.started_at
        earlier = RetrainRun.id < run.id if approved is None else or_(
            RetrainRun.started_at < approved, and_(RetrainRun.started_at == approved, RetrainRun.id < run.id))
        ahead = await s.scalar(select(func.count()).select_from(RetrainRun).where(
            RetrainRun.state == "snapshotted", earlier))
    return (ahead or 0) + 1


async def transition(store: Store, run_id: int, state: str, *, expect: str | tuple[str, ...] | None = None,
                     reason: str | None = None, **fields: Any) -> RetrainRun:
    """Move a run to ``state`` if (and only if) it is in a state that may: one conditional UPDATE.

    Raises RunStateError when the run was not in such a state (another process moved it first, or the move is not
    a legal one). Ending states release the slot.
    """
    sources = allowed_from(state)
    if expect is not None:
        wanted = (expect,) if isinstance(expect, str) else expect
        sources = tuple(s for s in sources if s in wanted)
    _check_fields(fields)
    values: dict[str, Any] = {"state": state, "updated_at": utcnow(), **fields}
    if reason is not None:
        values["reason"] = reason
    if state in RUN_TERMINAL:
        values.update(slot=None, finished_at=utcnow())
    if state == "approved":
        values["started_at"] = utcnow()
    async with store.session() as s, s.begin():
        # An UPDATE's result is a CursorResult (it has rowcount); SQLAlchemy types execute() as a plain Result.
        changed = cast("CursorResult[Any]", await s.execute(
            update(RetrainRun).where(RetrainRun.id == run_id, RetrainRun.community == store.community,
                                     RetrainRun.state.in_(sources)).values(**values)))
        row = await store.get_or_404(s, RetrainRun, run_id)
        if changed.rowcount != 1:
            raise RunStateError(f"run #{run_id} is {row.state}: it cannot become {state}")
    return row


async def set_run(store: Store, run_id: int, **fields: Any) -> RetrainRun:
    """Set bookkeeping fields (progress, message ids, job reference, result…) without a state change."""
    _check_fields(fields)
    async with store.session() as s, s.begin():
        await s.execute(update(RetrainRun).where(RetrainRun.id == run_id, RetrainRun.community == store.community)
                        .values(**fields, updated_at=utcnow()))
        return await store.get_or_404(s, RetrainRun, run_id)


async def vote_run(store: Store, run_id: int, user_id: int, *, approve: bool, stage: str = "proposal") -> VoteOutcome:
    """Record (or change) one expert's vote. Only counts votes; the caller decides what a quorum does."""
    if stage not in VOTE_STAGES:
        raise ValueError(f"unknown vote stage {stage!r}")
    async with store.session() as s, s.begin():
        run = await store.get_or_404(s, RetrainRun, run_id)
        if run.state != VOTE_STAGES[stage]:
            raise RunStateError(f"run #{run_id} is {run.state}: it is not waiting for this vote any more")
        await s.execute(delete(RetrainVote).where(RetrainVote.run_id == run_id, RetrainVote.user_id == user_id,
                                                  RetrainVote.stage == stage))
        s.add(RetrainVote(run_id=run_id, user_id=user_id, stage=stage, approve=approve))
    return await votes(store, run_id, stage)


async def votes(store: Store, run_id: int, stage: str = "proposal") -> VoteOutcome:
    async with store.session() as s:
        run = await store.get_or_404(s, RetrainRun, run_id)
        rows = list(await s.execute(select(RetrainVote.user_id, RetrainVote.approve)
                                    .where(RetrainVote.run_id == run_id, RetrainVote.stage == stage)
                                    .order_by(RetrainVote.id)))
    return VoteOutcome(run, [u for u, a in rows if a], [u for u, a in rows if not a])


async def proposals_due(store: Store, now: datetime, remind_before: timedelta) -> tuple[list[RetrainRun],
                                                                                        list[RetrainRun]]:
    """Open proposals that have expired, and those due a reminder (not reminded yet)."""
    async with store.session() as s:
        open_ = list(await s.scalars(select(RetrainRun).where(RetrainRun.state == "proposed",
                                                              RetrainRun.community == store.community,
                                                              RetrainRun.expires_at.is_not(None))))
    expired = [r for r in open_ if r.expires_at is not None and r.expires_at <= now]
    remind = [r for r in open_ if r not in expired and r.reminded_at is None
              and r.expires_at is not None and r.expires_at - remind_before <= now]
    return expired, remind


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - _SETTABLE
    if unknown:
        raise StoreError(f"cannot set {', '.join(sorted(unknown))} on a retrain run")
