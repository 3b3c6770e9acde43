"""👍/👎 on answers: counted per person, not per click, and never from the asker on their own answers; a double
click is an upsert, never an IntegrityError. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from data import quality
from data.quality import Rate
from data.store import Store
from tests.harness.db import feedback_counts

BASE = "base:1b"
MEMBER, ASKER = 77, 78
TRIALS = 30


@pytest.fixture
async def other(store):
    """A second store on the same database: its own connection pool, like a second process."""
    second = Store(store.url, policy=store.policy, connect_args=store.connect_args)
    try:
        yield second
    finally:
        await second.close()


async def _version(store):
    v = await store.create_model_version(name="m", base_model="tiny", ollama_base=BASE)
    await store.update_model_version(v.id, status="registered", in_ollama=True)
    await store.promote(v.id)
    return await store.get_model_version(v.id)


async def _answer(store, version, asker: int | None = None) -> int:
    answer = await store.record_answer(prompt=[{"role": "user", "content": "q?"}], answer="a", model_tag=version.tag,
                                       model_version_id=version.id, user_id=asker)
    return answer.id


async def _people(store, version, up: int, down: int, first: int) -> None:
    """``up + down`` different people, each voting once on an answer of their own asking someone else's."""
    for i in range(up + down):
        await store.add_feedback(await _answer(store, version), first + i, 1 if i < up else -1)


async def test_one_members_twenty_thumbs_down_are_one_vote_and_fire_no_alert(store):
    v1 = await _version(store)
    await _people(store, v1, up=25, down=5, first=1000)  # 17% 👎
    v2 = await _version(store)
    await _people(store, v2, up=20, down=0, first=2000)
    for _ in range(20):
        await store.add_feedback(await _answer(store, v2), MEMBER, -1)
    rates = await quality.feedback_by_version(store)
    assert rates[v2.id] == Rate(20, 1)  # 21 people; the member once
    assert await quality.detect_regression(store, BASE, min_votes=20) is None


async def test_sixty_thumbs_up_on_ones_own_answers_do_not_hide_a_regression(store):
    v1 = await _version(store)
    await _people(store, v1, up=25, down=5, first=1000)
    v2 = await _version(store)
    await _people(store, v2, up=8, down=14, first=2000)  # 64% 👎 from 22 people: a regression
    for _ in range(60):
        await store.add_feedback(await _answer(store, v2, asker=ASKER), ASKER, 1)
    rates = await quality.feedback_by_version(store)
    assert rates[v2.id] == Rate(8, 14)  # the asker's votes on their own answers are not counted at all
    regression = await quality.detect_regression(store, BASE, min_votes=20)
    assert regression is not None and regression.version.id == v2.id
    assert "64% of 22 people against 17% of 30" in regression.text()
    # Someone else's 👍 on the asker's answers counts (once).
    asked = await _answer(store, v2, asker=ASKER)
    await store.add_feedback(asked, 3000, 1)
    assert (await quality.feedback_by_version(store))[v2.id] == Rate(9, 14)


async def test_the_alert_needs_enough_distinct_voters(store):
    v1 = await _version(store)
    await _people(store, v1, up=27, down=3, first=1000)
    v2 = await _version(store)
    await _people(store, v2, up=0, down=19, first=2000)
    for voter in range(2000, 2019):  # each of the 19 votes 👎 on five more answers: still 19 people
        for _ in range(5):
            await store.add_feedback(await _answer(store, v2), voter, -1)
    assert (await quality.feedback_by_version(store))[v2.id] == Rate(0, 19)
    assert await quality.detect_regression(store, BASE, min_votes=20) is None
    await _people(store, v2, up=0, down=1, first=3000)  # the 20th person
    assert await quality.detect_regression(store, BASE, min_votes=20) is not None


async def test_a_persons_vote_on_a_version_is_the_majority_of_their_clicks(store):
    v1 = await _version(store)
    answers = [await _answer(store, v1) for _ in range(3)]
    for answer_id, value in zip(answers, (1, 1, -1), strict=True):
        await store.add_feedback(answer_id, 1, value)  # 2 👍 1 👎: a 👍
    for answer_id, value in zip(answers, (-1, -1, 1), strict=True):
        await store.add_feedback(answer_id, 2, value)  # a 👎
    for answer_id, value in zip(answers[:2], (1, -1), strict=True):
        await store.add_feedback(answer_id, 3, value)  # as many of each: no vote
    assert (await quality.feedback_by_version(store))[v1.id] == Rate(1, 1)


async def test_double_clicks_are_one_vote_without_an_integrity_error(store, other):
    v1 = await _version(store)
    for trial in range(TRIALS):
        answer_id = await _answer(store, v1)
        first, second = (1, -1) if trial % 2 else (1, 1)
        results = await asyncio.gather(store.add_feedback(answer_id, MEMBER, first),
                                       other.add_feedback(answer_id, MEMBER, second), return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        up, down = await feedback_counts(store, answer_id)
        assert up + down == 1 and results[0].value in (first, second)
    print(f"\n[{store.engine.dialect.name}] {TRIALS} concurrent double clicks: no error, one vote each")
