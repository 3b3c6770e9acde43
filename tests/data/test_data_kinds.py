"""Data of the wrong kind is never imported as pairs: preference, KTO and multimodal files, template placeholders,
--skip-invalid that keeps nothing, the length limit's setting. LLaMA-Factory's demo files and small built samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data import formats
from data.formats.kinds import detect_kind

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_file():
        pytest.skip(f"{path} (shared datasets) is not present")
    return path




def by_status(cli) -> dict:
    result = cli("dataset", "stats", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["by_status"]


def snapshot_answers(cli, out: Path) -> list[str]:
    result = cli("snapshot", "create", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    lines = (out / "examples.jsonl").read_text().splitlines()
    return [json.loads(line)["messages"][-1]["content"] for line in lines]


# ---- preference data ------------------------------------------------------------------------------------------


def test_dpo_demo_is_refused_in_one_line_and_nothing_is_written(cli):
    path = dataset("dpo_en_demo.json")
    with pytest.raises(formats.PreferenceData, match=r"preference data \(chosen/rejected answers, 300 records\)"):
        formats.read_file(path)
    result = cli("dataset", "import", str(path), "--approve")
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output  # never 300 per-record errors
    assert "preference data" in result.output and "loraloop preferences import" in result.output
    assert sum(by_status(cli).values()) == 0


@pytest.mark.parametrize("record", [
    {"instruction": "q", "chosen": "good", "rejected": "bad"},  # alpaca-style ranking
    {"chosen_messages": [{"role": "user", "content": "q"}], "rejected_messages": []},  # LLaMA-Factory v1 style
    {"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []},  # OpenAI preference tuning
])
def test_preference_shapes_are_recognised(record):
    assert detect_kind([{"instruction": "q", "output": "a"}, record]) == "preference"
    with pytest.raises(formats.PreferenceData):
        formats.read_bytes(json.dumps(record).encode() + b"\n", "v1_dpo_demo.jsonl")


def test_dataset_info_ranking_entry_is_refused(cli):
    info = dataset("dataset_info.json")
    dataset("dpo_en_demo.json")
    result = cli("dataset", "import", "--dataset-info", str(info), "--name", "dpo_en_demo")
    assert result.exit_code == 1 and "preference" in result.output and "preferences import" in result.output
    assert len(result.output.strip().splitlines()) == 1


# ---- KTO ------------------------------------------------------------------------------------------------------


def test_kto_demo_splits_desirable_from_undesirable():
    path = dataset("kto_en_demo.json")
    raw = json.loads(path.read_text())
    result = formats.read_file(path)
    assert result.kind == "kto" and not result.errors
    bad = [r["messages"][-1]["content"] for r in raw if r["label"] is False]
    assert len(bad) == len(result.undesirable) == 150 and len(result.records) == 150
    assert [r.conversation.messages[-1].content for r in result.undesirable] == bad
    assert not set(bad) & {r.conversation.messages[-1].content for r in result.records}


def test_kto_undesirable_answers_never_reach_the_approved_snapshot(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LORALOOP_MAX_STORED_CHARS", "20000")  # six of its texts are over the default 4000
    path = dataset("kto_en_demo.json")
    raw = json.loads(path.read_text())
    result = cli("dataset", "import", str(path), "--approve", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "kto" and report["rejected"] == 150 and report["imported"] == 300
    statuses = by_status(cli)
    assert (statuses["approved"], statuses["rejected"], statuses["pending"]) == (150, 150, 0)
    answers = snapshot_answers(cli, tmp_path / "snap")
    undesirable = {r["messages"][-1]["content"] for r in raw if r["label"] is False}
    assert len(answers) == 150 and not undesirable & set(answers)
    text = cli("dataset", "import", str(path)).output  # all duplicates now, still says what the file is
    assert "kto" in text


def test_kto_tag_key_and_pending_import(cli, tmp_path):
    rows = [{"instruction": "q1", "output": "good", "kto_tag": True},
            {"instruction": "q2", "output": "bad", "kto_tag": False}]
    (tmp_path / "k.json").write_text(json.dumps(rows))
    result = cli("dataset", "import", str(tmp_path / "k.json"))
    assert result.exit_code == 0, result.output
    assert "1 undesirable answer (label false) stored as rejected" in result.output
    assert "1 pair now waits for review" in result.output
    assert by_status(cli)["pending"] == 1 and by_status(cli)["rejected"] == 1


# ---- multimodal -----------------------------------------------------------------------------------------------


def test_mllm_demo_is_refused_with_its_reason(cli):
    path = dataset("mllm_demo.json")
    with pytest.raises(formats.MultimodalData, match="multimodal records .6 of 6, first record 0: images"):
        formats.read_file(path)
    result = cli("dataset", "import", str(path), "--approve")
    assert result.exit_code == 1 and "refuses them rather than drop their media" in result.output
    assert sum(by_status(cli).values()) == 0


@pytest.mark.parametrize(("record", "reason"), [
    ({"instruction": "<image>What is this?", "output": "a cat"}, "<image> token"),
    ({"conversations": [{"from": "human", "value": "hear <audio>"}, {"from": "gpt", "value": "a bird"}]},
     "<audio> token"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "value": "x.png"}]},
                   {"role": "assistant", "content": [{"type": "text", "value": "a dog"}]}]}, "image_url part"),
    ({"instruction": "q", "output": "a", "videos": ["v.mp4"]}, "videos"),
])
def test_media_tokens_keys_and_parts_are_found(record, reason):
    rows = [{"instruction": "plain", "output": "text"}, record]
    assert detect_kind(rows) == "multimodal"
    with pytest.raises(formats.MultimodalData, match=f"first record 1: {reason}"):
        formats.read_bytes(json.dumps(rows).encode(), "m.json")


def test_plain_pairs_are_sft():
    assert detect_kind([{"instruction": "what is <b>?", "output": "bold"}]) == "sft"


# ---- placeholders ---------------------------------------------------------------------------------------------


def test_identity_placeholders_are_not_approved_unfilled(cli):
    path = dataset("identity.json")
    refused = cli("dataset", "import", str(path), "--approve")
    assert refused.exit_code == 1
    assert "template placeholders ({{author}}, {{name}})" in refused.output
    assert "--set author=VALUE --set name=VALUE" in refused.output and "--allow-placeholders" in refused.output
    assert sum(by_status(cli).values()) == 0
    pending = cli("dataset", "import", str(path))
    assert pending.exit_code == 0 and "warning:" in pending.output and "hold template placeholders" in pending.output
    assert by_status(cli)["pending"] == 91 and by_status(cli)["approved"] == 0


def test_identity_set_fills_placeholders(cli, tmp_path):
    path = dataset("identity.json")
    result = cli("dataset", "import", str(path), "--approve", "--set", "name=Loraloop", "--set", "author=the Guild")
    assert result.exit_code == 0, result.output
    answers = snapshot_answers(cli, tmp_path / "snap")
    assert len(answers) == 91 and not any("{{" in a for a in answers)
    assert any("Loraloop" in a for a in answers) and any("the Guild" in a for a in answers)


def test_allow_placeholders_approves_them_as_written(cli, tmp_path):
    path = dataset("identity.json")
    result = cli("dataset", "import", str(path), "--approve", "--allow-placeholders", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["placeholders"] == ["author", "name"]
    assert any("{{name}}" in a for a in snapshot_answers(cli, tmp_path / "snap"))


# ---- skip-invalid and the length limit ------------------------------------------------------------------------


def test_skip_invalid_that_imports_nothing_fails(cli, tmp_path):
    rows = [{"instruction": "no answer"}, {"instruction": "", "output": "no question"}]
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    result = cli("dataset", "import", str(tmp_path / "bad.json"), "--skip-invalid")
    assert result.exit_code == 1
    assert "imported 0 of 2" in result.output
    assert sum(by_status(cli).values()) == 0


def test_skip_invalid_with_only_duplicates_left_fails_too(cli, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    assert cli("dataset", "import", str(tmp_path / "a.json")).exit_code == 0
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "x"}]))
    result = cli("dataset", "import", str(tmp_path / "b.json"), "--skip-invalid")
    assert result.exit_code == 1 and "imported 0 of 2" in result.output


def test_length_error_names_the_setting(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LORALOOP_MAX_STORED_CHARS", "20")
    (tmp_path / "long.json").write_text(json.dumps([{"instruction": "q", "output": "x" * 30}]))
    result = cli("dataset", "import", str(tmp_path / "long.json"))
    assert result.exit_code == 1
    assert "over the limit of 20 (LORALOOP_MAX_STORED_CHARS raises it for file imports)" in result.output
