"""CSV headers people have, --columns for the others (CSV and JSON), and LLaMA-Factory dataset_info.json entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data import formats
from data.conversation import Conversation, Message

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
INFO = DATASETS / "dataset_info.json"
needs_info = pytest.mark.skipif(not INFO.is_file(), reason=f"{INFO} (shared datasets) is not present")


@pytest.fixture
def cli(cli, monkeypatch):
    monkeypatch.setenv("LORALOOP_MAX_STORED_CHARS", "20000")  # some of the shared datasets' texts are longer
    return cli


def csv_pairs(text: str, **kwargs) -> list[Conversation]:
    result = formats.read_bytes(text.encode(), "data.csv", **kwargs)
    assert not result.errors, result.errors
    return [r.conversation for r in result.records]


@pytest.mark.parametrize(("header", "row", "question", "answer"), [
    ("instruction,input,output", "Translate,hello,bonjour", "Translate\nhello", "bonjour"),
    ("instruction,input,output", "Say hi,,hi", "Say hi", "hi"),
    ("prompt,completion", "2+2?,4", "2+2?", "4"),
    ("question,answer", "Capital of France?,Paris", "Capital of France?", "Paris"),
    ("query,response", "Who?,Me", "Who?", "Me"),
    ("Question,Answer", "Q,A", "Q", "A"),  # any case
    ("PROMPT , Completion ", "p,c", "p", "c"),  # and surrounding spaces
    ("Instruction,Input,Output,System", "do,it,done,be brief", "do\nit", "done"),
])
def test_every_usual_header_set(header, row, question, answer):
    [conv] = csv_pairs(f"{header}\n{row}\n")
    assert conv.turns[0].content == question and conv.turns[1].content == answer
    assert conv.system == ("be brief" if "System" in header else None)


def test_system_column_optional_and_reasoning_column_read():
    [conv] = csv_pairs("question,answer,system,Complex_CoT\nq,a,sys,because\n")
    assert conv.system == "sys" and conv.turns[1].reasoning == "because"


def test_unknown_header_names_what_is_accepted():
    with pytest.raises(formats.FormatError, match="must name question and answer columns .found: text, label.; "
                                                  "accepted: instruction/input/output"):
        formats.read_bytes(b"text,label\nq,a\n", "x.csv")


def test_columns_map_csv_headers():
    columns = formats.parse_columns("question=text,answer=label,system=persona")
    [conv] = csv_pairs("id,Text,label,persona\n1,hello,world,pirate\n", columns=columns)
    assert conv.to_dicts() == [{"role": "system", "content": "pirate"}, {"role": "user", "content": "hello"},
                               {"role": "assistant", "content": "world"}]


def test_columns_map_json_records_too():
    rows = [{"text": "hello", "label": "world", "persona": "pirate", "id": 1}]
    columns = formats.parse_columns("question=text,answer=label,system=persona")
    result = formats.read_bytes(json.dumps(rows).encode(), "x.json", columns=columns)
    assert result.format == "alpaca" and not result.errors
    assert result.records[0].conversation == Conversation.qa("hello", "world", "pirate")


def test_json_records_with_csv_style_keys_need_no_mapping():
    rows = [{"Question": "Why?", "Complex_CoT": "Think.", "Response": "Because."}]
    result = formats.read_bytes(json.dumps(rows).encode(), "medical.json")
    assert result.format == "alpaca"
    assert result.records[0].conversation.messages[-1] == Message("assistant", "Because.", "Think.")


@pytest.mark.parametrize(("spec", "message"), [
    ("question", "must be NAME=COLUMN"),
    ("colour=red", "unknown name 'colour'"),
    ("", "--columns is empty"),
])
def test_bad_columns_spec(spec, message):
    with pytest.raises(formats.ColumnError, match=message):
        formats.parse_columns(spec)


def test_cli_columns_imports_a_csv(cli, tmp_path):
    (tmp_path / "x.csv").write_text("Text,Label\nhello,world\nhow are you,fine\n")
    result = cli("dataset", "import", str(tmp_path / "x.csv"), "--columns", "question=Text,answer=Label", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["imported"] == 2
    bad = cli("dataset", "import", str(tmp_path / "x.csv"), "--columns", "question")
    assert bad.exit_code == 1 and "NAME=COLUMN" in bad.output


# ---- LLaMA-Factory dataset_info.json ---------------------------------------------------------------------------


@needs_info
def test_dataset_info_entries_resolve_file_formatting_columns_and_tags():
    glaive = formats.dataset_entry(INFO, "glaive_toolcall_en_demo")
    assert glaive.path == DATASETS / "glaive_toolcall_en_demo.json" and glaive.columns.formatting == "sharegpt"
    kto = formats.dataset_entry(INFO, "kto_en_demo")
    assert kto.columns.tags["role_tag"] == "role" and kto.columns.columns["kto_tag"] == "label"
    assert formats.dataset_entry(INFO, "dpo_en_demo").ranking
    with pytest.raises(formats.ColumnError, match="has no dataset 'nope'"):
        formats.dataset_entry(INFO, "nope")


@needs_info
@pytest.mark.parametrize(("name", "records", "kind"), [
    ("identity", 91, "sft"), ("alpaca_zh_demo", 1000, "sft"), ("glaive_toolcall_en_demo", 300, "sft"),
    ("kto_en_demo", 300, "kto"),
])
def test_cli_imports_dataset_info_entries(cli, name, records, kind):
    result = cli("dataset", "import", "--dataset-info", str(INFO), "--name", name, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["records"] == records and report["kind"] == kind and not report["errors"]


@needs_info
def test_dataset_info_tags_turn_role_content_messages_into_sharegpt():
    entry = formats.dataset_entry(INFO, "kto_en_demo")
    result = formats.read_file(entry.path, entry.columns.formatting, 20000, entry.columns)
    assert result.format == "sharegpt" and result.kind == "kto" and not result.errors
    assert len(result.records) == len(result.undesirable) == 150


@needs_info
def test_dataset_info_refusals(cli, tmp_path):
    assert "needs --name" in cli("dataset", "import", "--dataset-info", str(INFO)).output
    missing = cli("dataset", "import", "--dataset-info", str(INFO), "--name", "alpaca_en_demo")
    assert missing.exit_code == 1 and "alpaca_en_demo.json: no such file" in missing.output
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"hub": {"hf_hub_url": "org/data"}}))
    hub = cli("dataset", "import", "--dataset-info", str(info), "--name", "hub")
    assert hub.exit_code == 1 and "no local file_name (it lives at org/data" in hub.output
