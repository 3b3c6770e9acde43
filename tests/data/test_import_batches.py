"""Big imports are written in batches (the bot keeps writing meanwhile) yet stay one all-or-nothing import."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from data.conversation import Conversation
from data.models import utcnow
from data.store import ImportFailed, NotFound, Store
from tests.harness.db import make_store
from tests.harness.polling import wait_until


def qa(q: str, a: str = "an answer") -> Conversation:
    return Conversation.qa(q, a)


async def _raw_count(store: Store, table: str = "examples") -> int:
    """Rows in the table, hidden ones included."""
    async with store.engine.connect() as conn:
        return (await conn.execute(text(f"select count(*) from {table}"))).scalar()


async def test_the_bot_writes_while_a_big_import_runs_and_sees_none_of_it_until_done(tmp_path):
    """SQLite, two stores on one file (the bot, and an import from the CLI): the bot's /teach commits while the
    import is half-way, instead of waiting for (or, past its busy timeout, failing on) one long transaction;
    until the import's end nothing of it is listed, counted or found."""
    importer, cleanup = await make_store("sqlite", tmp_path)
    bot = Store(importer.url)
    task = asyncio.create_task(importer.import_conversations([qa(f"imported {i}") for i in range(20_000)],
                                                             author_id=7))
    try:
        await wait_until(lambda: _raw_count(bot), 10, "the import's first batch", interval=0.005)
        async with bot.engine.connect() as conn:
            staged_id = (await conn.execute(text("select min(id) from examples"))).scalar()
        taught = await bot.add_example(qa("taught during the import"), source="teach", author_id=7)
        assert not task.done(), "the bot's write waited for the whole import"
        # Mid-import, the bot sees its own example only.
        assert [e.id for e in await bot.list_examples()] == [taught.id]
        assert (await bot.dataset_stats()).total == 1
        assert await bot.count_submissions(7, utcnow() - timedelta(minutes=1)) == 1
        assert (await bot.next_for_review(1)).id == taught.id
        with pytest.raises(NotFound):
            await bot.get_example(staged_id)
        outcome = await task
        assert outcome.imported == 20_000 and outcome.duplicates == []
        ids = [e.id for e in await bot.list_examples(status="pending")]
        assert len(ids) == 20_001 and min(ids) < taught.id < max(ids)  # it committed between two batches
        assert await _raw_count(bot, "pending_imports") == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bot.close()
        await cleanup()


async def _refuse_tools(store: Store, value: str) -> None:
    """A database constraint refusing one value of ``tools``: the failure a real import can meet at any row."""
    async with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            await conn.execute(text(
                "CREATE TRIGGER refuse_tools BEFORE INSERT ON examples "
                f"WHEN NEW.tools = '{value}' BEGIN SELECT RAISE(ABORT, 'tools refused'); END"))
        else:
            await conn.execute(text(
                f"ALTER TABLE examples ADD CONSTRAINT refuse_tools CHECK (tools IS DISTINCT FROM '{value}')"))


async def test_a_row_refused_in_the_last_batch_leaves_nothing(store):
    await store.add_example(qa("already here"), source="teach")
    await _refuse_tools(store, "refused")
    convs = [qa(f"row {i}") for i in range(4_999)] + [Conversation(qa("last").messages, tools="refused")]
    with pytest.raises(ImportFailed, match="refused a conversation of this import .*nothing was imported"):
        await store.import_conversations(convs, approve=True, batch_rows=2_000)  # the 3rd batch fails
    assert [e.content_hash for e in await store.list_examples()] == [qa("already here").content_hash()]
    assert await _raw_count(store) == 1  # the first two batches' hidden rows are gone too
    assert await _raw_count(store, "pending_imports") == 0
    # Their hashes are free again: the same rows import once the bad one is out.
    outcome = await store.import_conversations(convs[:-1], approve=True, batch_rows=2_000)
    assert outcome.imported == 4_999
    assert (await store.dataset_stats()).by_status["approved"] == 4_999


async def test_duplicates_are_found_across_batches(store):
    await store.add_example(qa("known"), source="teach")
    convs = [qa("a"), qa("b"), qa("known"), qa("c"), qa("a"), qa("d"), qa("b")]
    outcome = await store.import_conversations(convs, batch_rows=2)
    assert outcome.imported == 4 and outcome.duplicates == [2, 4, 6]
    assert (await store.dataset_stats()).by_status["pending"] == 5


async def test_a_cancelled_import_leaves_nothing(tmp_path):
    store, cleanup = await make_store("sqlite", tmp_path)
    try:
        task = asyncio.create_task(store.import_conversations([qa(f"row {i}") for i in range(20_000)]))
        await wait_until(lambda: _raw_count(store), 10, "the import's first batch", interval=0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _raw_count(store) == await _raw_count(store, "pending_imports") == 0
    finally:
        await cleanup()
