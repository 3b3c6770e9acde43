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
    assert rejected.exit_code == 0 and "1 example rejected (admin decision)" in rejected.output
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


def test_show_prints_one_pair_in_full(cli, pending, tmp_path):
    long_answer = "word " * 60 + "the very end"
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": "a long one", "output": long_answer}]))
    assert cli("dataset", "import", str(tmp_path / "b.json")).exit_code == 0
    example_id = json.loads(cli("review", "list", "--json").stdout)["examples"][-1]["id"]
    assert cli("review", "rate", str(example_id), "2", "--rater", "alice", "--comment", "too wordy").exit_code == 0
    shown = cli("review", "show", str(example_id))
    assert shown.exit_code == 0, shown.output
    flat = " ".join(shown.output.split())
    assert "the very end" in flat and "a long one" in flat  # in full, not the list's preview
    assert "pending" in flat and "import" in flat and "too wordy" in flat and "alice" in flat
    as_json = json.loads(cli("review", "show", str(example_id), "--json").stdout)
    assert as_json["messages"][-1]["content"] == long_answer and as_json["status"] == "pending"
    assert [(r["rater"], r["score"], r["comment"]) for r in as_json["ratings"]] == [("alice", 2, "too wordy")]


def test_show_unknown_id_is_one_line(cli, pending):
    result = cli("review", "show", "999999")
    assert result.exit_code == 1 and "no example #999999" in result.output and "Traceback" not in result.output


def test_rate_by_two_named_raters_decides_by_the_quorum(cli, pending):
    first = cli("review", "rate", str(pending[0]), "5", "--rater", "alice")
    assert first.exit_code == 0, first.output
    assert statuses(cli)["approved"] == 0  # the default quorum is two ratings
    again = cli("review", "rate", str(pending[0]), "4", "--rater", "alice", "--json")
    assert json.loads(again.stdout)["changed"] is True and statuses(cli)["approved"] == 0  # same rater: changed
    second = cli("review", "rate", str(pending[0]), "5", "--rater", "bob", "--json")
    assert json.loads(second.stdout) | {"example": pending[0]} == {
        "example": pending[0], "rater": "bob", "score": 5, "changed": False, "scores": [4, 5], "mean": 4.5,
        "decided": "approved", "status": "approved"}
    assert statuses(cli)["approved"] == 1
    low = [cli("review", "rate", str(pending[1]), "1", "--rater", who) for who in ("alice", "bob")]
    assert "rejected" in low[1].output and statuses(cli)["rejected"] == 1


def test_rate_refuses_out_of_range_and_unknown(cli, pending):
    six = cli("review", "rate", str(pending[0]), "6", "--rater", "alice")
    assert six.exit_code == 1 and "1 to 5" in six.output
    missing = cli("review", "rate", "999999", "3", "--rater", "alice")
    assert missing.exit_code == 1 and "no example #999999" in missing.output
    assert statuses(cli)["pending"] == 5


def test_list_pages(cli, tmp_path):
    rows = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(7)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert cli("dataset", "import", str(tmp_path / "a.json")).exit_code == 0
    second = cli("review", "list", "--page", "2", "--per-page", "3")
    assert second.exit_code == 0, second.output
    assert "question 3" in second.output and "question 5" in second.output
    assert "question 2" not in second.output and "question 6" not in second.output
    assert "page 2 of 3" in second.output
    last = json.loads(cli("review", "list", "--page", "3", "--per-page", "3", "--json").stdout)
    assert (last["count"], last["page"], last["pages"]) == (7, 3, 3)
    assert [e["messages"][0]["content"] for e in last["examples"]] == ["question 6"]
    beyond = cli("review", "list", "--page", "4", "--per-page", "3")
    assert beyond.exit_code == 1 and "3 pages" in beyond.output


def test_rater_names_read_back_and_never_look_like_discord_ids():
    from bot.cli.review import rater_id, rater_name

    for name in ("alice", "a", "bob-2", "zzzzzzzzzzzz"):
        assert rater_id(name) < 0 and rater_name(rater_id(name)) == name
        assert -(2 ** 63) <= rater_id(name)  # fits the ratings' BIGINT
    assert rater_id("Alice") == rater_id("alice") and rater_id("alice") != rater_id("alicf")
    discord_user = 123456789012345678
    assert rater_id(str(discord_user)) == discord_user and rater_name(discord_user) == str(discord_user)
    for bad in ("", "al ice", "thirteen-char", "ünï"):
        with pytest.raises(ValueError, match="--rater"):
            rater_id(bad)


def test_rate_output_and_a_bad_rater_name(cli, pending):
    first = cli("review", "rate", str(pending[0]), "3", "--rater", "alice")
    assert f"#{pending[0]} rated 3 by alice: 1 rating, mean 3.0; pending until 2 ratings" in first.output
    bad = cli("review", "rate", str(pending[0]), "3", "--rater", "al ice")
    assert bad.exit_code == 1 and "--rater" in bad.output and "Traceback" not in bad.output


def test_one_is_singular(cli, tmp_path):
    (tmp_path / "one.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    imported = cli("dataset", "import", str(tmp_path / "one.json"))
    flat = " ".join(imported.output.split())
    assert "(alpaca, 1 record): imported" in flat
    assert "1 pair now waits for review: approve it with" in flat
    example_id = json.loads(cli("review", "list", "--json").stdout)["examples"][0]["id"]
    assert cli("review", "rate", str(example_id), "5", "--rater", "alice").exit_code == 0
    assert "ratings: 1 on 1 example;" in " ".join(cli("dataset", "stats").output.split())
    assert "1 example approved (admin decision)" in cli("review", "approve", str(example_id)).output
    snap = cli("snapshot", "create", "--out", str(tmp_path / "s"))
    assert "1 example (" in " ".join(snap.output.split())
    again = cli("dataset", "import", str(tmp_path / "one.json"), "--skip-invalid")
    assert "(alpaca, 1 record)" in " ".join(again.output.split())
