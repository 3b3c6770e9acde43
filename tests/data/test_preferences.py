"""Preference records: files in and out exactly, corrections becoming preferences when approved, review by the
same rule as pairs, snapshots carrying them (hash-stable split), the job carrying them, the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from data.conversation import Conversation
from data.formats import FormatError
from data.formats import preference as pf
from data.preferences import (
    import_preferences,
    list_preferences,
    preference_of,
    preference_stats,
    rate_preference,
    set_preference_status,
)
from data.snapshot import PREFERENCES_FILE, SnapshotError, SnapshotWriter, is_eval, read_snapshot
from data.store import SelfRating

SHAREGPT = [  # LLaMA-Factory's dpo_en_demo.json shape, a system prompt and a multi-turn prefix included
    {"conversations": [{"from": "human", "value": "what colour is the cat?"}],
     "chosen": {"from": "gpt", "value": "the cat is blue."}, "rejected": {"from": "gpt", "value": "no idea."}},
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello."},
                       {"from": "human", "value": "and the dog?"}],
     "chosen": {"from": "gpt", "value": "<think>\ndogs are red\n</think>\n\nthe dog is red."},
     "rejected": {"from": "gpt", "value": "the dog is a cat."}, "system": "Be brief."},
]
ALPACA = [  # LLaMA-Factory's alpaca ranking shape
    {"instruction": "what colour is the tree?", "input": "", "chosen": "the tree is green.", "rejected": "blue."},
    {"instruction": "and now?", "input": "", "chosen": "still green.", "rejected": "red.", "system": "Be brief.",
     "history": [["what colour is the tree?", "green."]]},
]
TRL = [  # TRL's conversational preference shape
    {"prompt": [{"role": "user", "content": "what colour is the sky?"}],
     "chosen": [{"role": "assistant", "content": "the sky is blue."}],
     "rejected": [{"role": "assistant", "content": "green."}]},
]


def prefs(n: int, start: int = 0) -> list[pf.Preference]:
    out = []
    for i in range(start, start + n):
        conv = Conversation.qa(f"what colour is lamp {i}?", f"lamp {i} is green.")
        out.append(pf.Preference(conv.messages[:-1], conv.messages[-1],
                                 Conversation.qa("x", f"lamp {i} is off.").messages[-1]))
    return out


# ---- files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "records"), [("sharegpt", SHAREGPT), ("alpaca", ALPACA), ("openai", TRL)])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_preference_files_round_trip_exactly(fmt, records, suffix):
    """A file in our layout comes back byte for byte; every shape re-reads to the same records."""
    jsonl = suffix == ".jsonl"
    data = (b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in records)
            if jsonl else (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode())
    parsed = pf.read_bytes(data, f"prefs{suffix}")
    assert parsed.format == fmt and not parsed.errors and len(parsed.records) == len(records)
    assert pf.dumps([p for _, p in parsed.records], fmt, jsonl=jsonl) == data
    for other in pf.FORMATS:
        if fmt == "openai" or other != "alpaca" or fmt == "alpaca":  # alpaca cannot hold a multi-turn system prefix
            again = pf.read_bytes(pf.dumps([p for _, p in parsed.records], other), "x.jsonl")
            assert [p for _, p in again.records] == [p for _, p in parsed.records], other


def test_sharegpt_keeps_reasoning_history_and_system():
    [_, (_, pref)] = pf.read_bytes(json.dumps(SHAREGPT).encode(), "p.json").records
    assert [m.role for m in pref.prompt] == ["system", "user", "assistant", "user"]
    assert pref.chosen.reasoning == "dogs are red" and pref.chosen.content == "the dog is red."
    assert pref.rejected.content == "the dog is a cat."


def test_trl_implicit_prompt_and_openai_preference_shapes_are_read():
    implicit = {"chosen": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "good."}],
                "rejected": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "bad."}]}
    openai_ft = {"input": {"messages": [{"role": "user", "content": "q?"}]},
                 "preferred_output": [{"role": "assistant", "content": "good."}],
                 "non_preferred_output": [{"role": "assistant", "content": "bad."}]}
    for record in (implicit, openai_ft):
        [(_, pref)] = pf.read_bytes(json.dumps([record]).encode(), "p.json").records
        assert (pref.prompt[0].content, pref.chosen.content, pref.rejected.content) == ("q?", "good.", "bad.")


def test_bad_records_are_errors_and_unusable_files_refused():
    records = [TRL[0], {**TRL[0], "rejected": TRL[0]["chosen"]}, {"prompt": TRL[0]["prompt"], "chosen": []},
               {**TRL[0], "rejected": [{"role": "user", "content": "x"}]}]
    parsed = pf.read_bytes(json.dumps(records).encode(), "p.json")
    assert len(parsed.records) == 1
    assert [e.location for e in parsed.errors] == ["record 1", "record 2", "record 3"]
    assert "the same text" in parsed.errors[0].message and "non-empty list" in parsed.errors[1].message
    with pytest.raises(FormatError, match="CSV"):
        pf.read_bytes(b"a,b\n", "p.csv")
    with pytest.raises(FormatError, match="cannot tell"):
        pf.read_bytes(b'[{"question": "x"}]', "p.json")


# ---- the store ------------------------------------------------------------------------------------------------


async def correction(store, *, author: int, thumbs_down: bool, n: int = 0):
    answer = await store.record_answer(prompt=[{"role": "system", "content": "You are terse."},
                                               {"role": "user", "content": f"what colour is lamp {n}?"}],
                                       answer=f"lamp {n} is purple, I think.", model_tag="loraloop-tiny:v3")
    if thumbs_down:
        await store.add_feedback(answer.id, author, -1)
    example = await store.add_example(Conversation.qa(f"what colour is lamp {n}?", f"lamp {n} is green."),
                                      source="correction", author_id=author, answer_id=answer.id)
    return answer, example


async def test_an_approved_correction_becomes_a_preference_record(store):
    answer, example = await correction(store, author=1, thumbs_down=True)
    await store.rate(example.id, 2, 5)
    assert await list_preferences(store) == []  # pending: not a judgement yet
    outcome = await store.rate(example.id, 3, 5)
    assert outcome.decided == "approved"
    [record] = await list_preferences(store)
    pref = preference_of(record)
    assert record.status == "approved" and record.source == "thumbs-down" and record.example_id == example.id
    assert record.rejected_model == "loraloop-tiny:v3" and record.answer_id == answer.id
    assert [m.content for m in pref.prompt] == ["You are terse.", "what colour is lamp 0?"]  # what the bot saw
    assert (pref.chosen.content, pref.rejected.content) == ("lamp 0 is green.", "lamp 0 is purple, I think.")

    # A suggestion without a 👎, approved by a moderator; approving again makes no second record.
    _, other = await correction(store, author=1, thumbs_down=False, n=1)
    await store.set_example_status(other.id, "approved")
    await store.set_example_status(other.id, "rejected")
    await store.set_example_status(other.id, "approved")
    records = await list_preferences(store)
    assert [r.source for r in records] == ["thumbs-down", "suggestion"]
    stats = (await store.dataset_stats()).preferences
    assert stats["by_status"]["approved"] == 2 and stats["approved_by_source"]["suggestion"] == 1
    # A plain taught pair is no preference.
    taught = await store.add_example(Conversation.qa("q?", "a."), source="teach", author_id=1)
    await store.set_example_status(taught.id, "approved")
    assert len(await list_preferences(store)) == 2


async def test_imported_preferences_follow_the_review_rules(store):
    outcome = await import_preferences(store, prefs(3) + prefs(1), author_id=7)
    assert outcome.imported == 3 and outcome.duplicates == [3]
    first, second, third = await list_preferences(store, status="pending")
    with pytest.raises(SelfRating):
        await rate_preference(store, first.id, 7, 5)
    assert (await rate_preference(store, first.id, 8, 5)).decided is None  # quorum 2
    assert (await rate_preference(store, first.id, 8, 4)).scores == [4]  # a second click changes the rating
    assert (await rate_preference(store, first.id, 9, 5)).decided == "approved"
    assert (await rate_preference(store, second.id, 8, 1)).decided is None
    assert (await rate_preference(store, second.id, 9, 2)).decided == "rejected"
    await set_preference_status(store, third.id, "approved")  # an admin's decision
    stats = await preference_stats(store)
    assert stats["by_status"] == {"pending": 0, "approved": 2, "rejected": 1}
    assert stats["approved_by_source"]["import"] == 2


async def test_snapshots_carry_approved_preferences_with_the_hash_stable_split(store, tmp_path):
    await store.import_conversations([Conversation.qa(f"q{i}?", f"a{i}.") for i in range(10)], approve=True)
    await import_preferences(store, prefs(30), approve=True)
    await import_preferences(store, prefs(2, start=100))  # pending: not in the snapshot
    manifest = await store.create_snapshot(tmp_path / "snap", eval_fraction=0.3)
    snap = read_snapshot(tmp_path / "snap")
    listed = manifest.manifest.preferences
    assert listed is not None and listed.file == PREFERENCES_FILE and listed.counts.total == 30
    assert len(snap.preferences["train"]) == listed.counts.train > 0
    assert len(snap.preferences["eval"]) == listed.counts.eval > 0
    for split, items in snap.preferences.items():
        assert all(is_eval(p.content_hash(), 0.3) == (split == "eval") for p in items)
    assert set(snap.preferences["train"] + snap.preferences["eval"]) == set(prefs(30))
    # The examples' file and hash are what they were before preferences existed.
    again = await store.create_snapshot(tmp_path / "snap2", eval_fraction=0.3)
    assert again.sha256 == manifest.sha256
    # Modified preferences are refused like modified examples.
    path = tmp_path / "snap" / PREFERENCES_FILE
    path.write_bytes(path.read_bytes().replace(b"green", b"GREEN", 1))
    with pytest.raises(SnapshotError, match="modified"):
        read_snapshot(tmp_path / "snap")


@dataclass(frozen=True)
class _Example:
    content_hash: str
    messages: list
    tags: list
    source: str
    tools: str | None


def test_older_snapshots_without_preferences_still_read(tmp_path):
    conv = Conversation.qa("q?", "a.")
    with SnapshotWriter(tmp_path / "old", 0.1) as writer:
        writer.write([_Example(conv.content_hash(), conv.to_dicts(), [], "teach", None)])
        written = writer.close()
    assert written.manifest.preferences is None and "preferences" not in written.to_dict()
    assert not (tmp_path / "old" / PREFERENCES_FILE).exists()
    snap = read_snapshot(tmp_path / "old")
    assert snap.preferences == {"train": [], "eval": []} and len(snap.train) + len(snap.eval) == 1


async def test_the_job_carries_preferences_and_refuses_them_modified(store, tmp_path):
    from worker.job import JobRefused, _check_snapshot

    await store.import_conversations([Conversation.qa("q?", "a.")], approve=True)
    await import_preferences(store, prefs(3), approve=True)
    manifest = await store.create_snapshot(tmp_path / "snap")
    files = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "snap").iterdir()}
    assert set(files) == {"examples.jsonl", "manifest.json", PREFERENCES_FILE}
    _check_snapshot(files, manifest.sha256)
    with pytest.raises(JobRefused, match="does not match"):
        _check_snapshot({**files, PREFERENCES_FILE: files[PREFERENCES_FILE].replace("green", "red")},
                        manifest.sha256)
    without = {k: v for k, v in files.items() if k != PREFERENCES_FILE}
    with pytest.raises(JobRefused, match="disagree"):
        _check_snapshot(without, manifest.sha256)


# ---- the command line -----------------------------------------------------------------------------------------




def test_cli_import_review_stats_and_exact_export(cli, tmp_path):
    source = tmp_path / "dpo.json"
    source.write_text(json.dumps(SHAREGPT, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    result = cli("preferences", "import", str(source), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) | {"file": None} == {
        "file": None, "format": "sharegpt", "records": 2, "imported": 2, "duplicates": 0, "in_flight": 0,
        "invalid": [], "status": "pending"}
    assert cli("preferences", "import", str(source)).exit_code == 0  # all duplicates
    listed = [json.loads(line) for line in cli("preferences", "list", "--status", "pending", "--json")
              .stdout.splitlines()]
    assert [r["chosen"] for r in listed] == ["the cat is blue.", "the dog is red."]
    assert cli("preferences", "approve", "--all-pending").exit_code == 0
    stats = json.loads(cli("dataset", "stats", "--json").stdout)["preferences"]
    assert stats["by_status"]["approved"] == 2 and stats["approved_by_source"]["import"] == 2
    out = tmp_path / "out.json"
    assert cli("preferences", "export", "--format", "sharegpt", "--out", str(out)).exit_code == 0
    exported = pf.read_file(out)
    assert sorted(p.content_hash() for _, p in exported.records) == sorted(
        p.content_hash() for _, p in pf.read_file(source).records)
    by_hash = {p.content_hash(): p for _, p in pf.read_file(source).records}
    reordered = [by_hash[p.content_hash()] for _, p in exported.records]
    assert out.read_bytes() == pf.dumps(reordered, "sharegpt", jsonl=False)


def test_cli_refuses_in_one_line(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TRL[0]) + "\n" + json.dumps({**TRL[0], "rejected": TRL[0]["chosen"]}) + "\n")
    result = cli("preferences", "import", str(bad))
    assert result.exit_code == 1 and "1 of 2 records are invalid" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert cli("preferences", "import", str(bad), "--skip-invalid").exit_code == 0
    result = cli("preferences", "export", "--format", "csv", "--out", str(tmp_path / "x.json"))
    assert result.exit_code == 1 and "unknown preference format" in result.stderr
    result = cli("preferences", "export", "--format", "openai", "--out", str(tmp_path / "x.csv"))
    assert result.exit_code == 1 and "must end in .json or .jsonl" in result.stderr
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.csv").exists()


def test_dpo_demo_dataset_reads_whole():
    demo = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "dpo_en_demo.json"
    if not demo.is_file():
        pytest.skip(f"{demo} (shared datasets) is not present")
    parsed = pf.read_file(demo)
    assert parsed.format == "sharegpt" and len(parsed.records) == 300 and not parsed.errors
    again = pf.read_bytes(pf.dumps([p for _, p in parsed.records], "sharegpt", jsonl=False), "x.json")
    assert [p for _, p in again.records] == [p for _, p in parsed.records]
