"""The bulk import's fast path writes exactly what the one-by-one path writes, and refuses what it refused.

A bulk import serialises each conversation once and hands the driver plain tuples; add_example goes through the
ORM and the JSON columns' serializer. Snapshots embed the stored JSON text as it is (SQLite), so the two must
store the same text, byte for byte, on both databases. The parse's shortcuts (the file's kind told from its keys
and text, the hash's normalisation skipped for text already normal) must decide as the long ways do.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import unicodedata

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Text, cast, delete, select

from data import formats
from data.conversation import Conversation, Message, _normalise
from data.importer import import_bytes
from data.models import Example
from data.store import UnstorableText

# Text each serialiser treats its own way: quotes and backslashes, newlines and U+2028 (which JSON may keep raw),
# NFKC-unstable ligatures and full-width letters, emoji, CJK, odd whitespace, and the NUL escape typed as text.
AWKWARD = ['say "hi"\nthen go', "line\u2028sep", "ﬁne ＡＢＣ", "🙂 ok", "中文回答", "tab\tand \\ slash",
           "  padded  ", "no\u00a0break", "a literal \\u0000 escape", "</script>", "\x1f unit separator"]


def shapes() -> list[Conversation]:
    """Every shape the store holds, each with awkward text: pairs, system prompts, turns, tags, tools, reasoning."""
    out = []
    for i, text in enumerate(AWKWARD):
        calls = json.dumps([{"id": f"c{i}", "type": "function",
                             "function": {"name": "lookup", "arguments": json.dumps({"q": text})}}])
        out += [
            Conversation.qa(f"question {i} {text}", f"answer {text}"),
            Conversation.qa(f"q{i}", f"a {text}", system=f"be brief {text}"),
            Conversation((Message("user", f"first {i}"), Message("assistant", f"one {text}"),
                          Message("user", "and then?"), Message("assistant", f"two {i}")), tags=("multi", text)),
            Conversation((Message("user", f"look up {i}"), Message("tool_call", calls),
                          Message("tool", f"result {text}"), Message("assistant", f"found {i}")),
                         tools=json.dumps([{"name": "lookup", "parameters": {"q": text}}])),
            Conversation((Message("user", f"why {i}?"), Message("assistant", f"because {text}",
                                                                 reasoning=f"think {text}"))),
        ]
    return out


async def stored_rows(store) -> list[tuple]:
    """Each example's columns as the database holds them (the JSON as its stored text), timestamps aside."""
    query = (select(Example.content_hash, cast(Example.messages, Text), cast(Example.tags, Text), Example.tools,
                    Example.source, Example.status, Example.author_id, Example.guild_id,
                    Example.approved_at.is_not(None))
             .order_by(Example.content_hash))
    async with store.session() as s:
        return [tuple(row) for row in await s.execute(query)]


async def test_an_import_stores_the_same_rows_and_json_text_as_adding_one_by_one(store):
    convs = shapes()
    for conv in convs:
        await store.add_example(conv, source="import", author_id=7, guild_id=9, status="approved")
    one_by_one = await stored_rows(store)
    async with store.session() as s, s.begin():
        await s.execute(delete(Example))

    outcome = await store.import_conversations(convs, author_id=7, guild_id=9, approve=True, batch_rows=7)

    assert outcome.imported == len(convs) and outcome.duplicates == []
    assert await stored_rows(store) == one_by_one
    # The text is the serializer's, exactly: what snapshots embed and exports decode.
    by_hash = {c.content_hash(): c for c in convs}
    for digest, messages, tags, tools, *_ in one_by_one:
        assert messages == orjson.dumps(by_hash[digest].to_dicts()).decode()
        assert tags == orjson.dumps(list(by_hash[digest].tags)).decode()
        assert tools == by_hash[digest].tools


async def test_pending_and_rejected_rows_match_too(store):
    convs = shapes()[:10]
    for i, conv in enumerate(convs):
        await store.add_example(conv, source="import", status="rejected" if i % 3 == 0 else "pending")
    one_by_one = await stored_rows(store)
    async with store.session() as s, s.begin():
        await s.execute(delete(Example))

    await store.import_conversations(convs, reject=range(0, 10, 3), batch_rows=4)

    assert await stored_rows(store) == one_by_one


@pytest.mark.parametrize("bad, problem", [("\x00", "a NUL character"), ("\ud800", "an unpaired surrogate")])
async def test_unstorable_text_is_still_refused_wherever_it_is(store, bad, problem):
    """The JSON made for the rows is the check: each place text can hide is refused, naming it; nothing written."""
    fine = Conversation.qa("fine", "answer")
    cases = [
        (Conversation((Message("user", "q"), Message("assistant", f"a{bad}"))), r"message 1 \(assistant\)"),
        (Conversation((Message("user", "q"), Message("assistant", "a", reasoning=f"r{bad}"))),
         r"message 1 \(assistant\) reasoning"),
        (Conversation(fine.messages, tags=("ok", f"t{bad}")), "tag"),
        (Conversation(fine.messages, tools=f'[{{"name": "{bad}"}}]'), "the tool schema text"),
    ]
    for conv, where in cases:
        with pytest.raises(UnstorableText, match=f"conversation 1: {where}.* contains {problem}"):
            await store.import_conversations([Conversation.qa("first", "a"), conv, Conversation.qa("third", "a")])
    assert await stored_rows(store) == []


