"""Experts reviewing at the same moment, as two bot processes (two stores = two connection pools) would.

Each race runs many trials on SQLite and on PostgreSQL; every trial must end in the one state a person would
expect, whichever transaction the database lets in first.
"""

from __future__ import annotations

import asyncio

import pytest

from data.conversation import Conversation
from data.store import Store, Superseded

AUTHOR, ALICE, BOB, CAROL = 1, 2, 3, 4
TRIALS = 40


@pytest.fixture
async def other(store):
    """A second store on the same database: its own connection pool, like a second process."""
    second = Store(store.url, policy=store.policy, connect_args=store.connect_args)
    try:
        yield second
    finally:
        await second.close()


async def test_two_experts_rating_at_once_decide_the_pair(store, other):
    """Quorum 2: two 5s given at the same moment approve the pair in every trial (PostgreSQL's READ COMMITTED
    used to let each rating count only itself, leaving the pair pending for ever)."""
    decided = 0
    for trial in range(TRIALS):
        example = await store.add_example(Conversation.qa(f"race {trial}", "answer"), source="teach",
                                          author_id=AUTHOR)
        outcomes = await asyncio.gather(store.rate(example.id, ALICE, 5), other.rate(example.id, BOB, 5))
        final = await store.get_example(example.id)
        if final.status == "approved":
            decided += 1
            # Exactly one of the two ratings made the decision, and it saw both scores.
            deciding = [o for o in outcomes if o.decided]
            assert [o.decided for o in deciding] == ["approved"] and deciding[0].scores == [5, 5]
    print(f"\n[{store.engine.dialect.name}] decided {decided} of {TRIALS}")
    assert decided == TRIALS


async def test_a_rating_racing_an_edit_never_resurrects_the_original(store, other):
    """ALICE rated 5; BOB's deciding 5 races CAROL's edit: the original ends superseded every time (never
    approved again after the edit), the edited copy is pending, and a refused rating says why."""
    for trial in range(TRIALS):
        example = await store.add_example(Conversation.qa(f"edit race {trial}", "old"), source="teach",
                                          author_id=AUTHOR)
        await store.rate(example.id, ALICE, 5)
        rated, copy = await asyncio.gather(
            store.rate(example.id, BOB, 5),
            other.edit_example(example.id, Conversation.qa(f"edit race {trial}", "new"), editor_id=CAROL),
            return_exceptions=True)
        assert not isinstance(copy, BaseException), copy
        if isinstance(rated, BaseException):
            assert isinstance(rated, Superseded), rated
            assert f"superseded by an edit (#{copy.id})" in str(rated)
        original = await store.get_example(example.id)
        assert (original.status, original.superseded_by) == ("superseded", copy.id), f"trial {trial}"
        assert (await store.get_example(copy.id)).status == "pending"


async def test_two_edits_at_once_one_wins(store, other):
    for trial in range(10):
        example = await store.add_example(Conversation.qa(f"double edit {trial}", "old"), source="teach")
        results = await asyncio.gather(
            store.edit_example(example.id, Conversation.qa(f"double edit {trial}", "one"), editor_id=ALICE),
            other.edit_example(example.id, Conversation.qa(f"double edit {trial}", "two"), editor_id=BOB),
            return_exceptions=True)
        copies = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(copies) == 1 and [type(r) for r in refused] == [Superseded], results
        assert (await store.get_example(example.id)).superseded_by == copies[0].id
        # The losing edit left nothing behind: one original, one copy.
        assert len(await store.list_examples()) == 2 * (trial + 1)


async def test_a_double_clicked_rating_never_raises(store, other):
    """The same expert's rating arriving twice at once (a double click, two processes): one rating is stored,
    and exactly one of the two calls reports that it changed an earlier rating."""
    for trial in range(TRIALS):
        example = await store.add_example(Conversation.qa(f"double click {trial}", "answer"), source="teach",
                                          author_id=AUTHOR)
        outcomes = await asyncio.gather(store.rate(example.id, ALICE, 4), other.rate(example.id, ALICE, 4),
                                        return_exceptions=True)
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        assert sorted(o.changed for o in outcomes) == [False, True]
        assert [r.score for r in await store.ratings_for(example.id)] == [4]
