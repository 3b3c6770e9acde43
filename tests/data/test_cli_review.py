"""``loraloop review list|approve|reject`` and ``snapshot create --allow-empty``: the review path without Discord."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def pending(cli, tmp_path) -> list[int]:
    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    result = cli("dataset", "import", str(tmp_path / "a.json"))
    assert result.exit_code == 0, result.output
    assert "5 pairs now wait for review: approve them with `loraloop review approve --all-pending`" in result.output
    listed = json.loads(cli("review", "list", "--json").stdout)
    assert listed["count"] == 5
    return [e["id"] for e in listed["examples"]]


def statuses(cli) -> dict:
    return json.loads(cli("dataset", "stats", "--json").stdout)["by_status"]


def test_list_shows_the_queue(cli, pending):
    listed = json.loads(cli("review", "list", "--json").stdout)
    first = listed["examples"][0]
    assert first["messages"] == [{"role": "user", "content": "question 0"},
                                 {"role": "assistant", "content": "answer 0"}]
    table = cli("review", "list")
    assert table.exit_code == 0 and "question 0" in table.output and "answer 4" in table.output


def test_approve_and_reject_by_id(cli, pending):
    approved = cli("review", "approve", str(pending[0]), str(pending[1]), "--json")
    assert approved.exit_code == 0, approved.output
    assert json.loads(approved.stdout) == {"status": "approved", "decided_by": "admin", "done": pending[:2],
                                           "refused": []}
    rejected = cli("review", "reject", str(pending[2]))
    assert rejected.exit_code == 0 and "1 examples rejected (admin decision)" in rejected.output
    assert (statuses(cli)["approved"], statuses(cli)["rejected"], statuses(cli)["pending"]) == (2, 1, 2)
    assert [e["id"] for e in json.loads(cli("review", "list", "--json").stdout)["examples"]] == pending[3:]


def test_approve_all_pending_then_snapshot(cli, pending, tmp_path):
    result = cli("review", "approve", "--all-pending")
    assert result.exit_code == 0 and "5 examples approved" in result.output
    assert statuses(cli)["approved"] == 5
    snap = cli("snapshot", "create", "--out", str(tmp_path / "s"), "--json")
    assert snap.exit_code == 0 and json.loads(snap.stdout)["counts"]["total"] == 5


def test_unknown_id_is_refused_and_others_still_decided(cli, pending):
    result = cli("review", "approve", str(pending[0]), "999999")
    assert result.exit_code == 1 and "#999999" in result.output
    assert statuses(cli)["approved"] == 1


def test_ids_or_all_pending_exactly_one(cli, pending):
    assert cli("review", "approve").exit_code == 1
    both = cli("review", "reject", str(pending[0]), "--all-pending")
    assert both.exit_code == 1 and "not both" in both.output
    assert statuses(cli)["pending"] == 5


def test_empty_snapshot_fails_unless_allowed(cli, tmp_path, pending):
    refused = cli("snapshot", "create", "--out", str(tmp_path / "s"))
    assert refused.exit_code == 1 and "no approved examples" in refused.output and "--allow-empty" in refused.output
    assert not (tmp_path / "s").exists()
    allowed = cli("snapshot", "create", "--out", str(tmp_path / "s"), "--allow-empty", "--json")
    assert allowed.exit_code == 0 and json.loads(allowed.stdout)["counts"]["total"] == 0


def test_approved_import_does_not_ask_for_review(cli, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    result = cli("dataset", "import", str(tmp_path / "a.json"), "--approve")
    assert result.exit_code == 0 and "wait for review" not in result.output
