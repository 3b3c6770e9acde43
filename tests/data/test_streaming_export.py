"""Snapshots and exports streamed from the store, a batch at a time: the same bytes as the one-shot writers.

The references here are the serialisations as they were before streaming (all rows loaded, then written at
once), kept in this file so that a change to the streamed writers cannot change what a user's file holds.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import formats
from data.conversation import Conversation, Message
from data.formats import csv_, openai
from data.snapshot import SnapshotError, SnapshotWriter, read_snapshot, write_snapshot
from tests.harness.db import approved_rows_at_once

# Text that trips serialisers: quotes, newlines, separators JSON keeps raw (U+2028), a formula, emoji, CJK.
AWKWARD = ['say "hi"\nthen go', "line\u2028sep", "=1+2", "🙂 ok", "中文回答", "tab\tand \\ slash", "[brackets] {x}"]


def conversations(n: int) -> list[Conversation]:
    """Plain pairs plus every shape the store holds: system prompts, several turns, tags, tool calls, reasoning."""
    out = []
    for i in range(n):
        text = AWKWARD[i % len(AWKWARD)]
        kind = i % 6
        if kind == 0:
            out.append(Conversation.qa(f"question {i} {text}", f"answer {i} {text}"))
        elif kind == 1:
            out.append(Conversation.qa(f"q{i}", f"a{i}", system=f"be brief {text}"))
        elif kind == 2:
            out.append(Conversation((Message("user", f"first {i}"), Message("assistant", f"one {text}"),
                                     Message("user", "and then?"), Message("assistant", f"two {i}")),
                                    tags=("multi", text)))
        elif kind == 3:
            calls = json.dumps([{"id": f"c{i}", "type": "function",
                                 "function": {"name": "lookup", "arguments": json.dumps({"q": text})}}])
            out.append(Conversation((Message("user", f"look up {i}"), Message("tool_call", calls),
                                     Message("tool", f"result {text}"), Message("assistant", f"found {i}")),
                                    tools=json.dumps([{"name": "lookup", "parameters": {}}])))
        elif kind == 4:
            out.append(Conversation((Message("user", f"why {i}?"),
                                     Message("assistant", f"because {text}", reasoning=f"think {i} {text}"))))
        else:
            out.append(Conversation(Conversation.qa(f"tagged {i}", f"answer {text}").messages, tags=("t", f"n{i}")))
    return out


def one_shot(convs: list[Conversation], format: str, *, jsonl: bool) -> bytes:
    """The export as it was written before streaming: every record built, then serialised at once."""
    if format == "csv":
        out = io.StringIO()
        csv_.write(convs, csv.writer(out))
        return out.getvalue().encode("utf-8")
    records = [formats._CODECS[format].dump(c) for c in convs]
    if jsonl:
        return b"".join(orjson.dumps(r) + b"\n" for r in records)
    return (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def expressible(convs: list[Conversation], format: str) -> list[Conversation]:
    if format == "csv":
        return [c for c in convs if len(c.turns) == 2 and not c.has_tools]
    if format in ("alpaca", "lf-v1"):
        return [c for c in convs if not c.has_tools]
    return convs


async def approved(store) -> list[Conversation]:
    return [Conversation.from_dicts(e.messages, e.tags, e.tools) for e in await store.approved_examples()]


async def approved_as_stored(store) -> list[Conversation]:
    """What an export writes: the approved examples in the order they were stored (a file's own order)."""
    return [Conversation.from_dicts(e.messages, e.tags, e.tools) for e in await store.list_examples(status="approved")]


async def test_streamed_snapshot_is_byte_identical_to_the_one_shot_writer(store, tmp_path):
    await store.import_conversations(conversations(120), approve=True)
    streamed = await store.create_snapshot(tmp_path / "streamed", batch_rows=7)  # many batches, one short
    reference = write_snapshot(await approved_rows_at_once(store), tmp_path / "reference")
    assert streamed.sha256 == reference.sha256 and streamed.counts == reference.counts
    assert streamed.counts.total == 120
    assert (tmp_path / "streamed" / "examples.jsonl").read_bytes() == \
        (tmp_path / "reference" / "examples.jsonl").read_bytes()
    snap = read_snapshot(tmp_path / "streamed")
    assert {c.content_hash() for c in snap.train + snap.eval} == {c.content_hash() for c in conversations(120)}


def test_snapshot_writer_batches_equal_one_write_and_refuse_disorder(tmp_path):
    rows = [SimpleNamespace(content_hash=c.content_hash(), messages=c.to_dicts(), tags=list(c.tags), source="teach",
                            tools=c.tools) for c in conversations(50)]
    whole = write_snapshot(rows, tmp_path / "whole")
    ordered = sorted(rows, key=lambda r: r.content_hash)
    with SnapshotWriter(tmp_path / "batched") as writer:
        for start in range(0, 50, 9):
            writer.write(ordered[start:start + 9])
        writer.write([])
        batched = writer.close()
    assert batched.sha256 == whole.sha256
    with pytest.raises(SnapshotError, match="out of order"), SnapshotWriter(tmp_path / "disorder") as writer:
        writer.write(ordered[10:12])
        writer.write(ordered[:1])
    assert not (tmp_path / "disorder").exists()  # made by the writer, removed with what it wrote


async def test_cancelled_snapshot_leaves_nothing(store, tmp_path):
    await store.import_conversations([Conversation.qa(f"question {i}", f"answer {i}") for i in range(3000)],
                                     approve=True)
    out = tmp_path / "cancelled"
    task = asyncio.create_task(store.create_snapshot(out, batch_rows=1))
    examples = out / "examples.jsonl"
    while not (examples.exists() and examples.stat().st_size > 0):
        assert not task.done(), "the snapshot finished before it could be cancelled"
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not out.exists()
    manifest = await store.create_snapshot(out)  # the store and the directory are usable again
    assert manifest.counts.total == 3000


@pytest.mark.parametrize(("format", "suffix"), [("openai", ".jsonl"), ("openai", ".json"), ("alpaca", ".json"),
                                                ("sharegpt", ".jsonl"), ("lf-v1", ".jsonl"), ("csv", ".csv")])
async def test_streamed_export_is_byte_identical_to_the_one_shot_export(store, tmp_path, format, suffix):
    convs = expressible(conversations(60), format)
    await store.import_conversations(convs, approve=True)
    await store.add_example(Conversation.qa("pending", "not exported"), source="teach")
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / f"export{suffix}"
    count = await store.export_approved(out, format, batch_rows=7)
    expected = one_shot(await approved_as_stored(store), format, jsonl=suffix == ".jsonl")
    assert count == len(convs)
    assert out.read_bytes() == expected
    assert formats.dumps(convs, format, jsonl=suffix == ".jsonl") == expected  # the order they were imported in
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it


async def test_export_split_matches_the_snapshot_split(store, tmp_path):
    await store.import_conversations(conversations(90), approve=True)
    snapshot = read_snapshot((await store.create_snapshot(tmp_path / "snap", 0.3)).path)
    for split, part in (("train", snapshot.train), ("eval", snapshot.eval)):
        out = tmp_path / f"{split}.jsonl"
        assert await store.export_approved(out, "sharegpt", split=split, eval_fraction=0.3, batch_rows=4) == len(part)
        wanted = {c.content_hash() for c in part}
        in_order = [c for c in await approved_as_stored(store) if c.content_hash() in wanted]
        assert out.read_bytes() == one_shot(in_order, "sharegpt", jsonl=True)


async def test_refused_export_leaves_the_previous_file_and_no_other(store, tmp_path):
    await store.import_conversations(conversations(12), approve=True)  # holds tool calls: alpaca cannot
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "export.json"
    out.write_bytes(b"yesterday's export\n")
    with pytest.raises(ValueError, match=r"record \d+ cannot be written as alpaca: tool calls"):
        await store.export_approved(out, "alpaca", batch_rows=2)
    assert out.read_bytes() == b"yesterday's export\n"
    assert [p.name for p in out.parent.iterdir()] == ["export.json"]
    with pytest.raises(ValueError, match="use a .csv file"):
        await store.export_approved(out.parent / "x.jsonl", "csv")
    assert [p.name for p in out.parent.iterdir()] == ["export.json"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=0, max_size=12),
       cut=st.integers(min_value=1, max_value=5), format=st.sampled_from(["openai", "alpaca", "sharegpt", "lf-v1"]),
       jsonl=st.booleans())
