"""Experts compare a candidate with what answers now, blind: the order is drawn per question and hidden until
each expert voted, one vote per expert and question, the tally (win rate, 95% interval) shows at quorum, and in
manual promotion Promote follows it."""

from __future__ import annotations

from typing import Any

import pytest

from bot.settings import GuildRoles
from data import quality, runs
from deploy.gate import GateResult
from tests.harness.bot import BASE_TAG, make_settings, start_bot
from tests.harness.discord import ADMIN_ROLE, CHANNEL_ID, EXPERT_ROLE, GUILD_ID, Gateway, message_with_buttons

EXPERT_1, EXPERT_2, MEMBER = 41, 42, 43


@pytest.fixture
async def manual_bot(tmp_path, discord_api, ollama_server):
    settings = make_settings(tmp_path, ollama_server.url, retrain_promotion="manual", retrain_quorum=2,
                             model_name="m", guilds={GUILD_ID: GuildRoles(
                                 expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                 allow_non_expert_teach=False, experts_channel_id=CHANNEL_ID)})
    ollama_server.add_scripted_model(BASE_TAG, reply="base answer")
    bot = await start_bot(settings, run_scheduler=False)
    try:
        yield bot
    finally:
        await bot.close()


async def evaluated_run(bot, ollama_server) -> tuple[Any, Any]:
    """A run whose candidate passed the gate against the base and waits for manual promotion."""
    version = await bot.store.create_model_version(name="m", base_model="tiny", ollama_base=BASE_TAG)
    ollama_server.add_scripted_model(version.tag, reply="candidate answer")
    rows = [{"kind": "eval", "question": f"what is {t}?", "reference": f"{t} is red.",
             "candidate": f"{t} is red.", "active": f"no idea about {t}", "candidate_rouge_l": 1.0,
             "active_rouge_l": 0.0} for t in ("ink", "rust", "wine", "brick")]
    gate = GateResult(version.tag, BASE_TAG, 0.02, True, "candidate ROUGE-L 1.000 vs base 0.000 (margin 0.02)",
                      {"candidate": {"rouge_l": 1.0, "exact_match": 1.0, "count": 4},
                       "active": {"rouge_l": 0.0, "exact_match": 0.0, "count": 4}}, rows, active_is_base=True)
    await bot.store.update_model_version(version.id, status="evaluated", in_ollama=True, evaluation=gate.to_dict())
    run = await runs.propose_run(bot.store, summary={}, guild_id=GUILD_ID, channel_id=CHANNEL_ID)
    for state in ("approved", "snapshotted", "training", "converting", "registering", "evaluating", "evaluated"):
        run = await runs.transition(bot.store, run.id, state)
    run = await runs.set_run(bot.store, run.id, model_version_id=version.id)
    await bot.get_cog("RetrainCog").finished(run, None)  # what the orchestrator calls when the gate passed
    return run, version


def buttons(message: dict) -> dict[str, dict]:
    return {c["custom_id"]: c for row in message.get("components") or [] for c in row["components"]}


async def compare_all(gateway, api, comparison, user_id: int, prefer: str) -> list[str]:
    """One expert goes through every card; ``prefer`` candidate|other|tie. Returns what each card showed."""
    shown = []
    start = f"ll:cmp:{comparison.id}:start:0"
    await gateway.click(start, message=message_with_buttons([start]), user_id=user_id, roles=[EXPERT_ROLE])
    for i, item in enumerate(comparison.items):
        card = api.interaction_responses()[-1].json["data"]
        shown.append(card["content"])
        assert f"question {i + 1}/{len(comparison.items)}" in card["content"]
        choice = {"candidate": item["candidate"], "other": "b" if item["candidate"] == "a" else "a",
                  "tie": "tie"}[prefer]
        ids = [f"ll:cmp:{comparison.id}:{c}:{i}" for c in ("a", "b", "tie")]
        assert list(buttons(card)) == ids
        await gateway.click(ids[("a", "b", "tie").index(choice)], message=message_with_buttons(ids),
                            user_id=user_id, roles=[EXPERT_ROLE])
        after = api.interaction_responses()[-1].json
        assert after["type"] == 7  # the private card is replaced: the reveal, then the next question
        assert f"Answer {item['candidate'].upper()} was the candidate's" in after["data"]["content"]
    assert "compared every question" in api.interaction_responses()[-1].json["data"]["content"]
    return shown


