"""Benchmark: import 100k generated alpaca examples, then snapshot + export them, on SQLite.

Targets on a 2-core machine: import ≤ 10 s, snapshot + export ≤ 3 s. Prints the numbers.
Usage: python bench/bench_data.py [--n 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from data import formats
from data.conversation import Conversation
from data.importer import import_file
from data.store import Store

WORDS = "the a model expert answer question data train adapter rank alpha loss token review rating".split()


def generate(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        question = " ".join(rng.choices(WORDS, k=rng.randint(5, 20)))
        answer = " ".join(rng.choices(WORDS, k=rng.randint(10, 80)))
        records.append({"instruction": f"{question} #{i}", "input": "", "output": answer})
    return records


async def main(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "alpaca.json"
        source.write_text(json.dumps(generate(n), ensure_ascii=False))
        store = Store(f"sqlite+aiosqlite:///{root / 'bench.db'}")
        await store.migrate()
        t0, c0 = time.perf_counter(), time.process_time()
        report = await import_file(store, source, approve=True)
        t_import, c_import = time.perf_counter() - t0, time.process_time() - c0
        assert report.imported == n, report
        t0, c0 = time.perf_counter(), time.process_time()
        manifest = await store.create_snapshot(root / "snapshot")
        examples = await store.approved_examples()
        conversations = [Conversation.from_dicts(e.messages, e.tags, e.tools) for e in examples]
        formats.write_file(conversations, root / "export.jsonl", "openai")
        t_snapshot_export, c_snapshot_export = time.perf_counter() - t0, time.process_time() - c0
        await store.close()
    return {"examples": n, "import_s": round(t_import, 2), "snapshot_export_s": round(t_snapshot_export, 2),
            "import_cpu_s": round(c_import, 2), "snapshot_export_cpu_s": round(c_snapshot_export, 2),
            "import_per_s": round(n / t_import), "snapshot_total": manifest["counts"]["total"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    result = asyncio.run(main(parser.parse_args().n))
    print(json.dumps(result))
    print(f"import {result['examples']:,} alpaca examples: {result['import_s']} s wall, {result['import_cpu_s']} s CPU "
          f"(target ≤ 10 s); snapshot + export: {result['snapshot_export_s']} s wall, "
          f"{result['snapshot_export_cpu_s']} s CPU (target ≤ 3 s)")
    print("(CPU time counts this process's threads; wall time also counts waiting for a busy machine)")
