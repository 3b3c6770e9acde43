"""The store on a real database: examples, duplicates, ratings, review queue, feedback, model versions."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text

from data.conversation import Conversation, InvalidConversation, Message
from data.models import utcnow
from data.store import (
    DuplicateExample,
    InvalidRating,
    NoRollbackTarget,
    NotFound,
    SelfRating,
    StoreError,
    Superseded,
    UnstorableText,
)
from tests.harness.db import feedback_counts

AUTHOR, ALICE, BOB, CAROL = 1, 2, 3, 4


def qa(q: str, a: str = "an answer") -> Conversation:
    return Conversation.qa(q, a)


async def test_migrated_schema_matches_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from data.models import Base

    def diff(conn):
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)

    from alembic.script import ScriptDirectory

    from data.migrations import alembic_config

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        version = (await conn.execute(text("select version_num from alembic_version"))).scalar()
    # One head (no branch left unchained), and the database is at it.
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert int(version) >= 3


async def test_add_example_refuses_normalised_duplicates(store):
    first = await store.add_example(qa("What is  LoRA?", "Low-rank adaptation."), source="teach", author_id=AUTHOR)
    assert first.status == "pending"
    with pytest.raises(DuplicateExample) as info:
        await store.add_example(qa(" What is LoRA? ", "Low-rank\nadaptation."), source="teach", author_id=ALICE)
    assert info.value.existing_id == first.id
    assert "already in the dataset" in str(info.value)
    assert len(await store.list_examples()) == 1


async def test_add_example_rejects_bad_input_specifically(store):
    with pytest.raises(InvalidConversation, match="last turn must be the assistant"):
        await store.add_example(Conversation.from_dicts([{"role": "user", "content": "hi"}]), source="teach")
    with pytest.raises(InvalidConversation, match="over the limit of 10"):
        await store.add_example(qa("q" * 11), source="teach", max_chars=10)
    with pytest.raises(StoreError, match="unknown source"):
        await store.add_example(qa("q"), source="magic")
    assert await store.list_examples() == []


async def test_ratings_quorum_approve_reject_and_no_self_rating(store):
    good = await store.add_example(qa("good"), source="teach", author_id=AUTHOR)
    bad = await store.add_example(qa("bad"), source="teach", author_id=AUTHOR)
    with pytest.raises(SelfRating):
        await store.rate(good.id, AUTHOR, 5)
    with pytest.raises(InvalidRating):
        await store.rate(good.id, ALICE, 6)
    first = await store.rate(good.id, ALICE, 5)
    assert first.decided is None and first.example.status == "pending"  # quorum is 2
    second = await store.rate(good.id, BOB, 4, "fine")
    assert second.decided == "approved" and second.mean == 4.5 and second.disagreement == 0.5
    await store.rate(bad.id, ALICE, 1)
    outcome = await store.rate(bad.id, BOB, 2)
    assert outcome.decided == "rejected"
    # Re-rating replaces the earlier score instead of adding one.
    again = await store.rate(bad.id, BOB, 1)
    assert again.scores == [1, 1]
    assert (await store.get_example(good.id)).approved_at is not None


async def test_undecided_middle_waits_for_more_ratings(store):
    ex = await store.add_example(qa("meh"), source="teach", author_id=AUTHOR)
    await store.rate(ex.id, ALICE, 5)
    outcome = await store.rate(ex.id, BOB, 1)
    assert outcome.decided is None and outcome.disagreement == 2.0
    assert (await store.get_example(ex.id)).status == "pending"


async def test_next_for_review_skips_own_and_already_rated(store):
    own = await store.add_example(qa("mine"), source="teach", author_id=ALICE)
    other = await store.add_example(qa("theirs"), source="teach", author_id=AUTHOR)
    later = await store.add_example(qa("later"), source="teach", author_id=AUTHOR)
    assert (await store.next_for_review(ALICE)).id == other.id
    await store.rate(other.id, ALICE, 3)
    assert (await store.next_for_review(ALICE)).id == later.id
    assert (await store.next_for_review(AUTHOR)).id == own.id


async def test_edit_supersedes_original(store):
    ex = await store.add_example(qa("q", "wrong"), source="teach", author_id=AUTHOR)
    copy = await store.edit_example(ex.id, qa("q", "right"), editor_id=ALICE)
    assert copy.status == "pending" and copy.author_id == ALICE
    original = await store.get_example(ex.id)
    assert (original.status, original.superseded_by) == ("superseded", copy.id)
    with pytest.raises(Superseded, match=f"example #{ex.id} was already superseded by an edit \\(#{copy.id}\\)"):
        await store.rate(ex.id, BOB, 5)
    assert await store.ratings_for(ex.id) == []
    # A superseded example is never edited again: the copy is what gets edited.
    with pytest.raises(Superseded):
        await store.edit_example(ex.id, qa("q", "righter"), editor_id=BOB)
    again = await store.edit_example(copy.id, qa("q", "righter"), editor_id=BOB)
    assert (await store.get_example(copy.id)).superseded_by == again.id


async def test_moderator_decisions_refuse_superseded_examples(store):
    ex = await store.add_example(qa("q", "wrong"), source="teach", author_id=AUTHOR)
    copy = await store.edit_example(ex.id, qa("q", "right"), editor_id=ALICE)
    for status in ("approved", "rejected", "pending"):
        with pytest.raises(Superseded, match=f"superseded by an edit \\(#{copy.id}\\); review #{copy.id}"):
            await store.set_example_status(ex.id, status)
    assert (await store.get_example(ex.id)).status == "superseded"
    with pytest.raises(StoreError, match="unknown status 'superseded'"):
        await store.set_example_status(copy.id, "superseded")  # only an edit supersedes
    approved = await store.set_example_status(copy.id, "approved")
    assert approved.status == "approved" and approved.approved_at is not None
    with pytest.raises(NotFound):
        await store.set_example_status(copy.id + 100, "approved")


async def test_ratings_decide_pending_examples_only(store):
    """A moderator's rejection stands against later 5s; a rater changing their mind reports it."""
    ex = await store.add_example(qa("q"), source="teach", author_id=AUTHOR)
    await store.set_example_status(ex.id, "rejected")
    first = await store.rate(ex.id, ALICE, 5)
    second = await store.rate(ex.id, BOB, 5)
    assert (first.changed, second.changed, second.decided) == (False, False, None)
    assert (await store.get_example(ex.id)).status == "rejected"
    changed = await store.rate(ex.id, BOB, 4)
    assert changed.changed and changed.scores == [5, 4]


