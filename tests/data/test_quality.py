"""data.quality: per-version feedback, the regression alarm, the 👎 answers list and blind-comparison tallies,
on a real store (SQLite, and PostgreSQL when it runs)."""

from __future__ import annotations

import random

import pytest

from data import quality
from data.conversation import Conversation
from data.quality import Rate, Tally, two_proportion_z, wilson

BASE = "base:1b"


def test_wilson_interval_matches_the_textbook_values() -> None:
    lo, hi = wilson(8, 10)  # the classic example: 8 of 10 → about 0.490–0.943
    assert round(lo, 3) == 0.490 and round(hi, 3) == 0.943
    assert wilson(0, 0) == (0.0, 1.0)  # no votes: no knowledge
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17  # never a zero-width interval at the edge
    narrow, wide = wilson(80, 100), wilson(8, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_two_proportion_z_separates_a_clear_difference_from_noise() -> None:
    assert two_proportion_z(30, 50, 10, 50) > 3.9  # 60% vs 20% 👎
    assert abs(two_proportion_z(6, 20, 4, 20)) < 1.96  # 30% vs 20%: could be chance
    assert two_proportion_z(1, 0, 1, 10) == 0.0


async def _version(store, promote: bool = True):
    v = await store.create_model_version(name="m", base_model="tiny", ollama_base=BASE)
    await store.update_model_version(v.id, status="registered", in_ollama=True)
    if promote:
        await store.promote(v.id)
    return await store.get_model_version(v.id)


async def _answers_with_votes(store, version, up: int, down: int, start_user: int = 1000) -> list[int]:
    """``up + down`` answers by ``version`` (None: the base), each voted once by a different user."""
    ids = []
    for i in range(up + down):
        answer = await store.record_answer(prompt=[{"role": "user", "content": f"q{i}?"}], answer=f"a{i}",
                                           model_tag=version.tag if version else BASE,
                                           model_version_id=version.id if version else None)
        await store.add_feedback(answer.id, start_user + i, 1 if i < up else -1)
        ids.append(answer.id)
    return ids


async def test_feedback_is_counted_per_version_and_for_the_base(store) -> None:
    await _answers_with_votes(store, None, up=3, down=1)
    v1 = await _version(store)
    ids = await _answers_with_votes(store, v1, up=2, down=2)
    await store.add_feedback(ids[0], 1000, -1)  # a changed mind counts once, as its last click
    rates = await quality.feedback_by_version(store)
    assert rates[None] == Rate(3, 1) and rates[v1.id] == Rate(1, 3)
    assert rates[v1.id].to_dict()["up_rate"] == 0.25 and "95% CI" in rates[v1.id].text()
    assert await quality.previous_version(store) == (True, None)  # v1's predecessor is the base


async def test_a_clear_regression_alerts_once_and_noise_never(store) -> None:
    v1 = await _version(store)
    await _answers_with_votes(store, v1, up=24, down=6)  # 20% 👎
    v2 = await _version(store)
    assert (await quality.previous_version(store))[1].id == v1.id
    await _answers_with_votes(store, v2, up=7, down=5, start_user=2000)  # 42% 👎, but 12 votes only
    assert await quality.detect_regression(store, BASE, min_votes=20) is None
    await _answers_with_votes(store, v2, up=5, down=13, start_user=3000)  # now 60% 👎 of 30
    regression = await quality.detect_regression(store, BASE, min_votes=20)
    assert regression is not None and regression.version.id == v2.id and regression.previous_tag == v1.tag
    assert regression.z > 1.96 and f"`{v2.tag}` gets more 👎 than `{v1.tag}`" in regression.text()
    assert await quality.claim_alert(store, regression) is True
    assert await quality.claim_alert(store, regression) is False  # experts are told once


async def test_as_many_thumbs_down_as_before_is_no_regression(store) -> None:
    v1 = await _version(store)
    await _answers_with_votes(store, v1, up=20, down=10)
    v2 = await _version(store)
    await _answers_with_votes(store, v2, up=18, down=12, start_user=2000)  # 40% vs 33%: noise at n=30
    assert await quality.detect_regression(store, BASE, min_votes=20) is None


async def test_thumbs_down_answers_wait_for_a_better_one_until_someone_writes_it(store) -> None:
    up, down, other = await _answers_with_votes(store, None, up=1, down=2)
    needing = await quality.answers_needing_better(store)
    assert [a.id for a in needing] == [down, other] and quality.question_of(needing[0]) == "q1?"
    await store.add_example(Conversation.qa("q1?", "the right answer"), source="correction", answer_id=down)
    assert [a.id for a in await quality.answers_needing_better(store)] == [other]


async def test_a_blind_comparison_is_randomised_and_tallied_per_expert(store) -> None:
    v1 = await _version(store, promote=False)
    rows = [{"kind": "eval", "question": f"q{i}", "reference": "r", "candidate": f"cand {i}", "active": f"old {i}"}
            for i in range(6)] + [{"kind": "probe", "question": "same", "candidate": "x", "active": "x"}]
    comparison = await quality.create_comparison(store, run_id=None, candidate=v1, opponent_tag=BASE, rows=rows, k=4,
                                                 rng=random.Random(3))
    items = comparison.items
    assert len(items) == 4 and {it["candidate"] for it in items} == {"a", "b"}  # the order is drawn per question
    for it in items:
        assert {it["a"], it["b"]} == {f"cand {it['question'][1:]}", f"old {it['question'][1:]}"}
        assert it[it["candidate"]].startswith("cand ")
    # Expert 1 always prefers the candidate, expert 2 the old model on half and a tie on the rest.
    for i, it in enumerate(items):
        assert await quality.vote(store, comparison.id, i, 1, it["candidate"]) is True
    assert await quality.vote(store, comparison.id, 0, 1, "tie") is False  # one vote per expert and question
    half = await quality.tally(store, comparison, quorum=2)
    assert not half.complete and not half.not_worse and "1/2 experts" in half.text()
    for i, it in enumerate(items):
        other = "b" if it["candidate"] == "a" else "a"
        assert await quality.next_item(store, comparison, 2) == i
        await quality.vote(store, comparison.id, i, 2, other if i < 2 else "tie")
    assert await quality.next_item(store, comparison, 2) is None
    done = await quality.tally(store, comparison, quorum=2)
    assert (done.wins, done.losses, done.ties, done.experts_done) == (4, 2, 2, 2)
    assert done.win_rate == 5 / 8 and done.not_worse and "win rate 62%" in done.text()
    with pytest.raises(quality.QualityError):
        await quality.vote(store, comparison.id, 9, 3, "a")


def test_a_candidate_the_experts_prefer_less_is_worse() -> None:
    assert not Tally(wins=1, losses=4, ties=1, experts_done=2, quorum=2).not_worse
    assert Tally(wins=2, losses=2, ties=2, experts_done=2, quorum=2).not_worse  # even is not worse
    assert not Tally(wins=5, losses=0, ties=0, experts_done=1, quorum=2).not_worse  # no quorum yet
