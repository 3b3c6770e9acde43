"""Dataset formats: the real LLaMA-Factory demo files, malformed files, detection, exact round trips."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import formats
from data.conversation import Conversation, Message

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"{DATASETS} (shared datasets) is not present")


@needs_datasets
def test_identity_placeholders_are_imported_as_is():
    result = formats.read_file(DATASETS / "identity.json")
    assert result.format == "alpaca" and len(result.records) == 91 and not result.errors
    assert any("{{name}}" in r.conversation.messages[-1].content for r in result.records)


@needs_datasets
def test_alpaca_zh_has_exact_duplicates():
    result = formats.read_file(DATASETS / "alpaca_zh_demo.json")
    raw = json.loads((DATASETS / "alpaca_zh_demo.json").read_text())
    assert len(result.records) == len(raw) == 1000 and not result.errors
    distinct_raw = {json.dumps(r, sort_keys=True, ensure_ascii=False) for r in raw}
    distinct = {r.conversation.content_hash() for r in result.records}
    assert len(distinct) == len(distinct_raw) < 1000


@needs_datasets
def test_glaive_tool_turns_are_kept_and_round_trip():
    result = formats.read_file(DATASETS / "glaive_toolcall_en_demo.json")
    assert result.format == "sharegpt" and not result.errors
    convs = [r.conversation for r in result.records]
    with_tools = [c for c in convs if c.has_tools]
    assert with_tools and all(c.tools for c in with_tools)
    raw = json.loads((DATASETS / "glaive_toolcall_en_demo.json").read_text())
    first_call = next(t for r in raw for t in r["conversations"] if t["from"] == "function_call")
    assert any(m.role == "tool_call" and m.content == first_call["value"] for c in convs for m in c.messages)
    back = formats.read_bytes(formats.dumps(convs, "sharegpt"), "x.jsonl")
    assert [r.conversation for r in back.records] == convs
    with pytest.raises(ValueError, match="cannot be written as alpaca"):
        formats.dumps(with_tools, "alpaca")


def test_malformed_records_get_specific_errors():
    data = json.dumps([
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no answer"},
        {"instruction": "", "input": "", "output": "x"},
        {"instruction": "q", "output": 5},
        "not an object",
        {"instruction": "q", "output": "a", "history": [["only one"]]},
    ]).encode()
    result = formats.read_bytes(data, "bad.json")
    assert len(result.records) == 1
    assert [(e.location, e.message) for e in result.errors] == [
        ("record 1", 'missing "output"'),
        ("record 2", 'empty question: "instruction" and "input" are both empty'),
        ("record 3", '"output" must be text, not int'),
        ("record 4", "a record must be a JSON object, not str"),
        ("record 5", "history[0] must be a [question, answer] pair of texts"),
    ]


def test_jsonl_errors_are_per_line_and_roles_checked():
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        "{broken",
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b" * 50}]}),
    ]
    result = formats.read_bytes("\n".join(lines).encode(), "chat.jsonl", max_chars=20)
    assert result.format == "openai" and len(result.records) == 1
    messages = {e.location: e.message for e in result.errors}
    assert messages["line 2"].startswith("not valid JSON")
    assert "unknown role 'robot'" in messages["line 3"]
    assert "first turn must be from the user" in messages["line 4"]
    assert "over the limit of 20" in messages["line 5"]


@pytest.mark.parametrize(("data", "name", "message"), [
    (b"\x00\x01\x02binary", "x.json", "binary file"),
    (b"\xff\xfe garbage", "x.json", "not UTF-8"),
    (b"[1, 2", "x.json", "not valid JSON"),
    (b'{"a": 1}', "x.json", "must be an array"),
    (b"{nope\n{nope", "x.jsonl", "no line of the file is valid JSON"),
    (b"", "x.jsonl", "empty"),
    (b"[]", "x.json", "no records"),
    (b" [ \n ] ", "x.json", "no records"),
    (b"q,a\n1,2\n", "x.csv", "must name question and answer"),
    (b'[{"foo": 1}]', "x.json", "cannot tell the format"),
])
def test_unusable_files_are_refused_whole(data, name, message):
    with pytest.raises(formats.FormatError, match=message):
        formats.read_bytes(data, name)


def test_detection_and_override():
    sharegpt = json.dumps([{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}])
    assert formats.detect_format(sharegpt.encode(), "d.json") == "sharegpt"
    lf = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "value": "hi"}]},
                                  {"role": "assistant", "content": [{"type": "text", "value": "yo"}]}]})
    assert formats.detect_format(lf.encode(), "d.jsonl") == "lf-v1"
    assert formats.detect_format(b"question,answer\nq,a\n", "d.csv") == "csv"
    forced = formats.read_bytes(sharegpt.encode(), "d.json", format="alpaca")
    assert forced.format == "alpaca" and forced.errors and not forced.records
    image = json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "value": "x.png"}]}]})
    with pytest.raises(formats.MultimodalData, match="first line 1: image_url part"):  # refused whole, never dropped
        formats.read_bytes(image.encode(), "i.jsonl")
    audio = json.dumps({"messages": [{"role": "user", "content": [{"type": "sound", "value": "x"}]}]})
    assert "not supported (text only)" in formats.read_bytes(audio.encode(), "a.jsonl").errors[0].message


def test_csv_rows():
    data = b'question,answer,system\n"multi\nline",yes,\n,no question,\nq2,"a, with comma",be brief\n'
    result = formats.read_bytes(data, "pairs.csv")
    assert [r.location for r in result.records] == ["line 3", "line 5"]
    assert result.records[0].conversation == Conversation.qa("multi\nline", "yes")
    assert result.records[1].conversation.system == "be brief"
    assert result.errors[0].location == "line 4" and result.errors[0].message == "empty question"


# ---- round trips -------------------------------------------------------------------------------------------

# Control characters other than tab and newline make a file look binary; real datasets do not hold them.
text = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc"), include_characters="\n\t\r"),
               min_size=1, max_size=40).filter(str.strip)
# Any text a database can store: no NUL, no unpaired surrogate (Conversation.validate refuses those).
tags = st.lists(st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                        min_size=1, max_size=8), max_size=3).map(tuple)
# Texts a spreadsheet would run as a formula, with and without leading quotes: CSV escapes them (csv_ docstring).
formula_like = st.builds(lambda quotes, start, rest: "'" * quotes + start + rest, st.integers(0, 3),
                         st.sampled_from(["=", "+", "-", "@", "\t", "\r"]), text)
cell = st.one_of(text, formula_like, st.builds(lambda quotes, rest: "'" * quotes + rest, st.integers(1, 3), text))


@st.composite
def conversations(draw, multi_turn: bool = True, system: bool = True, with_tags: bool = False, texts=text):
    turns = draw(st.integers(1, 3)) if multi_turn else 1
    messages = [Message("system", draw(texts))] if system and draw(st.booleans()) else []
    for _ in range(turns):
        messages += [Message("user", draw(texts)), Message("assistant", draw(texts))]
    return Conversation(tuple(messages), draw(tags) if with_tags else ())


CASES = {
    "alpaca": conversations(),
    "sharegpt": conversations(),
    "openai": conversations(with_tags=True),
    "lf-v1": conversations(with_tags=True),
    "csv": conversations(multi_turn=False, texts=cell),
}


@pytest.mark.parametrize("fmt", formats.FORMATS)
@pytest.mark.parametrize("jsonl", [True, False])
def test_round_trip_is_exact(fmt, jsonl):
    if fmt == "csv" and not jsonl:
        pytest.skip("csv has one layout")

    @settings(max_examples=60, deadline=None)
    @given(st.lists(CASES[fmt], min_size=1, max_size=5))
    def check(convs):
        name = "x.csv" if fmt == "csv" else ("x.jsonl" if jsonl else "x.json")
        back = formats.read_bytes(formats.dumps(convs, fmt, jsonl=jsonl), name)
        assert back.format == fmt and not back.errors
        assert [r.conversation for r in back.records] == convs

    check()


def test_csv_export_neutralises_formulas_and_reads_back_exactly():
    texts = ['=HYPERLINK("http://evil")', "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=already quoted",
             "''-two quotes", "'plain quote", "it's = fine", "- a bullet"]
    convs = [Conversation.qa(t, f"answer to {t}") for t in texts]
    data = formats.dumps(convs, "csv")
    cells = [row[0] for row in csv.reader(io.StringIO(data.decode(), newline=""))][1:]
    # What a spreadsheet sees: no cell starts with a formula character.
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert cells == ["'" + '=HYPERLINK("http://evil")', "'+1", "'-2", "'@SUM(A1)", "'\tx", "'\rx",
                     "''=already quoted", "'" * 3 + "-two quotes", "'plain quote", "it's = fine", "'- a bullet"]
    back = formats.read_bytes(data, "x.csv")
    assert not back.errors and [r.conversation for r in back.records] == convs


def test_csv_import_undoes_one_quote_before_a_formula_character():
    data = b"question,answer\n'=1+1,''@x\n'not a formula,=2\n"
    result = formats.read_bytes(data, "x.csv")
    assert [r.conversation for r in result.records] == [Conversation.qa("=1+1", "'@x"),
                                                          Conversation.qa("'not a formula", "=2")]


def test_write_file_checks_suffix(tmp_path):
    conv = [Conversation.qa("q", "a")]
    assert formats.write_file(conv, tmp_path / "a.json", "alpaca") == 1
    assert json.loads((tmp_path / "a.json").read_text()) == [{"instruction": "q", "input": "", "output": "a"}]
    with pytest.raises(ValueError, match=".csv file"):
        formats.write_file(conv, tmp_path / "a.json", "csv")