async def test_the_nul_escape_typed_as_text_is_stored(store):
    """orjson writes NUL as \\u0000; the same six characters typed by a person are text like any other."""
    conv = Conversation.qa("what is \\u0000?", "the escape of NUL, \\u0000")
    assert (await store.import_conversations([conv], approve=True)).imported == 1
    [(_, messages, *_)] = await stored_rows(store)
    assert json.loads(messages)[1]["content"] == "the escape of NUL, \\u0000"


def alpaca(records: list[dict]) -> bytes:
    return orjson.dumps(records)


@pytest.mark.parametrize("records, refusal", [
    # A media token hidden behind an escaped "<", a KTO key and a preference key spelt with escapes.
    ([{"instruction": "look", "output": "fine"}, {"instruction": "\\u003cimage> what is this", "output": "a cat"}],
     formats.MultimodalData),
    ([{"instruction": "q", "output": "a", "images": ["x.png"]}], formats.MultimodalData),
    ([{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                    {"role": "assistant", "content": "a cat"}]}], formats.MultimodalData),
    ([{"instruction": "q", "chosen": "a", "rejected": "b"}], formats.PreferenceData),
])
def test_files_of_other_kinds_are_still_told_apart(records, refusal):
    text = orjson.dumps(records).decode().replace("\\\\u003c", "\\u003c")  # a real escape, as JSON writes it
    with pytest.raises(refusal):
        formats.read_bytes(text.encode(), "data.json")


def test_an_escaped_kto_label_is_still_found():
    text = '[{"instruction": "q", "output": "good", "\\u006cabel": true},' \
           ' {"instruction": "q2", "output": "bad", "label": false}]'
    assert formats.read_bytes(text.encode(), "kto.json").kind == "kto"
    escaped_only = '[{"instruction": "q", "output": "bad", "\\u006cabel": false}]'
    parsed = formats.read_bytes(escaped_only.encode(), "kto.json")
    assert parsed.kind == "kto" and len(parsed.undesirable) == 1


def test_plain_pairs_that_mention_images_are_plain_pairs():
    records = [{"instruction": f"describe the image {i} <b>", "output": "a \\ b \\u00e9 \u00e9"} for i in range(50)]
    parsed = formats.read_bytes(alpaca(records), "pairs.json")
    assert parsed.kind == "sft" and len(parsed.records) == 50 and not parsed.errors


def test_only_the_plain_space_is_printable_whitespace():
    """What the hash's shortcut rests on: printable text has no whitespace to fold but the space."""
    assert [c for c in range(sys.maxunicode + 1) if chr(c).isspace() and chr(c).isprintable()] == [0x20]


@given(st.text(st.sampled_from([" ", "\t", "\n", "\u00a0", "\u2028", "\u3000", "\x1c", "a", "é", "ﬁ", "Ａ",
                                "\u0301", "🙂"]), max_size=12) | st.text(max_size=30))
def test_the_normalisation_shortcut_changes_nothing(text):
    assert _normalise(text) == " ".join(unicodedata.normalize("NFKC", text).split())


def reference_hash(conv: Conversation) -> str:
    """Conversation.content_hash as it was written before its shortcuts: every text NFKC-normalised and folded."""
    def fold(text: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", text).split())

    norm = [[m.role, fold(m.content)] + ([fold(m.reasoning)] if m.reasoning is not None else []) for m in conv.messages]
    return hashlib.sha256(orjson.dumps({"m": norm, "t": fold(conv.tools or "")})).hexdigest()


def test_content_hashes_are_what_they_always_were():
    """Stored hashes are the identity of every example already in a dataset: they must never move."""
    convs = shapes() + [Conversation.qa(f" {text} ", f"{text}\t{text}") for text in AWKWARD]
    assert [c.content_hash() for c in convs] == [reference_hash(c) for c in convs]


async def test_the_collector_is_back_after_an_import_and_stays_off_if_it_was(store):
    data = alpaca([{"instruction": f"q{i}", "output": "a"} for i in range(30)])
    assert gc.isenabled()
    await import_bytes(store, data, "a.json")
    assert gc.isenabled()
    gc.disable()
    try:
        report = await import_bytes(store, alpaca([{"instruction": "new", "output": "a"}]), "b.json")
        assert report.imported == 1 and not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(formats.FormatError):
        await import_bytes(store, b"[not json", "c.json")
    assert gc.isenabled()