def test_writer_in_pieces_equals_the_one_shot_bytes(tmp_path_factory, texts, cut, format, jsonl):
    convs = [Conversation.qa(t, t[::-1] + "!", system=t if i % 3 == 0 else None) for i, t in enumerate(texts)]
    path = tmp_path_factory.mktemp("w") / ("out.jsonl" if jsonl else "out.json")
    with formats.DatasetWriter(path, format) as writer:
        for start in range(0, len(convs), cut):
            writer.write(convs[start:start + cut])
        assert writer.commit() == len(convs)
    assert path.read_bytes() == one_shot(convs, format, jsonl=jsonl)


def test_openai_fast_path_equals_dump_and_is_taken_for_plain_rows():
    taken = 0
    for conv in conversations(60):
        fast = openai.dump_stored(conv.to_dicts(), list(conv.tags))
        plain = not conv.has_tools and not any(m.reasoning is not None for m in conv.messages)
        assert (fast is not None) == plain
        if fast is not None:
            assert orjson.dumps(fast) == orjson.dumps(openai.dump(conv))
            taken += 1
    assert taken == 40


def test_cli_export_refusal_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bot.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORALOOP_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    source = tmp_path / "tools.jsonl"
    convs = [c for c in conversations(8) if c.has_tools or not c.tags]  # sharegpt keeps no tags
    source.write_bytes(formats.dumps(convs, "sharegpt"))
    assert runner.invoke(app, ["dataset", "import", str(source), "--approve"]).exit_code == 0
    (tmp_path / "out").mkdir()
    refused = runner.invoke(app, ["dataset", "export", "--format", "alpaca", "--out", str(tmp_path / "out" / "a.json")])
    assert refused.exit_code == 1
    assert "cannot be written as alpaca: tool calls" in refused.output and "Traceback" not in refused.output
    assert list((tmp_path / "out").iterdir()) == []
    out = tmp_path / "out" / "all [1].jsonl"  # brackets: printed as text, not read as markup
    done = runner.invoke(app, ["dataset", "export", "--format", "sharegpt", "--out", str(out)])
    assert done.exit_code == 0 and f"wrote {len(convs)} examples to {out}" in " ".join(done.output.split())
    # As imported: sharegpt writes each OpenAI tool call in its own layout, which hashes apart from OpenAI's.
    imported = [r.conversation for r in formats.read_file(source).records]
    first: dict[str, Conversation] = {}
    for c in imported:
        first.setdefault(c.content_hash(), c)  # the store keeps the first of each
    in_file_order = list(first.values())
    assert out.read_bytes() == one_shot(in_file_order, "sharegpt", jsonl=True)
