"""Snapshots: deterministic sha256, hash-stable split, verified reading."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.conversation import Conversation
from data.snapshot import SnapshotError, is_eval, read_snapshot, write_snapshot


def example(q: str, a: str = "answer", source: str = "teach"):
    conv = Conversation.qa(q, a)
    return SimpleNamespace(content_hash=conv.content_hash(), messages=conv.to_dicts(), tags=[], source=source,
                           tools=None)


async def test_snapshot_twice_gives_same_sha_and_reads_back(store, tmp_path):
    convs = [Conversation.qa(f"question {i}", f"answer {i}") for i in range(60)]
    await store.import_conversations(convs, approve=True)
    await store.add_example(Conversation.qa("pending one", "x"), source="teach")  # not approved: left out
    first = await store.create_snapshot(tmp_path / "s1")
    second = await store.create_snapshot(tmp_path / "s2")
    assert first.sha256 == second.sha256
    assert first.counts.total == 60
    assert (tmp_path / "s1" / "examples.jsonl").read_bytes() == (tmp_path / "s2" / "examples.jsonl").read_bytes()
    snap = read_snapshot(tmp_path / "s1")
    assert len(snap.train) + len(snap.eval) == 60 and len(snap.eval) == first.counts.eval
    assert {c.content_hash() for c in snap.train + snap.eval} == {c.content_hash() for c in convs}
    assert all(is_eval(i, 0.1) for i in snap.ids["eval"])


def test_snapshot_refuses_non_empty_dir_and_detects_tampering(tmp_path):
    write_snapshot([example("a"), example("b")], tmp_path / "s")
    with pytest.raises(SnapshotError, match="immutable"):
        write_snapshot([example("a")], tmp_path / "s")
    path = tmp_path / "s" / "examples.jsonl"
    path.write_text(path.read_text().replace("answer", "answeR"))
    with pytest.raises(SnapshotError, match="does not match its manifest"):
        read_snapshot(tmp_path / "s")
    with pytest.raises(SnapshotError, match="manifest.json is missing"):
        read_snapshot(tmp_path)


def test_eval_fraction_is_about_ten_percent():
    ids = [example(f"q{i}").content_hash for i in range(5000)]
    share = sum(is_eval(i, 0.1) for i in ids) / len(ids)
    assert 0.085 < share < 0.115


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=1, max_size=30, unique=True),
    added=st.lists(st.text(min_size=1, max_size=20).filter(str.strip), max_size=30, unique=True),
)
def test_adding_examples_never_moves_one_between_splits(tmp_path_factory, before, added):
    base = tmp_path_factory.mktemp("snap")
    first = write_snapshot([example(q) for q in before], base / "a")
    second = write_snapshot([example(q) for q in before + added], base / "b")
    split_of = {}
    for name in ("a", "b"):
        for line in (base / name / "examples.jsonl").read_text().split("\n")[:-1]:
            record = json.loads(line)
            split_of.setdefault(record["id"], set()).add(record["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert len(read_snapshot(base / "b").ids["train"]) == second.counts.train
    assert second.counts.total >= first.counts.total
