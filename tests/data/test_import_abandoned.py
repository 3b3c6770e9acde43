"""An import whose process is killed mid-way: its hidden rows never stand in the way of the next import (which
imports everything, at once), and an import still running in another process is never taken for a dead one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from data.conversation import Conversation
from data.import_lease import ImportLease
from data.store import Store
from tests.harness.db import POSTGRES_URL
from tests.harness.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
N = 20_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request, tmp_path):
    """A database of its own that a CLI subprocess can open by URL: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'loraloop.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need LORALOOP_TEST_POSTGRES_URL")
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def pairs_file(tmp_path: Path, n: int, prefix: str = "question") -> Path:
    path = tmp_path / f"{prefix}.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"{prefix} {i}", "output": f"answer {i}"}) + "\n"
                            for i in range(n)))
    return path


def cli_import(database_url: str, home: Path, path: Path) -> subprocess.Popen[str]:
    """``loraloop dataset import PATH --json`` in a process of its own."""
    env = {**os.environ, "LORALOOP_DATABASE_URL": database_url, "LORALOOP_HOME": str(home)}
    env.pop("LORALOOP_CONFIG_FILE", None)
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "dataset", "import", str(path), "--json"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def first_batches(importing: subprocess.Popen[str], store: Store) -> None:
    """Wait until the import process has written some rows (and is still writing)."""
    async def written() -> int:
        assert importing.poll() is None, f"the import ended first: {importing.communicate()}"
        return await _raw(store, "examples")

    await wait_until(written, 120, "the import's first batches", interval=0.005)


async def counts(store: Store) -> tuple[int, int, int]:
    """(example rows, hidden ones included; examples visible; pending imports)."""
    async with store.engine.connect() as conn:
        raw = (await conn.execute(text("select count(*) from examples"))).scalar()
        pending = (await conn.execute(text("select count(*) from pending_imports"))).scalar()
    return raw, (await store.dataset_stats()).total, pending


async def test_a_killed_import_run_again_imports_every_record(database_url, tmp_path):
    """kill -9 of `loraloop dataset import` once some batches are in, then the same import again: all N records
    are imported and visible, none reported as a duplicate of the dead import's hidden rows."""
    path = pairs_file(tmp_path, N)
    store = Store(database_url)
    await store.migrate()
    try:
        first = cli_import(database_url, tmp_path / "home", path)
        try:
            await first_batches(first, store)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert first.returncode == -signal.SIGKILL
        raw, visible, pending = await counts(store)
        assert 0 < raw < N and visible == 0 and pending == 1, (raw, visible, pending)

        second = cli_import(database_url, tmp_path / "home", path)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
        report = json.loads(out)
        assert report["imported"] == N and report["duplicates"] == [] and report["in_flight"] == []
        assert await counts(store) == (N, N, 0)
    finally:
        await store.close()


async def test_an_import_running_in_another_process_is_left_alone(database_url, tmp_path):
    """While a CLI import writes its batches, another import and a start (migrate) here clean up dead imports:
    the live one keeps its rows and publishes all of them."""
    path = pairs_file(tmp_path, N)
    store = Store(database_url)
    await store.migrate()
    try:
        running = cli_import(database_url, tmp_path / "home", path)
        await first_batches(running, store)
        outcome = await store.import_conversations([Conversation.qa("taught meanwhile", "yes")])
        assert outcome.imported == 1
        starting = Store(database_url)
        await starting.migrate()
        await starting.close()
        out, err = running.communicate(timeout=300)
        assert running.returncode == 0, err
        assert json.loads(out)["imported"] == N
        assert await counts(store) == (N + 1, N + 1, 0)
    finally:
        await store.close()


async def _hidden_batch(store: Store, batch: str, question: str) -> None:
    """A pending import's row and one hidden example of it, as an import (live or dead) leaves them."""
    digest = Conversation.qa(question, "an answer").content_hash()
    async with store.engine.begin() as conn:
        await conn.execute(text("insert into pending_imports (id, started_at) values (:b, current_timestamp)"),
                           {"b": batch})
        await conn.execute(text(
            "insert into examples (content_hash, messages, tags, source, status, import_batch, created_at, "
            "updated_at, community) values (:h, '[]', '[]', 'import', 'pending', :b, current_timestamp, "
            "current_timestamp, :c)"), {"h": digest, "b": batch, "c": store.community})


async def test_a_dead_import_is_cleared_at_once_and_a_live_ones_rows_are_not_duplicates(store):
    """The dead batch has no holder (its process is gone): the next import deletes its rows, however recent, and
    imports their content. The live batch is held (an import writing in another process): its rows stay, and the
    same content is reported as held by that import, not as a duplicate."""
    # Unique names: PostgreSQL's advisory locks are per database, and other tests' schemas share it.
    dead, live = f"dead{uuid.uuid4().hex[:16]}", f"live{uuid.uuid4().hex[:16]}"
    await _hidden_batch(store, dead, "from the dead import")
    await _hidden_batch(store, live, "from the live import")
    lease = await ImportLease.take(store.engine, live)
    assert lease is not None
    try:
        assert await ImportLease.take(store.engine, live) is None  # a second holder is refused
        outcome = await store.import_conversations([Conversation.qa("from the dead import", "an answer"),
                                                    Conversation.qa("from the live import", "an answer")])
        assert outcome.imported == 1 and outcome.duplicates == [] and outcome.in_flight == [1]
        async with store.engine.connect() as conn:
            hidden = (await conn.execute(text("select import_batch from examples where import_batch in "
                                              "(select id from pending_imports)"))).scalars().all()
        assert hidden == [live]
        assert [e.messages[0]["content"] for e in await store.list_examples()] == ["from the dead import"]
    finally:
        await lease.release()
    # Once its holder is gone, the live batch is dead too: the next start clears it.
    await store.migrate()
    assert await _raw(store, "pending_imports") == 0 and await _raw(store, "examples") == 1


async def _raw(store: Store, table: str) -> int:
    async with store.engine.connect() as conn:
        return (await conn.execute(text(f"select count(*) from {table}"))).scalar()
