"""Each real dataset of shared/datasets imported, exported in its own format and read again gives its records back
(issue 29): alpaca keeps ``input`` apart from ``instruction``, sharegpt keeps tool calls and tool schemas, lf-v1
keeps ``loss_weight``, and ``--out`` may name a folder not made yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data import formats
from data.formats import preference as pf
from tests.data.lf_v1_files import DATASETS, GLAIVE, v1_sft, write_jsonl

# (file, its format, the export's file name, extra import options)
REAL = [
    ("identity.json", "alpaca", "identity.json", ("--allow-placeholders",)),
    ("alpaca_zh_demo.json", "alpaca", "alpaca_zh.json", ()),
    ("glaive_toolcall_en_demo.json", "sharegpt", "glaive.json", ()),
    ("kto_en_demo.json", "openai", "kto.jsonl", ()),  # its desirable answers; the undesirable ones are never pairs
]


@pytest.fixture(autouse=True)
def _whole_records(cli, monkeypatch):
    """A few of the demos' texts are longer than the default field limit (4,000 characters): all are kept here."""
    monkeypatch.setenv("LORALOOP_MAX_STORED_CHARS", "100000")


def import_approved(cli, path: Path, *options: str) -> dict:
    result = cli("dataset", "import", str(path), "--approve", "--json", *options)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def distinct(records: list[formats.ParsedRecord]) -> list[formats.Conversation]:
    """The records as the store keeps them: one of each content hash, the first."""
    seen: dict[str, formats.Conversation] = {}
    for record in records:
        seen.setdefault(record.conversation.content_hash(), record.conversation)
    return list(seen.values())


@pytest.mark.parametrize(("name", "fmt", "out_name", "options"), REAL, ids=[r[0] for r in REAL])
def test_real_file_round_trips_through_the_store(cli, tmp_path, name, fmt, out_name, options):
    source = DATASETS / name
    if not source.is_file():
        pytest.skip(f"{source} (shared datasets) is not present")
    original = formats.read_file(source)
    assert original.format == fmt and not original.errors
    import_approved(cli, source, *options)
    out = tmp_path / "not" / "made" / "yet" / out_name
    result = cli("dataset", "export", "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    back = formats.read_file(out)
    assert back.format == fmt and not back.errors
    assert [r.conversation for r in back.records] == distinct(original.records)  # in the file's order


def test_alpaca_export_keeps_input_apart_from_instruction(cli, tmp_path):
    source = DATASETS / "alpaca_zh_demo.json"
    if not source.is_file():
        pytest.skip(f"{source} (shared datasets) is not present")
    raw = json.loads(source.read_text(encoding="utf-8"))
    assert sum(1 for r in raw if r["input"]) == 139
    import_approved(cli, source)
    out = tmp_path / "alpaca.json"
    assert cli("dataset", "export", "--format", "alpaca", "--out", str(out)).exit_code == 0
    exported = json.loads(out.read_text(encoding="utf-8"))

    def fields(records: list[dict]) -> list[tuple[str, str, str]]:
        return [(r["instruction"], r["input"], r["output"]) for r in records]

    assert fields(exported) == fields(list({json.dumps(r, ensure_ascii=False): r for r in raw}.values()))


def test_v1_file_round_trips_with_tool_calls_tools_and_loss_weights(cli, tmp_path):
    if not GLAIVE.is_file():
        pytest.skip(f"{GLAIVE} (shared datasets) is not present")
    v1 = [v1_sft(r) for r in json.loads(GLAIVE.read_text(encoding="utf-8"))]
    source = write_jsonl(tmp_path / "glaive_v1.jsonl", v1)
    original = formats.read_file(source)
    assert original.format == "lf-v1" and not original.errors
    report = import_approved(cli, source)
    assert report["imported"] == len(distinct(original.records))
    out = tmp_path / "export" / "glaive_v1.jsonl"
    assert cli("dataset", "export", "--format", "lf-v1", "--out", str(out)).exit_code == 0
    back = formats.read_file(out)
    assert [r.conversation for r in back.records] == distinct(original.records)  # in the file's order
    # The file itself: the same records as v1 wrote them (each loss_weight, each tool call's JSON, the tools).
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert list(map(_comparable, exported)) == list(dict.fromkeys(map(_comparable, v1)))


def _comparable(record: dict) -> str:
    """A v1 record as sorted JSON, each tool call's value parsed (its text may escape non-ASCII or not)."""
    messages = [{**m, "content": [{**p, "value": json.loads(p["value"])} if p["type"] == "tool_call" else p
                                  for p in m["content"]]} for m in record["messages"]]
    return json.dumps({**record, "messages": messages}, sort_keys=True, ensure_ascii=False)


def test_preference_export_creates_the_folder(cli, tmp_path):
    source = DATASETS / "dpo_en_demo.json"
    if not source.is_file():
        pytest.skip(f"{source} (shared datasets) is not present")
    assert cli("preferences", "import", str(source), "--approve").exit_code == 0
    out = tmp_path / "a" / "b" / "dpo.json"
    result = cli("preferences", "export", "--format", "sharegpt", "--out", str(out))
    assert result.exit_code == 0, result.output
    back = pf.read_file(out)
    original = {p.content_hash(): p for _, p in reversed(pf.read_file(source).records)}  # the first of each
    assert {p.content_hash(): p for _, p in back.records} == original