async def test_import_is_one_transaction_and_reports_duplicates(store):
    await store.add_example(qa("known"), source="teach")
    convs = [qa("a"), qa("known"), qa("b"), qa("a")]
    outcome = await store.import_conversations(convs, approve=True)
    assert outcome.imported == 2 and outcome.duplicates == [1, 3]
    stats = await store.dataset_stats()
    assert stats.by_status["approved"] == 2 and stats.by_source["import"] == 2


async def test_count_submissions_counts_one_author_since_a_time(store):
    before = utcnow() - timedelta(seconds=5)
    await store.add_example(qa("one"), source="teach", author_id=ALICE)
    await store.add_example(qa("two"), source="teach", author_id=ALICE)
    await store.add_example(qa("bob's"), source="teach", author_id=BOB)
    await store.import_conversations([qa("imported")], author_id=ALICE)
    assert await store.count_submissions(ALICE, before) == 3
    assert await store.count_submissions(BOB, before) == 1
    assert await store.count_submissions(CAROL, before) == 0
    assert await store.count_submissions(ALICE, utcnow() + timedelta(minutes=1)) == 0


def _raw(*contents: str, tools: str | None = None, tags: tuple[str, ...] = ()) -> Conversation:
    """A conversation built directly, as a caller that skipped Conversation.validate would."""
    roles = ["user", "assistant"] * (len(contents) // 2)
    return Conversation(tuple(Message(r, c) for r, c in zip(roles, contents, strict=True)), tags, tools)


@pytest.mark.parametrize("bad, problem", [("\x00", "a NUL character"), ("\ud800", "an unpaired surrogate")])
async def test_text_the_database_cannot_hold_is_refused_clearly(store, bad, problem):
    """PostgreSQL refuses NUL in text (asyncpg raised from deep inside the flush); unpaired surrogates cannot
    be encoded at all. The store says which text is wrong, on both databases, and stores nothing.
    (Conversation.validate, which add and edit run first, may be the one to say it; imports skip it.)"""
    refused = (UnstorableText, InvalidConversation)
    ok = await store.add_example(qa("fine"), source="teach", author_id=AUTHOR)
    with pytest.raises(refused, match=f"message 1 \\(assistant\\) contains {problem}"):
        await store.add_example(_raw("q", f"an{bad}swer"), source="teach")
    with pytest.raises(refused, match=f"the tool schema.* contains {problem}"):
        await store.add_example(_raw("q2", "a", tools=f'{{"x": "{bad}"}}'), source="teach")
    with pytest.raises(refused, match=problem):
        await store.edit_example(ok.id, _raw("fine", f"edited{bad}"), editor_id=ALICE)
    with pytest.raises(UnstorableText, match=f"conversation 1: message 0 \\(user\\) contains {problem}"):
        await store.import_conversations([qa("i0"), _raw(f"i{bad}1", "a")])
    with pytest.raises(UnstorableText, match=f"conversation 2: tag .* contains {problem}"):
        await store.import_conversations([qa("i0"), qa("i1"), _raw("i2", "a", tags=(f"t{bad}",))])
    with pytest.raises(UnstorableText, match=f"the comment contains {problem}"):
        await store.rate(ok.id, ALICE, 4, comment=f"hm{bad}")
    assert [e.id for e in await store.list_examples()] == [ok.id]
    assert (await store.get_example(ok.id)).status == "pending"
    assert await store.ratings_for(ok.id) == []


async def test_feedback_one_per_user_and_changeable(store):
    answer = await store.record_answer(prompt=[{"role": "user", "content": "hi"}], answer="hello",
                                       model_tag="qwen2.5:0.5b", guild_id=9, channel_id=8, user_id=ALICE)
    await store.add_feedback(answer.id, ALICE, 1)
    await store.add_feedback(answer.id, BOB, 1)
    await store.add_feedback(answer.id, ALICE, -1)
    assert await feedback_counts(store, answer.id) == (1, 1)
    with pytest.raises(NotFound):
        await store.add_feedback(answer.id + 100, ALICE, 1)


async def test_stats_agreement_and_new_since_active(store):
    a = await store.add_example(qa("a"), source="teach", author_id=AUTHOR)
    b = await store.add_example(qa("b"), source="correction", author_id=AUTHOR)
    for rater, score in ((ALICE, 5), (BOB, 4), (CAROL, 5)):
        await store.rate(a.id, rater, score)
    await store.rate(b.id, ALICE, 1)
    await store.rate(b.id, BOB, 5)
    stats = await store.dataset_stats()
    assert stats.rated_examples == 2 and stats.ratings == 5
    assert stats.agreement == pytest.approx(3 / 4)  # a: 3 close pairs; b: 1 far pair
    assert stats.new_approved_since_active == 1


async def _registered(store, **kw):
    version = await store.create_model_version(name="physics", base_model="tiny", ollama_base="qwen2.5:0.5b", **kw)
    return await store.update_model_version(version.id, status="registered", in_ollama=True)


async def test_model_versions_promote_rollback_and_retention(store):
    v1, v2, v3 = [await _registered(store) for _ in range(3)]
    assert [v.tag for v in (v1, v2, v3)] == [f"loraloop-physics:v{n}" for n in (1, 2, 3)]
    assert await store.active_model_version() is None
    with pytest.raises(NoRollbackTarget):
        await store.rollback()
    await store.promote(v1.id)
    await store.promote("loraloop-physics:v2")
    assert (await store.active_model_version()).id == v2.id
    assert (await store.rollback_target()).id == v1.id
    back = await store.rollback()
    assert back.id == v1.id and (await store.active_model_version()).id == v1.id
    assert (await store.get_model_version(v2.id)).status == "rolled_back"
    failed = await store.update_model_version(v3.id, status="failed",
                                              failure_reason="warm-up failed: adapter does not match base")
    with pytest.raises(StoreError, match="warm-up failed"):
        await store.promote(failed.id)
    v4 = await _registered(store)
    await store.promote(v4.id)
    # keep 1: v4 is active and v1 the rollback target, so only v2 and v3 may go.
    assert sorted(v.version for v in await store.retention_candidates(keep=1)) == [2, 3]


async def test_concurrent_version_numbers_are_distinct(store):
    versions = await asyncio.gather(*[
        store.create_model_version(name="m", base_model="b", ollama_base="o") for _ in range(5)
    ])
    assert sorted(v.version for v in versions) == [1, 2, 3, 4, 5]


async def test_model_version_statuses_are_checked(store):
    version = await store.create_model_version(name="m", base_model="b", ollama_base="base:1")
    with pytest.raises(StoreError, match="unknown model version status 'promotd'"):
        await store.update_model_version(version.id, status="promotd")  # type: ignore[arg-type]
    updated = await store.update_model_version(version.id, status="registered", in_ollama=True)
    # Fields left out keep their value.
    assert (updated.status, updated.in_ollama, updated.metrics) == ("registered", True, {})
    assert (await store.update_model_version(version.id, metrics={"loss": 1.0})).status == "registered"
