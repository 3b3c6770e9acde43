"""A big preference file imports as a pair file does: in batches the bot's own writes slip between, hidden until
the last one is in. 40,000 records cross PostgreSQL's limit of 32,767 parameters per statement."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from data.conversation import Conversation
from data.formats.preference import Preference
from data.preferences import import_preferences, list_preferences, preference_stats
from data.store import Store
from tests.data.test_import_abandoned import REPO, database_url  # noqa: F401 (a fixture)

N = 40_000
# The longest a write of the bot may wait for the import (issue 28: 4-10 s, and "database is locked", before).
MAX_WAIT_S = 0.5


def preferences_file(path, n: int) -> None:
    path.write_text("".join(json.dumps({"instruction": f"question {i}", "input": "", "chosen": f"good answer {i}",
                                        "rejected": f"bad answer {i}"}) + "\n" for i in range(n)))


async def test_40k_preferences_import_while_the_bot_keeps_writing(database_url, tmp_path):  # noqa: F811
    """`loraloop preferences import` of 40k records in a process of its own; meanwhile the bot (another store
    on the same database) adds an example every 20 ms. Every write succeeds and none waits over 0.5 s; all 40k
    records are imported, and none is seen before the last one is in."""
    path = tmp_path / "prefs.jsonl"
    preferences_file(path, N)
    bot = Store(database_url)
    await bot.migrate()
    try:
        env = {**os.environ, "LORALOOP_DATABASE_URL": database_url, "LORALOOP_HOME": str(tmp_path / "home")}
        importing = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "preferences", "import", str(path), "--json", cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        waits: list[float] = []
        seen_early: list[int] = []
        done = asyncio.ensure_future(importing.communicate())
        while not done.done():
            started = time.perf_counter()
            await bot.add_example(Conversation.qa(f"taught {len(waits)}", "yes"), source="teach")
            waits.append(time.perf_counter() - started)
            seen_early.append((await preference_stats(bot))["total"])
            await asyncio.sleep(0.02)
        out, err = await done
        assert importing.returncode == 0, err.decode()[-2000:]
        report = json.loads(out)
        assert report["imported"] == N and report["duplicates"] == 0
        assert (await preference_stats(bot))["total"] == N
        assert set(seen_early) <= {0, N}  # all at once
        print(f"\n{bot.engine.dialect.name}: {len(waits)} writes during the import, longest wait "
              f"{max(waits) * 1000:.0f} ms")
        assert len(waits) > 20 and max(waits) <= MAX_WAIT_S, sorted(waits)[-5:]
    finally:
        await bot.close()


async def test_a_preference_import_counts_duplicates_across_batches(store):
    def pref(i: int) -> Preference:
        return Preference.from_row([{"role": "user", "content": f"q{i}"}], {"role": "assistant", "content": "good"},
                                   {"role": "assistant", "content": "bad"})

    first = await import_preferences(store, [pref(0), pref(1)], approve=True)
    assert first.imported == 2
    outcome = await import_preferences(store, [pref(i) for i in (2, 0, 3, 2, 4, 1)], batch_rows=2)
    assert outcome.imported == 3 and outcome.duplicates == [1, 3, 5] and outcome.in_flight == []
    records = await list_preferences(store)
    assert [r.prompt[0]["content"] for r in records] == ["q0", "q1", "q2", "q3", "q4"]
    assert [r.status for r in records] == ["approved"] * 2 + ["pending"] * 3
    assert all(r.approved_at is not None for r in records[:2]) and records[2].approved_at is None
