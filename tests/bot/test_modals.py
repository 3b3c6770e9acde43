"""Modals are kept by discord.py under their custom id alone: every opening gets its own id, so people filling
"the same" form at once never lose a submission to each other."""

from __future__ import annotations

from data.conversation import Conversation
from tests.harness.bot import AUTHOR, BASE_TAG, EXPERT, last_response
from tests.harness.discord import EXPERT_ROLE, message_with_buttons

OTHER = EXPERT + 100


def form(discord_api) -> tuple[str, list[str]]:
    response = last_response(discord_api)
    assert response["type"] == 9, response
    data = response["data"]
    return data["custom_id"], [c["components"][0]["custom_id"] for c in data["components"]]


async def test_two_users_suggest_for_one_answer_at_once_both_saved(bot, gateway, discord_api):
    answer = await bot.store.record_answer(prompt=[{"role": "user", "content": "why?"}], answer="because",
                                           model_tag=BASE_TAG)
    msg = message_with_buttons([f"ll:fb:fix:{answer.id}"], "because")
    await gateway.click(f"ll:fb:fix:{answer.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    first_id, first_fields = form(discord_api)
    await gateway.click(f"ll:fb:fix:{answer.id}", message=msg, user_id=OTHER, roles=[EXPERT_ROLE])
    second_id, second_fields = form(discord_api)

    await gateway.submit_modal(first_id, dict(zip(first_fields, ["why?", "Because of A."], strict=True)),
                               user_id=EXPERT, roles=[EXPERT_ROLE])
    assert "waiting for expert review" in discord_api.reply_text()
    await gateway.submit_modal(second_id, dict(zip(second_fields, ["why?", "Because of B."], strict=True)),
                               user_id=OTHER, roles=[EXPERT_ROLE])
    assert "waiting for expert review" in discord_api.reply_text()
    saved = {e.author_id: e.messages[-1]["content"] for e in await bot.store.list_examples()}
    assert saved == {EXPERT: "Because of A.", OTHER: "Because of B."}
    assert first_id != second_id and len(first_id) <= 100 and len(second_id) <= 100
    assert str(EXPERT) in first_id and str(OTHER) in second_id


async def test_one_user_opening_twice_keeps_both_forms(bot, gateway, discord_api):
    answer = await bot.store.record_answer(prompt=[{"role": "user", "content": "why?"}], answer="because",
                                           model_tag=BASE_TAG)
    msg = message_with_buttons([f"ll:fb:fix:{answer.id}"], "because")
    await gateway.click(f"ll:fb:fix:{answer.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    first_id, first_fields = form(discord_api)
    await gateway.click(f"ll:fb:fix:{answer.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    second_id, second_fields = form(discord_api)
    assert first_id != second_id
    for custom_id, fields, text in ((second_id, second_fields, "Second."), (first_id, first_fields, "First.")):
        await gateway.submit_modal(custom_id, dict(zip(fields, ["why?", text], strict=True)),
                                   user_id=EXPERT, roles=[EXPERT_ROLE])
        assert "waiting for expert review" in discord_api.reply_text()
    assert sorted(e.messages[-1]["content"] for e in await bot.store.list_examples()) == ["First.", "Second."]


async def test_a_form_only_takes_its_openers_submission(bot, gateway, discord_api):
    answer = await bot.store.record_answer(prompt=[{"role": "user", "content": "why?"}], answer="because",
                                           model_tag=BASE_TAG)
    msg = message_with_buttons([f"ll:fb:fix:{answer.id}"], "because")
    await gateway.click(f"ll:fb:fix:{answer.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    custom_id, fields = form(discord_api)
    await gateway.submit_modal(custom_id, dict(zip(fields, ["why?", "Not mine."], strict=True)),
                               user_id=OTHER, roles=[EXPERT_ROLE])
    assert "opened by someone else" in discord_api.reply_text()
    assert await bot.store.list_examples() == []
    await gateway.submit_modal(custom_id, dict(zip(fields, ["why?", "Mine."], strict=True)),
                               user_id=EXPERT, roles=[EXPERT_ROLE])
    [example] = await bot.store.list_examples()
    assert example.author_id == EXPERT and example.messages[-1]["content"] == "Mine."


async def test_two_experts_editing_one_example_both_get_an_answer(bot, gateway, discord_api):
    example = await bot.store.add_example(Conversation.qa("q", "a"), source="teach", author_id=AUTHOR)
    msg = message_with_buttons([f"ll:rv:edit:{example.id}"])
    await gateway.click(f"ll:rv:edit:{example.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    first_id, fields = form(discord_api)
    await gateway.click(f"ll:rv:edit:{example.id}", message=msg, user_id=OTHER, roles=[EXPERT_ROLE])
    second_id, second_fields = form(discord_api)
    assert first_id != second_id and first_id.startswith(f"ll:edit:{example.id}:")
    await gateway.submit_modal(first_id, dict(zip(fields, ["q", "a, edited by one"], strict=True)),
                               user_id=EXPERT, roles=[EXPERT_ROLE])
    assert "Saved as example" in discord_api.reply_text()
    responses = len(discord_api.interaction_responses())
    await gateway.submit_modal(second_id, dict(zip(second_fields, ["q", "a, edited by another"], strict=True)),
                               user_id=OTHER, roles=[EXPERT_ROLE])
    # The second edit is answered (saved, or refused because the original was superseded), never dropped.
    assert len(discord_api.interaction_responses()) == responses + 1
    assert f"#{example.id}" in discord_api.reply_text()


async def test_teach_forms_get_a_fresh_id_each_opening(bot, gateway, discord_api):
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    first_id, fields = form(discord_api)
    await gateway.command("teach", user_id=OTHER, roles=[EXPERT_ROLE])
    second_id, second_fields = form(discord_api)
    assert first_id != second_id
    await gateway.submit_modal(second_id, dict(zip(second_fields, ["q2", "a2", ""], strict=True)), user_id=OTHER,
                               roles=[EXPERT_ROLE])
    await gateway.submit_modal(first_id, dict(zip(fields, ["q1", "a1", ""], strict=True)), user_id=EXPERT,
                               roles=[EXPERT_ROLE])
    saved = {e.author_id: e.messages[0]["content"] for e in await bot.store.list_examples()}
    assert saved == {EXPERT: "q1", OTHER: "q2"}
