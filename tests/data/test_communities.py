"""Communities in the store: each community's knowledge, judgement and models are its own (both databases).

Every leak the two-server trial found has its own assertion here at the store level; tests/bot/test_communities.py
checks the same through Discord.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from data import runs
from data.communities import BadCommunityName, lineage_name
from data.conversation import Conversation
from data.errors import DuplicateExample, NoRollbackTarget, NotFound, RunInProgress, StoreError
from data.preferences import (
    Preference,
    import_preferences,
    list_preferences,
    next_preference_for_review,
)
from data.quality import answers_needing_better
from data.vectors import approved_ids, approved_pairs, delta_ids

pytestmark = pytest.mark.asyncio


def qa(q: str, a: str = "an answer") -> Conversation:
    return Conversation.qa(q, a)


@pytest.fixture
def two(store):
    return store.scoped("acme"), store.scoped("globex")


async def test_pairs_are_seen_only_in_their_community(two):
    a, b = two
    secret = await a.add_example(qa("What is the staging password?", "hunter2"), source="teach", author_id=1,
                                 guild_id=10)
    assert [e.id for e in await a.list_examples()] == [secret.id]
    assert await b.list_examples() == []
    with pytest.raises(NotFound, match=f"no example #{secret.id}"):
        await b.get_example(secret.id)
    assert await b.next_for_review(reviewer_id=2) is None
    assert (await a.next_for_review(reviewer_id=2)).id == secret.id
    # Another community cannot rate, edit or moderate it either: to B it does not exist.
    with pytest.raises(NotFound):
        await b.rate(secret.id, 2, 5)
    with pytest.raises(NotFound):
        await b.set_example_status(secret.id, "approved")
    with pytest.raises(NotFound):
        await b.edit_example(secret.id, qa("x", "y"), editor_id=2)
    assert (await b.dataset_stats()).total == 0
    assert (await a.dataset_stats()).total == 1


async def test_duplicates_are_found_within_a_community_only(two):
    a, b = two
    first = await a.add_example(qa("Same question?", "same answer"), source="teach")
    # B may hold the same text: it is told nothing about A's.
    other = await b.add_example(qa("Same question?", "same answer"), source="teach")
    assert other.id != first.id
    with pytest.raises(DuplicateExample) as raised:
        await b.add_example(qa("Same question?", "same answer"), source="teach")
    assert raised.value.existing_id == other.id
    outcome = await a.import_conversations([qa("Same question?", "same answer"), qa("new one?", "yes")])
    assert (outcome.imported, outcome.duplicates) == (1, [0])
    outcome = await b.import_conversations([qa("new one?", "yes")])
    assert outcome.imported == 1


async def test_training_sets_snapshots_and_exports_are_per_community(two, tmp_path):
    a, b = two
    await a.add_example(qa("A's fact?", "alpha"), source="teach", status="approved")
    await b.add_example(qa("B's fact?", "beta"), source="teach", status="approved")
    await b.add_example(qa("B's other?", "gamma"), source="teach", status="approved")
    assert [r.messages[-1]["content"] for r in await a.approved_examples()] == ["alpha"]
    manifest = await a.create_snapshot(tmp_path / "snap-a", eval_fraction=0)
    assert manifest.counts.train == 1
    manifest = await b.create_snapshot(tmp_path / "snap-b", eval_fraction=0)
    assert manifest.counts.train == 2
    assert await a.export_approved(tmp_path / "a.jsonl", "openai") == 1
    assert "beta" not in (tmp_path / "a.jsonl").read_text()
    assert (await a.dataset_stats()).approved_by_source["teach"] == 1


async def test_answers_feedback_and_bad_answer_queue_are_per_community(store, two):
    a, b = two
    outside = store.scoped(None)  # a DM without dm_community, an unconfigured server
    private = await outside.record_answer(prompt=[{"role": "user", "content": "my symptoms are…"}], answer="see a GP",
                                          model_tag="base")
    await outside.add_feedback(private.id, 7, -1)
    mine = await a.record_answer(prompt=[{"role": "user", "content": "A's question"}], answer="wrong", model_tag="m")
    await a.add_feedback(mine.id, 8, -1)
    assert [x.id for x in await answers_needing_better(a)] == [mine.id]
    assert await answers_needing_better(b) == []
    with pytest.raises(NotFound):
        await b.get_answer(mine.id)
    with pytest.raises(NotFound):
        await b.add_feedback(mine.id, 9, 1)
    with pytest.raises(NotFound):
        await a.get_answer(private.id)
    assert (await a.dataset_stats()).feedback_down == 1
    assert (await b.dataset_stats()).feedback_down == 0
    # Nothing can be taught outside every community.
    with pytest.raises(StoreError, match="not part of any community"):
        await outside.add_example(qa("q?", "a"), source="teach")
    with pytest.raises(StoreError, match="not part of any community"):
        await outside.import_conversations([qa("q?", "a")])


async def test_preferences_are_per_community(two):
    a, b = two
    pref = Preference.from_row([{"role": "user", "content": "Q?"}], {"role": "assistant", "content": "good"},
                               {"role": "assistant", "content": "bad"}, ())
    assert (await import_preferences(a, [pref])).imported == 1
    assert (await import_preferences(b, [pref])).imported == 1  # not a duplicate of A's
    assert len(await list_preferences(a)) == len(await list_preferences(b)) == 1
    (mine,) = await list_preferences(a)
    assert (await next_preference_for_review(b, 5)).id != mine.id


async def _version(store, n: str = "x"):
    v = await store.create_model_version(name=lineage_name("assistant", store.community), base_model="b",
                                         ollama_base="base:1")
    return await store.update_model_version(v.id, in_ollama=True)


async def test_model_lineages_active_models_and_rollback_are_per_community(two):
    a, b = two
    a1 = await _version(a)
    b1 = await _version(b)
    assert a1.tag == "loraloop-assistant-acme:v1" and b1.tag == "loraloop-assistant-globex:v1"
    await a.promote(a1.tag)
    assert (await a.active_model_version()).tag == a1.tag
    assert await b.active_model_version() is None
    with pytest.raises(NotFound):
        await b.promote(a1.tag)
    await b.promote(b1.tag)
    a2 = await _version(a)
    await a.promote(a2.tag)
    assert [v.tag for v in await a.list_model_versions()] == [a2.tag, a1.tag]
    # A's rollback leaves B untouched.
    assert (await a.rollback()).tag == a1.tag
    assert (await b.active_model_version()).tag == b1.tag
    assert await b.rollback_target() is None
    # Back to the base model when no earlier fine-tune is left.
    left = await b.rollback_to_base()
    assert left.tag == b1.tag and left.status == "rolled_back"
    assert await b.active_model_version() is None
    assert (await a.active_model_version()).tag == a1.tag
    with pytest.raises(NoRollbackTarget, match="base model already answers"):
        await b.rollback_to_base()


async def test_retrieval_reads_its_community_only(two):
    a, b = two
    x = await a.add_example(qa("A's?", "alpha"), source="teach", status="approved")
    y = await b.add_example(qa("B's?", "beta"), source="teach", status="approved")
    assert {p.example_id for p in await approved_pairs(a)} == {x.id}
    assert await approved_ids(b) == {y.id}
    assert await delta_ids(a) == {x.id}


async def test_one_open_run_per_community_and_the_shared_queue(two):
    a, b = two
    ra = await runs.propose_run(a, summary={})
    rb = await runs.propose_run(b, summary={})  # B's proposal does not wait for A's
    with pytest.raises(RunInProgress):
        await runs.propose_run(a, summary={})
    assert (await runs.open_run(a)).id == ra.id and (await runs.open_run(b)).id == rb.id
    with pytest.raises(NotFound):
        await runs.get_run(b, ra.id)
    for store, run in ((a, ra), (b, rb)):
        await runs.transition(store, run.id, "approved")
        await runs.transition(store, run.id, "snapshotted")
    assert await runs.queue_position(a, ra.id) == 1
    assert await runs.queue_position(b, rb.id) == 2
    await runs.transition(a, ra.id, "training")
    assert await runs.queue_position(a, ra.id) is None
    assert await runs.queue_position(b, rb.id) == 1
    assert [r.id for r in await runs.list_runs(b)] == [rb.id]


def test_community_names_are_checked(store):
    for bad in ("", "Acme", "a b", "-x", "x" * 41, "../etc"):
        with pytest.raises(BadCommunityName):
            store.scoped(bad)


# ---- upgrading a database from before communities --------------------------------------------------------


T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _legacy_database(store, guilds: list[int | None]) -> None:
    """Rewind the store to revision 0008 and write rows as that schema had them, one pair per guild."""
    from data.migrations import alembic_config

    def downgrade(conn) -> None:
        from alembic import command

        command.downgrade(alembic_config(conn), "0008")

    async with store.engine.begin() as conn:
        await conn.run_sync(downgrade)
        for i, guild in enumerate(guilds):
            await conn.execute(text(
                "INSERT INTO examples (content_hash, messages, tags, source, status, guild_id, created_at, "
                "updated_at, approved_at) VALUES (:h, :m, '[]', 'teach', 'approved', :g, :t, :t, :t)"),
                {"h": f"{i:064d}", "m": f'[{{"role": "user", "content": "q{i}"}}, '
                                        f'{{"role": "assistant", "content": "a{i}"}}]', "g": guild,
                 "t": T0})
            await conn.execute(text(
                "INSERT INTO answers (guild_id, prompt, answer, model_tag, created_at) VALUES "
                "(:g, '[]', 'x', 'm', :t)"), {"g": guild, "t": T0})
        await conn.execute(text(
            "INSERT INTO model_versions (name, version, tag, base_model, ollama_base, hyperparams, metrics, "
            "evaluation, artifacts, status, in_ollama, created_at, updated_at) VALUES ('assistant', 1, "
            "'loraloop-assistant:v1', 'b', 'base', '{}', '{}', '{}', '{}', 'promoted', true, :t, :t)"),
            {"t": T0})
        await conn.execute(text("INSERT INTO active_model (id, model_version_id, switched_at) VALUES "
                                "(1, (SELECT id FROM model_versions), :t)"), {"t": T0})
        await conn.execute(text("INSERT INTO retrain_runs (state, slot, summary, progress, result, created_at, "
                                "updated_at) VALUES ('proposed', 1, '{}', '{}', '{}', :t, :t)"),
                           {"t": T0})


async def test_a_one_guild_database_upgrades_in_place(store):
    await _legacy_database(store, [10, None])  # a pair taught in the guild, one imported on the command line
    await store.migrate()
    done = await store.assign_communities({10: "guild-10"}, "guild-10")
    mine = store.scoped("guild-10")
    assert len(await mine.list_examples()) == 2
    assert (await mine.active_model_version()).tag == "loraloop-assistant:v1"
    assert (await runs.open_run(mine)) is not None
    assert done.assigned["examples"] == {"guild-10": 2}
    assert any("first configured community" in line for line in done.lines())
    assert done.left == {"answers": {"given in a DM": 1}}  # the DM answer is nobody's
    # Idempotent: a second start changes nothing.
    assert not (await store.assign_communities({10: "guild-10"}, "guild-10")).changed


async def test_a_two_guild_database_is_split_by_guild(store):
    await _legacy_database(store, [10, 20, 20, 30])  # 30: a guild the settings no longer configure
    await store.migrate()
    done = await store.assign_communities({10: "acme", 20: "globex"}, "acme")
    acme, globex = store.scoped("acme"), store.scoped("globex")
    assert [e.messages[0]["content"] for e in await acme.list_examples()] == ["q0"]
    assert [e.messages[0]["content"] for e in await globex.list_examples()] == ["q1", "q2"]
    # The old shared model held every guild's knowledge: it stays with the first community only.
    assert (await acme.active_model_version()).tag == "loraloop-assistant:v1"
    assert await globex.active_model_version() is None
    assert done.left["examples"] == {"from a server the settings do not configure": 1}
    # Once that guild is configured, its rows find their community.
    again = await store.assign_communities({10: "acme", 20: "globex", 30: "initech"}, "acme")
    assert again.assigned["examples"] == {"initech": 1}
    assert len(await store.scoped("initech").list_examples()) == 1
