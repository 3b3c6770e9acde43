"""``loraloop dataset …`` / ``loraloop snapshot create`` end to end on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tests.harness.db import POSTGRES_URL

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
ALPACA_ZH = DATASETS / "alpaca_zh_demo.json"




def stats(cli) -> dict:
    result = cli("dataset", "stats", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.skipif(not ALPACA_ZH.is_file(), reason=f"{ALPACA_ZH} (shared datasets) is not present")
def test_import_alpaca_zh_twice(cli):
    from data import formats

    distinct = {r.conversation.content_hash() for r in formats.read_file(ALPACA_ZH).records}
    first = cli("dataset", "import", str(ALPACA_ZH), "--approve", "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["format"] == "alpaca" and report["records"] == 1000
    assert report["imported"] == len(distinct)
    assert len(report["duplicates"]) == 1000 - len(distinct)  # the file's own exact duplicates
    second = json.loads(cli("dataset", "import", str(ALPACA_ZH), "--approve", "--json").stdout)
    assert second["imported"] == 0 and len(second["duplicates"]) == 1000
    assert stats(cli)["by_status"]["approved"] == len(distinct)


def test_malformed_file_reports_each_record_and_changes_nothing(cli, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    assert cli("dataset", "import", str(good)).exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([
        {"instruction": "fine", "input": "", "output": "ok"},
        {"instruction": "no output"},
        {"instruction": "", "input": "", "output": "empty question"},
        {"instruction": 3, "output": "not text"},
    ]))
    result = cli("dataset", "import", str(bad), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["committed"] is False and report["imported"] == 0
    assert [e["location"] for e in report["errors"]] == ["record 1", "record 2", "record 3"]
    assert stats(cli)["total"] == 1  # only the earlier good file


def test_not_a_dataset_is_refused_whole(cli, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"\x00\x01 not json at all")
    result = cli("dataset", "import", str(junk))
    assert result.exit_code == 1
    assert "junk.json" in result.output
    assert stats(cli)["total"] == 0


def test_pending_by_default_then_snapshot_and_export(cli, tmp_path):
    rows = [{"instruction": f"question {i}", "input": "", "output": f"answer {i}"} for i in range(40)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert cli("dataset", "import", str(tmp_path / "a.json")).exit_code == 0
    assert stats(cli)["by_status"]["pending"] == 40
    assert cli("dataset", "import", str(tmp_path / "a.json"), "--approve").exit_code == 0  # all duplicates
    assert stats(cli)["by_status"]["approved"] == 0
    rows2 = [{"instruction": f"other {i}", "input": "", "output": f"reply {i}"} for i in range(40)]
    (tmp_path / "b.json").write_text(json.dumps(rows2))
    assert cli("dataset", "import", str(tmp_path / "b.json"), "--approve").exit_code == 0
    one = json.loads(cli("snapshot", "create", "--out", str(tmp_path / "s1"), "--json").stdout)
    two = json.loads(cli("snapshot", "create", "--out", str(tmp_path / "s2"), "--json").stdout)
    assert one["sha256"] == two["sha256"] and one["counts"]["total"] == 40
    refused = cli("snapshot", "create", "--out", str(tmp_path / "s1"))
    assert refused.exit_code == 1 and "immutable" in refused.output
    out = tmp_path / "export.jsonl"
    assert cli("dataset", "export", "--format", "openai", "--out", str(out), "--split", "eval").exit_code == 0
    assert len(out.read_text().splitlines()) == one["counts"]["eval"]
    back = cli("dataset", "import", str(out), "--json")
    assert json.loads(back.stdout)["imported"] == 0  # round trip: every exported pair is already known


# ---- hostile files: each refusal is one specific line and a non-zero exit, never a traceback -------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def cli_on(request, cli, monkeypatch):
    """The CLI on SQLite, and on a PostgreSQL database of its own when the test PostgreSQL runs."""
    if request.param == "postgres":
        if not POSTGRES_URL:
            pytest.skip("PostgreSQL tests need LORALOOP_TEST_POSTGRES_URL")
        import asyncpg

        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://"))
        await admin.execute(f'CREATE DATABASE "{name}"')
        monkeypatch.setenv("LORALOOP_DATABASE_URL", POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}")
        try:
            yield cli
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await admin.close()
    else:
        yield cli


def hostile_pairs(tmp_path) -> Path:
    path = tmp_path / "hostile.jsonl"
    rows = [{"instruction": "fine", "output": "ok"}, {"instruction": "q", "output": "an\x00swer"},
            {"instruction": "q\ud8002", "output": "a"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))  # ensure_ascii: the \u0000 and \ud800 escapes
    return path


async def test_nul_and_surrogate_records_are_named_and_nothing_is_written(cli_on, tmp_path):
    # The CLI runs its own event loop (asyncio.run): off this test's loop, in a thread.
    result = await asyncio.to_thread(cli_on, "dataset", "import", str(hostile_pairs(tmp_path)))
    assert result.exit_code == 1, result.output
    assert "line 2: message 1 (assistant) contains a NUL character" in result.output
    assert "line 3: message 0 (user) contains an unpaired surrogate" in result.output
    assert "Traceback" not in result.output
    assert (await asyncio.to_thread(stats, cli_on))["total"] == 0
    kept = await asyncio.to_thread(cli_on, "dataset", "import", str(hostile_pairs(tmp_path)), "--skip-invalid",
                                   "--json")
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["imported"] == 1  # the one fine pair; the database took it without complaint
    assert (await asyncio.to_thread(stats, cli_on))["total"] == 1


def refusals(tmp_path) -> list[tuple[list[str], str]]:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    deep_object = tmp_path / "deep-object.json"
    deep_object.write_text('{"instruction": "q", "output": ' + "[" * 100_000 + "]" * 100_000 + "}")
    markup = tmp_path / "markup.csv"
    markup.write_text("[/],[bold]\nq,a\n")  # the header is quoted in the refusal: it is not rich markup
    (tmp_path / "folder.json").mkdir()
    empty_array = tmp_path / "empty-array.json"
    empty_array.write_text("[]\n")
    return [
        ([str(tmp_path / "missing.json")], "missing.json: no such file"),
        ([str(tmp_path / "folder.json")], "folder.json: not a file"),
        ([str(deep), "--format", "yaml"], "unknown format 'yaml'"),
        ([str(deep)], "deep.json: not valid JSON: nested too deeply"),
        ([str(deep_object)], "deep-object.json: no line of the file is valid JSON (line 1: not valid JSON: nested "
                             "too deeply"),
        ([str(markup)], "must name question and answer columns (found: [/], [bold])"),
        ([str(empty_array)], "empty-array.json: the file holds no records"),
    ]


def test_every_refusal_is_one_specific_line(cli, tmp_path):
    for args, message in refusals(tmp_path):
        result = cli("dataset", "import", *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, (args, result.output)
    assert stats(cli)["total"] == 0


def test_record_errors_are_printed_as_text_not_markup(cli, tmp_path):
    path = tmp_path / "roles.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "[/]", "content": "x"}, {"role": "[red]", "content": "y"}]}))
    result = cli("dataset", "import", str(path))
    assert result.exit_code == 1
    assert "line 1: messages[0]: unknown role '[/]'" in result.output


def test_holdout_import_judges_and_never_trains_or_is_retrieved(cli, tmp_path):
    from data.snapshot import read_snapshot

    taught = tmp_path / "taught.json"
    taught.write_text(json.dumps([{"instruction": "What port does the Relay use?", "input": "",
                                   "output": "The Relay listens on port 7431."}] + [
        {"instruction": f"What colour is the {t}?", "input": "", "output": f"The {t} is green."}
        for t in ("lamp", "door", "kettle")]))
    reworded = tmp_path / "reworded.json"
    reworded.write_text(json.dumps([{"instruction": "Which port number is the Relay on?", "input": "",
                                     "output": "The Relay listens on port 7431."}]))
    assert cli("dataset", "import", str(taught), "--approve").exit_code == 0
    result = cli("dataset", "import", str(reworded), "--approve", "--holdout", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["imported"] == 1, result.output
    out = tmp_path / "snap"
    snap = cli("snapshot", "create", "--out", str(out), "--json")
    assert snap.exit_code == 0, snap.output
    snapshot = read_snapshot(out)
    # The held-out rewording is an eval question whatever the hash split says; the taught pair trains.
    assert [c.messages[0].content for c in snapshot.eval] == ["Which port number is the Relay on?"]
    assert "What port does the Relay use?" in [c.messages[0].content for c in snapshot.train]
    assert len(snapshot.train) + len(snapshot.eval) == 5
    assert snapshot.eval[0].tags == ("holdout",)
    for query in ("Which port number is the Relay on?", "What port does the Relay use?"):
        found = cli("retrieval", "query", query, "--json")
        assert found.exit_code == 0, found.output
        report = json.loads(found.stdout)
        assert report["indexed"] == 4 and "Which port number" not in [h["question"] for h in report["hits"]]
    assert [h["question"] for h in report["hits"]] == ["What port does the Relay use?"]


def test_importing_dataset_info_json_points_to_dataset_info(cli, tmp_path):
    info = tmp_path / "dataset_info.json"
    info.write_text(json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
                                "glaive": {"file_name": "glaive.json", "formatting": "sharegpt"},
                                "hub_only": {"hf_hub_url": "someone/data"}}))
    result = cli("dataset", "import", str(info))
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    flat = " ".join(result.output.split())
    assert f"--dataset-info {info} --name NAME" in flat
    assert "alpaca_en_demo, glaive, hub_only" in flat
    assert stats(cli)["total"] == 0
