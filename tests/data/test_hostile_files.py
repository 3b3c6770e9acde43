"""Hostile and unusual dataset files: nesting 100k deep, NUL and unpaired surrogates, a large import and the loop.

Each file is refused whole (FormatError) or record by record (RecordError): never a traceback, never a hang, and
nothing written when the import does not go through.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time

import pytest

from data import formats
from data.conversation import Conversation, InvalidConversation, Message
from data.importer import import_bytes

DEEP = 100_000


def deep(levels: int = DEEP) -> str:
    return "[" * levels + "]" * levels


def alpaca(question: str, answer: str) -> dict:
    return {"instruction": question, "input": "", "output": answer}


# ---- nesting ------------------------------------------------------------------------------------------------

WHOLE_FILE_REFUSALS = [
    pytest.param(deep().encode(), "deep.json", "not valid JSON: nested too deeply", id="array-100k"),
    pytest.param(deep().encode(), "deep.jsonl", "line 1: not valid JSON: nested too deeply", id="jsonl-100k"),
    # Starts with "{": read by the single-object path, which used the standard library's recursive parser.
    pytest.param(('{"instruction": "q", "output": ' + deep() + "}").encode(), "object.json",
                 "line 1: not valid JSON: nested too deeply", id="object-field-100k"),
    pytest.param(json.dumps([alpaca("fine", "ok"), {"instruction": "q", "output": "X"}])
                 .replace('"X"', deep()).encode(), "field.json", "not valid JSON: nested too deeply",
                 id="array-record-field-100k"),
    # An unpaired surrogate first sends the array to the standard library's parser, which recurses.
    pytest.param(("[" + json.dumps(alpaca("\ud800", "a")) + ', {"instruction": "q", "output": ' + deep() + "}]")
                 .encode(), "surrogate-then-deep.json", "not valid JSON: nested too deeply",
                 id="surrogate-then-100k"),
]


@pytest.mark.parametrize(("data", "name", "message"), WHOLE_FILE_REFUSALS)
def test_nesting_100k_deep_refuses_the_file(data, name, message):
    started = time.monotonic()
    with pytest.raises(formats.FormatError, match=message):
        formats.read_bytes(data, name)
    assert time.monotonic() - started < 5  # refused at once, not after walking 100k levels


def test_nesting_100k_deep_in_one_jsonl_line_is_that_line_s_error():
    lines = [json.dumps(alpaca("first", "ok")), '{"instruction": "q", "output": ' + deep() + "}",
             json.dumps(alpaca("third", "ok"))]
    result = formats.read_bytes("\n".join(lines).encode(), "mixed.jsonl")
    assert [r.location for r in result.records] == ["line 1", "line 3"]
    [error] = result.errors
    assert error.location == "line 2" and error.message.startswith("not valid JSON: nested too deeply")


@pytest.mark.parametrize(("record", "message"), [
    # 1000 levels: within orjson's limit, past the one of json.dumps, which turns the value back into text.
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "X"}}]},
                   {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]},
     'messages[1]: "tool_calls" is nested more than 100 levels deep'),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "X"},
     '"tools" is nested more than 100 levels deep'),
])
def test_deep_tool_values_are_that_record_s_error(record, message):
    lines = [json.dumps(record).replace('"X"', deep(2)), json.dumps(record).replace('"X"', deep(1000))]
    result = formats.read_bytes("\n".join(lines).encode(), "tools.jsonl")
    assert result.errors == [formats.RecordError("line 2", message)]
    [kept] = result.records
    assert kept.location == "line 1" and "[[]]" in (kept.conversation.tools or kept.conversation.messages[1].content)


def test_a_tool_call_nested_100k_deep_cannot_be_exported_as_openai():
    # Stored text may be any JSON a sharegpt function_call held; turning it back into tool_calls must not recurse.
    conv = Conversation((Message("user", "q"), Message("tool_call", deep()), Message("tool", "r"),
                         Message("assistant", "a")))
    with pytest.raises(ValueError, match="record 0 cannot be written as openai"):
        formats.dumps([conv], "openai")


async def test_a_deep_file_writes_nothing(store):
    await store.add_example(Conversation.qa("known", "yes"), source="teach")
    with pytest.raises(formats.FormatError, match="nested too deeply"):
        await import_bytes(store, deep().encode(), "deep.json", skip_invalid=True)
    assert [e.messages[0]["content"] for e in await store.list_examples()] == ["known"]


# ---- NUL and unpaired surrogates ----------------------------------------------------------------------------

BAD_TEXT = [pytest.param("\x00", "a NUL character", id="nul"),
            pytest.param("\ud800", "an unpaired surrogate", id="surrogate")]


@pytest.mark.parametrize(("bad", "problem"), BAD_TEXT)
def test_validate_refuses_text_no_database_can_store(bad, problem):
    cases = {
        "message 0 (user)": Conversation.qa(f"q{bad}", "a"),
        "message 1 (assistant)": Conversation.qa("q", f"a{bad}"),
        "message 0 (system)": Conversation.qa("q", "a", system=f"s{bad}"),
        "tag ": Conversation(Conversation.qa("q", "a").messages, tags=(f"t{bad}",)),
        "the tool schemas' text": Conversation(Conversation.qa("q", "a").messages, tools=f'["{bad}"]'),
    }
    for where, conv in cases.items():
        with pytest.raises(InvalidConversation, match=f"^{re.escape(where)}.*contains {problem}"):
            conv.validate()
    assert Conversation.qa("q \U0001f600", "a ok").validate()  # text outside the BMP is fine


def test_an_escaped_surrogate_pair_is_one_character_even_beside_a_lone_one():
    # The lone escape sends the file to the standard library's parser: it must still join real pairs.
    data = b'[{"instruction": "smile \\ud83d\\ude00", "output": "ok"}, {"instruction": "\\udc00", "output": "a"}]'
    result = formats.read_bytes(data, "pairs.json")
    assert result.records[0].conversation.messages[0].content == "smile \U0001f600"
    assert [e.location for e in result.errors] == ["record 1"]


# The JSON escapes as the file holds them (orjson refuses "\ud800" for a whole text; the error must stay per record).
NUL_ESCAPE, SURROGATE_ESCAPE = "\\u0000", "\\ud800"


def hostile_array() -> bytes:
    rows = [alpaca("fine 0", "ok"), alpaca("q1", "an" + "\x00" + "swer"), alpaca("q" + "\ud800" + "2", "a"),
            alpaca("fine 3", "ok")]
    return json.dumps(rows).encode()  # ensure_ascii: written as the \u0000 and \ud800 escapes


def test_nul_and_surrogate_escapes_are_per_record_errors_in_every_layout():
    assert NUL_ESCAPE.encode() in hostile_array() and SURROGATE_ESCAPE.encode() in hostile_array()
    array = formats.read_bytes(hostile_array(), "pairs.json")
    assert [r.location for r in array.records] == ["record 0", "record 3"]
    assert [(e.location, e.message.split(" (\\u")[0]) for e in array.errors] == [
        ("record 1", "message 1 (assistant) contains a NUL character"),
        ("record 2", "message 0 (user) contains an unpaired surrogate"),
    ]
    lines = b"\n".join(json.dumps(r).encode() for r in json.loads(hostile_array()))
    jsonl = formats.read_bytes(lines, "pairs.jsonl")
    assert [e.location for e in jsonl.errors] == ["line 2", "line 3"] and len(jsonl.records) == 2
    # A NUL byte past the binary sniff (the first 4096 bytes) inside a CSV cell.
    csv = b"question,answer\n" + b"".join(b"filler %d,ok\n" % i for i in range(400)) + b"q,a\x00b\n"
    assert csv.index(b"\x00") > 4096
    rows = formats.read_bytes(csv, "pairs.csv")
    assert len(rows.records) == 400
    assert [(e.location, e.message.split(" (\\u")[0]) for e in rows.errors] == [
        ("line 402", "message 1 (assistant) contains a NUL character")]


async def test_nul_and_surrogate_records_are_refused_and_nothing_written(store):
    """PostgreSQL refuses NUL in text; a surrogate cannot be encoded: both used to fail deep inside the insert."""
    await store.add_example(Conversation.qa("known", "yes"), source="teach")
    report = await import_bytes(store, hostile_array(), "pairs.json")
    assert not report.committed and report.imported == 0 and report.records == 4
    assert [e.location for e in report.errors] == ["record 1", "record 2"]
    assert [e.messages[0]["content"] for e in await store.list_examples()] == ["known"]
    skipped = await import_bytes(store, hostile_array(), "pairs.json", skip_invalid=True)
    assert skipped.committed and skipped.imported == 2 and len(skipped.errors) == 2
    assert sorted(e.messages[0]["content"] for e in await store.list_examples()) == ["fine 0", "fine 3", "known"]


# ---- a large import and the event loop ----------------------------------------------------------------------

LAG_RECORDS = 30_000
MAX_HOLD_S = 0.100


async def test_a_large_import_keeps_the_event_loop_responsive(store):
    """Parsing, validating and hashing 30k records happen off the event loop: it is never held 100 ms in one go.

    Measured as the event-loop thread's own CPU time between two ticks of a 5 ms probe: that is what code run on
    the loop costs, and it does not grow when other processes load the machine (wall-clock gaps do: on a busy
    2-core machine they reach 0.1-0.2 s even when the loop does nothing long). Hashing on the loop, as the store
    did, held it 0.31-0.37 s in one go; in worker threads the longest hold is 45-56 ms. The session's objects
    (pytest, hypothesis, …) are frozen out of the garbage collector meanwhile: a full collection of them costs
    0.1-0.2 s whoever happens to trigger it; collecting the import's own objects still counts.
    """
    rows = [alpaca(f"question {i}: how do rank and alpha interact in LoRA? " * 2, f"answer {i}, " * 20)
            for i in range(LAG_RECORDS)]
    data = json.dumps(rows).encode()
    held: list[float] = []
    wall: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        last_cpu, last_wall = time.thread_time(), time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now_cpu, now_wall = time.thread_time(), time.perf_counter()
            held.append(now_cpu - last_cpu)
            wall.append(now_wall - last_wall)
            last_cpu, last_wall = now_cpu, now_wall

    gc.collect()
    gc.freeze()
    task = asyncio.create_task(probe())
    await asyncio.sleep(0.05)  # the probe is running
    try:
        report = await import_bytes(store, data, "large.json", approve=True)
    finally:
        stop.set()
        await task
        gc.unfreeze()
    assert report.committed and report.imported == LAG_RECORDS
    assert max(held) < MAX_HOLD_S, (f"the event loop was busy {max(held) * 1000:.0f} ms in one go "
                                    f"(longest wall-clock gap {max(wall) * 1000:.0f} ms)")