async def test_blind_comparison_hides_the_order_counts_one_vote_and_gates_promote(manual_bot, discord_api,
                                                                                ollama_server) -> None:
    bot, api = manual_bot, discord_api
    gateway = Gateway(bot, api)
    gateway.add_guild()
    run, version = await evaluated_run(bot, ollama_server)
    comparison = await quality.comparison_for_run(bot.store, run.id)
    assert comparison is not None and len(comparison.items) == 4 and comparison.opponent_tag == BASE_TAG
    public = api.messages[comparison.message_id]
    assert int(public["channel_id"]) == CHANNEL_ID and "Blind comparison" in public["content"]
    assert version.tag not in public["content"]  # nobody learns which model is which from the public message
    promote = buttons(public)[f"ll:rt:promote:{run.id}"]
    assert promote["disabled"] is True and f"ll:cmp:{comparison.id}:start:0" in buttons(public)
    result = [m for m in api.messages.values() if "Retrain #" in (m.get("content") or "")][-1]
    assert buttons(result) == {}  # Promote lives on the comparison only

    # Not an expert: refused. Before quorum, a (stale) Promote click is refused too.
    await gateway.click(f"ll:cmp:{comparison.id}:start:0", message=public, user_id=MEMBER, roles=[])
    assert "Only experts" in api.reply_text()
    await gateway.click(f"ll:rt:promote:{run.id}", message=message_with_buttons([f"ll:rt:promote:{run.id}"]),
                        user_id=EXPERT_1, roles=[EXPERT_ROLE])
    assert "needs 2 more expert(s)" in api.reply_text()

    cards = await compare_all(gateway, api, comparison, EXPERT_1, "candidate")
    for card, item in zip(cards, comparison.items, strict=True):
        assert item["a"] in card and item["b"] in card  # both answers, as A and B
        assert "candidate" not in card.split("**Comparison")[-1] and version.tag not in card  # hidden before voting
    # A second vote on a question does not count: the first stands.
    first = comparison.items[0]
    other = "b" if first["candidate"] == "a" else "a"
    again = f"ll:cmp:{comparison.id}:{other}:0"
    await gateway.click(again, message=message_with_buttons([again]), user_id=EXPERT_1, roles=[EXPERT_ROLE])
    assert "your first vote stands" in api.interaction_responses()[-1].json["data"]["content"]
    assert buttons(api.messages[comparison.message_id])[f"ll:rt:promote:{run.id}"]["disabled"] is True

    # The second expert prefers what answers now on every question: 4 wins, 4 losses, an even split.
    await compare_all(gateway, api, comparison, EXPERT_2, "other")
    tally = await quality.tally(bot.store, comparison, 2)
    assert (tally.wins, tally.losses, tally.ties, tally.experts_done) == (4, 4, 0, 2) and tally.not_worse
    public = api.messages[comparison.message_id]
    assert "win rate 50% (95% CI" in public["content"] and version.tag in public["content"]  # revealed at quorum
    assert buttons(public)[f"ll:rt:promote:{run.id}"].get("disabled") in (None, False)
    await gateway.click(f"ll:rt:promote:{run.id}", message=public, user_id=EXPERT_2, roles=[EXPERT_ROLE])
    assert (await runs.get_run(bot.store, run.id)).state == "promoted", api.reply_text()
    assert (await bot.store.active_model_version()).id == version.id


async def test_a_candidate_the_experts_find_worse_cannot_be_promoted(manual_bot, discord_api, ollama_server) -> None:
    bot, api = manual_bot, discord_api
    gateway = Gateway(bot, api)
    gateway.add_guild()
    run, _ = await evaluated_run(bot, ollama_server)
    comparison = await quality.comparison_for_run(bot.store, run.id)
    await compare_all(gateway, api, comparison, EXPERT_1, "tie")
    await compare_all(gateway, api, comparison, EXPERT_2, "other")
    public = api.messages[comparison.message_id]
    assert "win rate 25%" in public["content"] and "worse than what answers now" in public["content"]
    assert buttons(public)[f"ll:rt:promote:{run.id}"]["disabled"] is True
    await gateway.click(f"ll:rt:promote:{run.id}", message=message_with_buttons([f"ll:rt:promote:{run.id}"]),
                        user_id=EXPERT_1, roles=[EXPERT_ROLE])
    assert "found the candidate worse" in api.reply_text()
    assert (await runs.get_run(bot.store, run.id)).state == "evaluated"
    assert await bot.store.active_model_version() is None


@pytest.mark.parametrize("enabled", [False, True])
async def test_automatic_mode_compares_a_promoted_version_only_when_asked(tmp_path, discord_api, ollama_server,
                                                                          enabled) -> None:
    settings = make_settings(tmp_path, ollama_server.url, retrain_promotion="automatic", retrain_quorum=2,
                             model_name="m", compare_automatic=enabled, guilds={GUILD_ID: GuildRoles(
                                 expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                 allow_non_expert_teach=False, experts_channel_id=CHANNEL_ID)})
    ollama_server.add_scripted_model(BASE_TAG, reply="base answer")
    bot = await start_bot(settings, run_scheduler=False)
    try:
        version = await bot.store.create_model_version(name="m", base_model="tiny", ollama_base=BASE_TAG)
        rows = [{"kind": "eval", "question": f"what is {t}?", "reference": f"{t} is red.",
                 "candidate": f"{t} is red.", "active": f"no idea about {t}", "candidate_rouge_l": 1.0,
                 "active_rouge_l": 0.0} for t in ("ink", "rust", "wine")]
        gate = GateResult(version.tag, BASE_TAG, 0.02, True, "passed", {}, rows, active_is_base=True)
        await bot.store.update_model_version(version.id, status="evaluated", in_ollama=True,
                                             evaluation=gate.to_dict())
        await bot.store.promote(version.id)
        run = await runs.propose_run(bot.store, summary={}, guild_id=GUILD_ID, channel_id=CHANNEL_ID)
        for state in ("approved", "snapshotted", "training", "converting", "registering", "evaluating", "promoted"):
            run = await runs.transition(bot.store, run.id, state)
        run = await runs.set_run(bot.store, run.id, model_version_id=version.id)
        await bot.get_cog("RetrainCog").finished(run, None)
        comparison = await quality.comparison_for_run(bot.store, run.id)
        assert (comparison is not None) is enabled
        posted = [c.json for c in discord_api.sent_messages()]
        assert any("promote" in cid for m in posted for cid in buttons(m)) is False  # nothing to promote here
        if enabled:
            assert len(comparison.items) == 3 and version.tag not in str(posted[-1])  # blind: no tags shown
    finally:
        await bot.close()
