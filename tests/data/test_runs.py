"""Retrain runs in the store: one open at a time (database-enforced), legal state moves only, votes, expiry."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from data import runs
from data.models import utcnow
from data.runs import allowed_from
from data.store import RunInProgress, RunStateError, Store, StoreError


async def test_only_one_proposal_or_run_is_open(store):
    first = await runs.propose_run(store, summary={"new_examples": 3})
    with pytest.raises(RunInProgress, match=f"#{first.id} \\(proposed\\)"):
        await runs.propose_run(store, summary={})
    assert (await runs.open_run(store)).id == first.id
    await runs.transition(store, first.id, "rejected", reason="no")
    assert await runs.open_run(store) is None
    second = await runs.propose_run(store, summary={})  # the slot is free again
    assert second.id != first.id


async def test_the_state_machine_only_moves_forward(store):
    run = await runs.propose_run(store, summary={})
    with pytest.raises(RunStateError, match="is proposed: it cannot become training"):
        await runs.transition(store, run.id, "training", expect="approved")
    with pytest.raises(RunStateError, match="cannot become promoted"):
        await runs.transition(store, run.id, "promoted")
    approved = await runs.transition(store, run.id, "approved", expect="proposed")
    assert approved.started_at is not None and approved.slot == 1
    for state in ("snapshotted", "training", "converting", "registering", "evaluating"):
        assert (await runs.transition(store, run.id, state)).state == state
    with pytest.raises(RunStateError):
        await runs.transition(store, run.id, "training")  # never backwards
    with pytest.raises(RunStateError):
        await runs.transition(store, run.id, "expired")  # only proposals expire
    done = await runs.transition(store, run.id, "failed", reason="worker lost")
    assert (done.state, done.reason, done.slot) == ("failed", "worker lost", None)
    assert done.finished_at is not None
    with pytest.raises(RunStateError):
        await runs.transition(store, run.id, "cancelled")  # ended runs stay ended
    with pytest.raises(ValueError, match="unknown run state"):
        allowed_from("sleeping")
    with pytest.raises(StoreError, match="cannot set state"):
        await runs.set_run(store, run.id, state="training")


async def test_two_processes_approving_at_once_start_exactly_one_run(store):
    """Two stores = two connection pools, as two bot processes would have: the database picks one winner."""
    other = Store(store.url, connect_args=store.connect_args)
    try:
        for _ in range(5):
            run = await runs.propose_run(store, summary={})
            results = await asyncio.gather(
                runs.transition(store, run.id, "approved", expect="proposed"),
                runs.transition(other, run.id, "approved", expect="proposed"),
                return_exceptions=True)
            assert sorted(type(r).__name__ for r in results) == ["RetrainRun", "RunStateError"]
            await runs.transition(store, run.id, "cancelled")
    finally:
        await other.close()


async def test_votes_count_each_expert_once_and_may_change(store):
    run = await runs.propose_run(store, summary={})
    await runs.vote_run(store, run.id, 1, approve=True)
    await runs.vote_run(store, run.id, 1, approve=True)
    outcome = await runs.vote_run(store, run.id, 2, approve=False)
    assert (outcome.approvals, outcome.rejections) == ([1], [2])
    outcome = await runs.vote_run(store, run.id, 2, approve=True)
    assert outcome.approvals == [1, 2] and outcome.rejections == []
    await runs.transition(store, run.id, "approved", expect="proposed")
    with pytest.raises(RunStateError, match="not waiting for this vote"):
        await runs.vote_run(store, run.id, 3, approve=True)


async def test_expired_and_reminder_due_proposals(store):
    now = utcnow()
    run = await runs.propose_run(store, summary={}, expires_at=now + timedelta(hours=10))
    assert await runs.proposals_due(store, now, timedelta(hours=2)) == ([], [])
    expired, remind = await runs.proposals_due(store, now + timedelta(hours=9), timedelta(hours=2))
    assert expired == [] and [r.id for r in remind] == [run.id]
    await runs.set_run(store, run.id, reminded_at=now + timedelta(hours=9))
    assert await runs.proposals_due(store, now + timedelta(hours=9, minutes=1), timedelta(hours=2)) == ([], [])
    expired, _ = await runs.proposals_due(store, now + timedelta(hours=11), timedelta(hours=2))
    assert [r.id for r in expired] == [run.id]
