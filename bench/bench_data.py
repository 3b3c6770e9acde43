"""Benchmark: the CPU data path (import, snapshot, export of generated alpaca examples) against its floor.

Every loraloop number is printed beside its floor, measured in the same run on the same data:
- import: the file parsed with orjson and the same rows (same content hashes, checked) inserted in one
  transaction by plain executemany (sqlite3; asyncpg on PostgreSQL): no ORM, no validation, no batches or pauses.
- snapshot, export (openai .jsonl): one SELECT streamed to a file with orjson; the floor's file must be
  byte-identical to loraloop's (checked), so both did the same work.
Goals: import ≤ 2× its floor, snapshot + export ≤ 2× theirs. Times are wall and CPU (time.process_time: this
process, all its threads; on PostgreSQL the server's own CPU is in neither number). On a busy machine the CPU
ratio is the steadier one. loraloop's import is shown as it runs (a short pause each second so that the bot's
writes get SQLite's lock) and with the pauses off.
Memory: peak RSS (the child's ru_maxrss) of a snapshot create run alone in a child process, streamed and as it
was before (all rows loaded first), over databases of --rss sizes.
PostgreSQL runs beside SQLite when LORALOOP_TEST_POSTGRES_URL is set, in a schema of its own dropped after.
Preferences (--preferences N): `loraloop preferences import` of N records in a process of its own while this one
writes an example every 20 ms, as the bot would: the import's time and the longest of those writes.
Usage: python bench/bench_data.py [--n 100000] [--rss 100000,1000000] [--no-postgres] [--preferences N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import data.store as store_module
from data.importer import import_file
from data.store import Store

WORDS = "the a model expert answer question data train adapter rank alpha loss token review rating".split()
IMPORT_GOAL = SNAPSHOT_EXPORT_GOAL = 2.0
EVAL_FRACTION = 0.1
INSERT_COLUMNS = "content_hash, messages, tags, source, status, created_at, updated_at, approved_at"
SELECT_APPROVED = ("SELECT content_hash, messages, tags, source, tools FROM examples WHERE status = 'approved' "
                   "ORDER BY content_hash")


def generate(n: int, seed: int = 0) -> Iterator[dict[str, str]]:
    rng = random.Random(seed)
    for i in range(n):
        question = " ".join(rng.choices(WORDS, k=rng.randint(5, 20)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(10, 80)))
        yield {"instruction": f"{question} #{i}", "input": "", "output": answer}


@dataclass
class Timing:
    wall: float = 0.0
    cpu: float = 0.0

    def __add__(self, other: Timing) -> Timing:
        return Timing(self.wall + other.wall, self.cpu + other.cpu)


@asynccontextmanager
async def timed() -> AsyncIterator[Timing]:
    result = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    yield result
    result.wall, result.cpu = time.perf_counter() - wall, time.process_time() - cpu


# ---- the floor: the same work done by the simplest code ----------------------------------------------------------

def _normalise(text: str) -> str:  # Conversation.content_hash's normalisation, so the rows are the same rows
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def floor_rows(path: Path, now: Any) -> list[tuple[Any, ...]]:
    """The rows loraloop stores for the alpaca file at ``path``."""
    rows = []
    for r in orjson.loads(path.read_bytes()):
        question = f"{r['instruction']}\n{r['input']}" if r["instruction"] and r["input"] else \
            r["instruction"] or r["input"]
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": r["output"]}]
        digest = hashlib.sha256(orjson.dumps({"m": [[m["role"], _normalise(m["content"])] for m in messages],
                                              "t": ""})).hexdigest()
        rows.append((digest, orjson.dumps(messages).decode(), "[]", "import", "approved", now, now, now))
    return rows


def _is_eval(example_id: str) -> bool:
    digest = hashlib.sha256(f"loraloop-split:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < EVAL_FRACTION


def _json(value: str, decode: bool) -> Any:
    return orjson.loads(value) if decode else orjson.Fragment(value)


def snapshot_lines(rows: list[Any], decode: bool) -> bytes:
    """examples.jsonl lines; ``decode``: the JSON columns parsed (what loraloop's rows are on PostgreSQL)."""
    out = []
    for content_hash, messages, tags, source, tools in rows:
        record = {"id": content_hash, "split": "eval" if _is_eval(content_hash) else "train",
                  "messages": _json(messages, decode), "tags": _json(tags, decode), "source": source}
        if tools:
            record["tools"] = tools
        out.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
    return b"".join(out)


def export_lines(rows: list[Any]) -> bytes:
    """The openai records: the stored messages parsed and written again, tags when there are some."""
    out = []
    for _, messages, tags, _, _ in rows:
        record = {"messages": orjson.loads(messages)}
        if tags != "[]":
            record["tags"] = orjson.loads(tags)
        out.append(orjson.dumps(record) + b"\n")
    return b"".join(out)


class SQLite:
    name = "SQLite"

    def __init__(self, root: Path) -> None:
        self.root = root

    def url(self, name: str) -> tuple[str, dict[str, Any]]:
        return f"sqlite+aiosqlite:///{self.root / name}.db", {}

    async def floor_import(self, name: str, source: Path) -> int:
        con = sqlite3.connect(self.root / f"{name}.db")
        con.execute("PRAGMA journal_mode=WAL")  # as loraloop's connections
        rows = floor_rows(source, datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"))
        with con:
            con.executemany(f"INSERT INTO examples ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.close()
        return len(rows)

    def _stream(self, name: str, out: Path, lines: Callable[[list[Any]], bytes]) -> None:
        con = sqlite3.connect(self.root / f"{name}.db")
        cursor = con.execute(SELECT_APPROVED)
        with out.open("wb") as f:
            while rows := cursor.fetchmany(5000):
                f.write(lines(rows))
        con.close()

    async def floor_snapshot(self, name: str, out: Path) -> None:
        self._stream(name, out, lambda rows: snapshot_lines(rows, decode=False))

    async def floor_export(self, name: str, out: Path) -> None:
        self._stream(name, out, export_lines)

    async def hashes(self, name: str) -> set[str]:
        con = sqlite3.connect(self.root / f"{name}.db")
        try:
            return {h for (h,) in con.execute("SELECT content_hash FROM examples")}
        finally:
            con.close()

    async def close(self) -> None:
        pass


class PostgreSQL:
    name = "PostgreSQL"

    def __init__(self, url: str) -> None:
        self.sa_url = url
        self.dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        self.prefix = f"bench_{uuid.uuid4().hex[:8]}"
        self.schemas: list[str] = []

    def url(self, name: str) -> tuple[str, dict[str, Any]]:
        return self.sa_url, {"server_settings": {"search_path": f"{self.prefix}_{name}"}}

    async def create(self, name: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        await conn.execute(f'CREATE SCHEMA "{self.prefix}_{name}"')
        await conn.close()
        self.schemas.append(f"{self.prefix}_{name}")

    async def _connect(self, name: str) -> Any:
        import asyncpg

        return await asyncpg.connect(self.dsn, server_settings={"search_path": f"{self.prefix}_{name}"})

    async def floor_import(self, name: str, source: Path) -> int:
        conn = await self._connect(name)
        rows = floor_rows(source, datetime.now(UTC))
        async with conn.transaction():
            await conn.executemany(f"INSERT INTO examples ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                                   rows)
        await conn.close()
        return len(rows)

    async def _stream(self, name: str, out: Path, lines: Callable[[list[Any]], bytes]) -> None:
        conn = await self._connect(name)
        with out.open("wb") as f:
            async with conn.transaction():
                cursor = await conn.cursor(SELECT_APPROVED)
                while rows := await cursor.fetch(5000):
                    f.write(lines(rows))
        await conn.close()

    async def floor_snapshot(self, name: str, out: Path) -> None:
        # loraloop's rows come decoded from PostgreSQL (asyncpg's json codec), so its lines are re-encoded ones.
        await self._stream(name, out, lambda rows: snapshot_lines(rows, decode=True))

    async def floor_export(self, name: str, out: Path) -> None:
        await self._stream(name, out, export_lines)

    async def hashes(self, name: str) -> set[str]:
        conn = await self._connect(name)
        try:
            return {r[0] for r in await conn.fetch("SELECT content_hash FROM examples")}
        finally:
            await conn.close()

    async def close(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        for schema in self.schemas:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


# ---- loraloop against the floor ----------------------------------------------------------------------------------

async def migrated(backend: SQLite | PostgreSQL, name: str) -> Store:
    if isinstance(backend, PostgreSQL):
        await backend.create(name)
    url, connect_args = backend.url(name)
    store = Store(url, connect_args=connect_args)
    await store.migrate()
    return store


async def run_backend(backend: SQLite | PostgreSQL, source: Path, out: Path, n: int) -> dict[str, Timing]:
    t: dict[str, Timing] = {}
    store = await migrated(backend, "loraloop")
    async with timed() as t["import"]:
        report = await import_file(store, source, approve=True)
    assert report.imported == n, report

    nopause = await migrated(backend, "nopause")
    pause, store_module._IMPORT_PAUSE_S = store_module._IMPORT_PAUSE_S, 0.0  # this run only: the cost of the pauses
    try:
        async with timed() as t["import, pauses off"]:
            await import_file(nopause, source, approve=True)
    finally:
        store_module._IMPORT_PAUSE_S = pause
        await nopause.close()

    await (await migrated(backend, "floor")).close()
    async with timed() as t["import floor"]:
        assert await backend.floor_import("floor", source) == n
    assert await backend.hashes("floor") == await backend.hashes("loraloop"), "the floor must store the same rows"

    async with timed() as t["snapshot"]:
        manifest = await store.create_snapshot(out / "snapshot", EVAL_FRACTION)
    async with timed() as t["export"]:
        assert await store.export_approved(out / "export.jsonl", "openai") == n
    await store.close()
    async with timed() as t["snapshot floor"]:
        await backend.floor_snapshot("loraloop", out / "floor-snapshot.jsonl")
    async with timed() as t["export floor"]:
        await backend.floor_export("loraloop", out / "floor-export.jsonl")
    assert manifest.counts.total == n
    for ours, floor in (("snapshot/examples.jsonl", "floor-snapshot.jsonl"), ("export.jsonl", "floor-export.jsonl")):
        assert (out / ours).read_bytes() == (out / floor).read_bytes(), f"{ours} and the floor's file differ"
    return t


def ratio_line(what: str, ours: Timing, floor: Timing, goal: float | None) -> str:
    wall, cpu = ours.wall / floor.wall, ours.cpu / floor.cpu
    verdict = "  (no goal of its own: counts in snapshot + export)"
    if goal is not None:
        verdict = f"  goal ≤ {goal:g}× ({'met' if cpu <= goal else 'NOT met'} on CPU, " \
                  f"{'met' if wall <= goal else 'not met'} on wall)"
    return (f"  {what:<22} {ours.wall:6.2f} s wall {ours.cpu:6.2f} s CPU | floor {floor.wall:5.2f} s wall "
            f"{floor.cpu:5.2f} s CPU | loraloop/floor {wall:4.2f}× wall {cpu:4.2f}× CPU{verdict}")


def report(name: str, t: dict[str, Timing], n: int) -> dict[str, Any]:
    print(f"{name}, {n:,} examples:")
    print(ratio_line("import", t["import"], t["import floor"], IMPORT_GOAL))
    print(ratio_line("import, pauses off", t["import, pauses off"], t["import floor"], IMPORT_GOAL))
    print(ratio_line("snapshot", t["snapshot"], t["snapshot floor"], None))
    print(ratio_line("export (openai .jsonl)", t["export"], t["export floor"], None))
    both, floor = t["snapshot"] + t["export"], t["snapshot floor"] + t["export floor"]
    print(ratio_line("snapshot + export", both, floor, SNAPSHOT_EXPORT_GOAL))
    return {k: {"wall_s": round(v.wall, 3), "cpu_s": round(v.cpu, 3)} for k, v in t.items()}


# ---- memory: snapshot create alone in a child process -------------------------------------------------------------

def fill(db: Path, n: int) -> None:
    """A database of ``n`` approved examples, inserted directly (how they got there does not matter here)."""
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{db}"))
    con = sqlite3.connect(db)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    records = generate(n, seed=1)
    with con:
        while chunk := list(itertools.islice(records, 20_000)):
            con.executemany(f"INSERT INTO examples ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                (hashlib.sha256(r["instruction"].encode()).hexdigest(),
                 orjson.dumps([{"role": "user", "content": r["instruction"]},
                               {"role": "assistant", "content": r["output"]}]).decode(),
                 "[]", "import", "approved", now, now, now) for r in chunk])
    con.close()


async def _migrate(url: str) -> None:
    store = Store(url)
    await store.migrate()
    await store.close()


async def _snapshot_child(url: str, out: Path, mode: str) -> None:
    store = Store(url)
    if mode == "streamed":
        await store.create_snapshot(out, EVAL_FRACTION)
    else:  # as before streaming: every row loaded, then written
        from data.snapshot import write_snapshot
        from tests.harness.db import approved_rows_at_once

        write_snapshot(await approved_rows_at_once(store), out, EVAL_FRACTION)
    await store.close()


# Starts each snapshot child and reports its own rusage (os.wait4; RUSAGE_CHILDREN would sum them all). A tiny
# interpreter of its own: a child's ru_maxrss counts its parent's memory as it was at the fork, and this bench's
# process is large by then.
_LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(json.loads(sys.argv[1]))
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps([child.returncode, usage.ru_maxrss]))
"""


def peak_rss_mb(db: Path, out: Path, mode: str) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one snapshot create in a child process."""
    start = time.perf_counter()
    child = [sys.executable, __file__, "--snapshot-child", f"sqlite+aiosqlite:///{db}", str(out), mode]
    launched = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, json.dumps(child)], capture_output=True,
                              text=True, check=True)
    returncode, maxrss_kib = json.loads(launched.stdout.splitlines()[-1])
    if returncode != 0:
        raise RuntimeError(f"snapshot child failed ({returncode}): {launched.stderr[-2000:]}")
    return maxrss_kib / 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def memory(root: Path, sizes: list[int]) -> dict[str, Any]:
    print("peak RSS of snapshot create (SQLite, child process; 0 examples = the interpreter and imports):")
    results: dict[str, Any] = {}
    for n in [0, *sizes]:
        db = root / f"rss-{n}.db"
        fill(db, n)
        row = {}
        # As it was before streaming: for the first size only (at 1M examples it took 5.4 GB and minutes).
        for mode in ("streamed", "all rows loaded first") if n in (0, sizes[0]) else ("streamed",):
            rss, wall = peak_rss_mb(db, root / f"rss-{n}-{mode.split()[0]}", mode)
            row[mode] = round(rss, 1)
            print(f"  {n:>9,} examples, {mode:<22} {rss:7.1f} MB peak RSS ({wall:.1f} s)")
        results[str(n)] = row
        db.unlink()
    base = results["0"]["streamed"]
    if len(sizes) >= 2:
        small, big = results[str(sizes[0])]["streamed"], results[str(sizes[-1])]["streamed"]
        growth, more = (big - base) / max(small - base, 0.1), sizes[-1] / sizes[0]
        print(f"  streamed: {more:g}× the examples → {growth:.2f}× the RSS above the interpreter's "
              f"(goal: less than linear, < {more:g}×: {'met' if growth < more else 'NOT met'})")
    return results


async def main(n: int, postgres: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"examples": n}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "alpaca.json"
        source.write_bytes(orjson.dumps(list(generate(n))))
        backends: list[SQLite | PostgreSQL] = [SQLite(root)]
        url = os.environ.get("LORALOOP_TEST_POSTGRES_URL")
        if postgres and url:
            backends.append(PostgreSQL(url))
        elif postgres:
            print("PostgreSQL: skipped (set LORALOOP_TEST_POSTGRES_URL, as tests/services.sh does)")
        for backend in backends:
            out = root / backend.name
            out.mkdir()
            try:
                timings = await run_backend(backend, source, out, n)
            finally:
                await backend.close()
            result[backend.name] = report(backend.name, timings, n)
    return result


async def preference_import(n: int, postgres: bool) -> dict[str, Any]:
    """`loraloop preferences import` of n generated records in a process of its own, while this process (the
    bot) adds an example every 20 ms: the import's time and the bot's longest write."""
    from data.conversation import Conversation
    from data.preferences import preference_stats

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "prefs.jsonl"
        source.write_bytes(b"".join(orjson.dumps({"instruction": r["instruction"], "input": "", "chosen": r["output"],
                                                  "rejected": f"not {r['output']}"}) + b"\n" for r in generate(n)))
        urls = {"sqlite": f"sqlite+aiosqlite:///{Path(tmp) / 'prefs.db'}"}
        pg = os.environ.get("LORALOOP_TEST_POSTGRES_URL")
        admin = name = None
        if postgres and pg:
            import asyncpg

            name = f"bench_{uuid.uuid4().hex[:12]}"
            admin = await asyncpg.connect(pg.replace("postgresql+asyncpg://", "postgresql://"))
            await admin.execute(f'CREATE DATABASE "{name}"')
            urls["postgresql"] = pg.rsplit("/", 1)[0] + f"/{name}"
        try:
            for backend, url in urls.items():
                bot = Store(url)
                await bot.migrate()
                env = {**os.environ, "LORALOOP_DATABASE_URL": url, "LORALOOP_HOME": str(Path(tmp) / "home")}
                started = time.perf_counter()
                child = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bot.cli", "preferences", "import", str(source), "--json",
                    cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE)
                done = asyncio.ensure_future(child.communicate())
                waits: list[float] = []
                while not done.done():
                    t0 = time.perf_counter()
                    await bot.add_example(Conversation.qa(f"taught {backend} {len(waits)}", "yes"), source="teach")
                    waits.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.02)
                out, err = await done
                took = time.perf_counter() - started
                assert child.returncode == 0, err.decode()[-2000:]
                imported = json.loads(out)["imported"]
                assert imported == n == (await preference_stats(bot))["total"], (imported, n)
                await bot.close()
                results[backend] = {"records": n, "seconds": round(took, 2), "bot_writes": len(waits),
                                    "longest_write_ms": round(max(waits) * 1000)}
                print(f"{backend}: {n:,} preference records imported in {took:.1f} s (CLI process, parse included); "
                      f"{len(waits)} bot writes meanwhile, longest {max(waits) * 1000:.0f} ms")
        finally:
            if admin is not None:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                await admin.close()
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--snapshot-child"]:
        asyncio.run(_snapshot_child(sys.argv[2], Path(sys.argv[3]), sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rss", default="100000,1000000", help="snapshot sizes for peak RSS ('' to skip)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--preferences", type=int, metavar="N",
                        help="only: N preference records imported by the CLI while the bot writes (longest wait)")
    args = parser.parse_args()
    if args.preferences:
        print(json.dumps(asyncio.run(preference_import(args.preferences, not args.no_postgres))))
        sys.exit(0)
    sizes = [int(s) for s in args.rss.split(",") if s]
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (ratios come from one run)")
    outcome = asyncio.run(main(args.n, not args.no_postgres))
    if sizes:
        with tempfile.TemporaryDirectory() as tmp:
            outcome["peak_rss_mb"] = memory(Path(tmp), sizes)
    print(json.dumps(outcome))
