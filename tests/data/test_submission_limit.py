"""The per-user hourly limit holds under concurrency: the store decides it in the transaction that stores the pairs
(a per-user lock row), so racing /teach submissions and /imports of one person never store more than the limit,
and every stored record counts, a KTO file's undesirable (rejected) ones too.

Two stores on one database, as two bot processes would be, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from data import formats
from data.conversation import Conversation
from data.importer import import_bytes
from data.models import utcnow
from data.store import HourlyLimitReached, Store

AUTHOR, OTHER = 31, 32


@pytest.fixture
async def other(store):
    """A second store on the same database: its own connection pool, like a second process."""
    second = Store(store.url, policy=store.policy, connect_args=store.connect_args)
    try:
        yield second
    finally:
        await second.close()


def qa(q: str) -> Conversation:
    return Conversation.qa(q, "an answer")


async def test_twelve_concurrent_submissions_at_a_limit_of_five_store_exactly_five(store, other):
    results = await asyncio.gather(*(
        (store if i % 2 else other).add_example(qa(f"racing {i}"), source="teach", author_id=AUTHOR, hourly_limit=5)
        for i in range(12)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, HourlyLimitReached)]
    assert len(refused) == 7 and len(results) - len(refused) == 5, results
    assert "the limit is 5 per hour" in str(refused[0])
    stored = await store.list_examples()
    print(f"\n[{store.engine.dialect.name}] 12 concurrent submissions at a limit of 5: {len(stored)} stored")
    assert len(stored) == 5
    # Another person's limit is their own.
    await store.add_example(qa("someone else"), source="teach", author_id=OTHER, hourly_limit=5)


async def test_concurrent_imports_store_no_more_than_the_limit(store, other):
    files = [[qa(f"file {f} pair {i}") for i in range(150)] for f in range(4)]
    results = await asyncio.gather(*(
        (store if f % 2 else other).import_conversations(conversations, author_id=AUTHOR, hourly_limit=200,
                                                         batch_rows=50)
        for f, conversations in enumerate(files)), return_exceptions=True)
    done = [r for r in results if not isinstance(r, BaseException)]
    assert all(isinstance(r, HourlyLimitReached) for r in results if isinstance(r, BaseException)), results
    stored = len(await store.list_examples())
    print(f"\n[{store.engine.dialect.name}] 4 concurrent imports of 150 at a limit of 200: {stored} stored")
    assert stored == sum(r.imported for r in done) == 150
    # A refused import left nothing behind, hidden rows included.
    assert await store.count_submissions(AUTHOR, utcnow() - timedelta(hours=1)) == 150


async def test_an_import_and_teaching_race_for_the_last_places(store, other):
    await store.import_conversations([qa(f"earlier {i}") for i in range(3)], author_id=AUTHOR, hourly_limit=5)
    results = await asyncio.gather(
        other.import_conversations([qa("new 1"), qa("new 2")], author_id=AUTHOR, hourly_limit=5),
        *(store.add_example(qa(f"taught {i}"), source="teach", author_id=AUTHOR, hourly_limit=5) for i in range(2)),
        return_exceptions=True)
    assert all(isinstance(r, HourlyLimitReached) for r in results if isinstance(r, BaseException)), results
    assert len(await store.list_examples()) <= 5


async def test_a_kto_files_undesirable_records_count(store):
    rows = ([{"instruction": f"good {i}", "output": "yes", "label": True} for i in range(3)]
            + [{"instruction": f"bad {i}", "output": "no", "label": False} for i in range(3)])
    data = json.dumps(rows).encode()
    assert formats.read_bytes(data, "kto.json").kind == "kto"
    with pytest.raises(HourlyLimitReached, match="that is 6 pairs"):
        await import_bytes(store, data, "kto.json", author_id=AUTHOR, hourly_limit=5)
    assert await store.list_examples() == []
    report = await import_bytes(store, data, "kto.json", author_id=AUTHOR, hourly_limit=6)
    assert report.imported == 6 and report.rejected == 3
    with pytest.raises(HourlyLimitReached, match="the limit is 6 per hour"):
        await store.add_example(qa("one more"), source="teach", author_id=AUTHOR, hourly_limit=6)


async def test_duplicates_are_not_counted_and_no_limit_means_none(store):
    await store.import_conversations([qa(f"pair {i}") for i in range(4)], author_id=AUTHOR, hourly_limit=5)
    # The same four again plus one new: only the new one is stored, so it fits.
    outcome = await store.import_conversations([qa(f"pair {i}") for i in range(5)], author_id=AUTHOR,
                                               hourly_limit=5)
    assert outcome.imported == 1 and len(outcome.duplicates) == 4
    await store.add_example(qa("no limit"), source="teach", author_id=AUTHOR)
    await store.import_conversations([qa(f"unlimited {i}") for i in range(3)], author_id=AUTHOR)
    assert len(await store.list_examples()) == 9

