"""Who may submit pairs, and how many: "Suggest a better answer" follows /teach's rule, suggestions from DMs are
refused, and /teach, suggestions and /import share one hourly limit per user."""

from __future__ import annotations

import json

from bot.settings import GuildRoles
from data.conversation import Conversation
from tests.harness.bot import BASE_TAG, EXPERT, MEMBER, last_response
from tests.harness.discord import ADMIN_ROLE, EPHEMERAL, EXPERT_ROLE, GUILD_ID, message_with_buttons
from tests.harness.polling import wait_until


async def answer_with_buttons(bot, **kw) -> tuple[int, dict]:
    """An answer given where ``kw`` says (a DM's, guild_id None, outside every community) and its message."""
    store = bot.community_store(None) if kw.get("guild_id", 1) is None else bot.store
    answer = await store.record_answer(prompt=[{"role": "user", "content": "why?"}], answer="because",
                                           model_tag=BASE_TAG)
    return answer.id, message_with_buttons([f"ll:fb:{k}:{answer.id}" for k in ("up", "down", "fix")], "because",
                                           **kw)


async def open_and_submit_suggestion(gateway, discord_api, answer_id, msg, user_id, roles, text):
    await gateway.click(f"ll:fb:fix:{answer_id}", message=msg, user_id=user_id, roles=roles)
    modal = last_response(discord_api)
    assert modal["type"] == 9, modal
    fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
    await gateway.submit_modal(modal["data"]["custom_id"], dict(zip(fields, ["why?", text], strict=True)),
                               user_id=user_id, roles=roles)
    return discord_api.reply_text()


def allow_members(bot) -> None:
    bot.settings.guilds[GUILD_ID] = GuildRoles(expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                               allow_non_expert_teach=True)


# ---- who may suggest ------------------------------------------------------------------------------------


async def test_suggest_refused_for_members_where_only_experts_teach(bot, gateway, discord_api):
    answer_id, msg = await answer_with_buttons(bot)
    await gateway.click(f"ll:fb:fix:{answer_id}", message=msg, user_id=MEMBER, roles=[])
    response = last_response(discord_api)
    assert response["type"] == 4 and response["data"]["flags"] & EPHEMERAL  # a message, no form
    assert "Only experts can suggest answers" in response["data"]["content"]
    # Experts still can, and members can wherever the guild lets them teach.
    saved = await open_and_submit_suggestion(gateway, discord_api, answer_id, msg, EXPERT, [EXPERT_ROLE], "X.")
    assert "waiting for expert review" in saved
    allow_members(bot)
    saved = await open_and_submit_suggestion(gateway, discord_api, answer_id, msg, MEMBER, [], "Y.")
    assert "waiting for expert review" in saved
    assert sorted(e.author_id for e in await bot.store.list_examples()) == sorted([EXPERT, MEMBER])


async def test_suggest_from_a_dm_is_refused(bot, gateway, discord_api):
    allow_members(bot)  # even where everyone may teach: a DM has no guild to vouch for the user
    answer_id, msg = await answer_with_buttons(bot, guild_id=None)
    await gateway.click(f"ll:fb:fix:{answer_id}", message=msg, user_id=MEMBER, guild_id=None)
    response = last_response(discord_api)
    assert response["type"] == 4 and response["data"]["flags"] & EPHEMERAL
    assert "Suggestions are taken in the server" in response["data"]["content"]
    # 👍/👎 still work in DMs.
    await gateway.click(f"ll:fb:up:{answer_id}", message=msg, user_id=MEMBER, guild_id=None)
    assert "noted" in discord_api.reply_text()
    assert await bot.store.list_examples() == []


# ---- the hourly limit -------------------------------------------------------------------------------------


async def fill_quota(bot, user_id: int, n: int) -> None:
    for i in range(n):
        await bot.store.add_example(Conversation.qa(f"earlier {user_id} {i}", "a"), source="teach", author_id=user_id)


async def test_teach_refused_over_the_hourly_limit(bot, gateway, discord_api):
    bot.settings.max_pairs_per_user_hour = 2
    await fill_quota(bot, EXPERT, 1)
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    modal = last_response(discord_api)
    assert modal["type"] == 9  # one left
    # Meanwhile another submission uses the last one: the open form's submit is refused, nothing saved.
    await bot.store.add_example(Conversation.qa("meanwhile", "a"), source="teach", author_id=EXPERT)
    fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
    await gateway.submit_modal(modal["data"]["custom_id"], dict(zip(fields, ["q", "a", ""], strict=True)),
                               user_id=EXPERT, roles=[EXPERT_ROLE])
    refusal = discord_api.last_reply()
    assert refusal["flags"] & EPHEMERAL
    assert "the limit is 2 per hour" in refusal["content"] and "You can submit again <t:" in refusal["content"]
    assert len(await bot.store.list_examples()) == 2
    # And /teach itself now refuses before the form.
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    response = last_response(discord_api)
    assert response["type"] == 4 and "the limit is 2 per hour" in response["data"]["content"]
    # Another user is not affected.
    await gateway.command("teach", user_id=EXPERT + 1, roles=[EXPERT_ROLE])
    assert last_response(discord_api)["type"] == 9


async def test_suggestion_refused_over_the_hourly_limit(bot, gateway, discord_api):
    bot.settings.max_pairs_per_user_hour = 1
    answer_id, msg = await answer_with_buttons(bot)
    saved = await open_and_submit_suggestion(gateway, discord_api, answer_id, msg, EXPERT, [EXPERT_ROLE], "X.")
    assert "waiting for expert review" in saved
    await gateway.click(f"ll:fb:fix:{answer_id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    response = last_response(discord_api)
    assert response["type"] == 4 and "the limit is 1 per hour" in response["data"]["content"]
    assert len(await bot.store.list_examples()) == 1


async def test_no_limit_when_zero(bot, gateway, discord_api):
    bot.settings.max_pairs_per_user_hour = 0
    await fill_quota(bot, EXPERT, 5)
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    assert last_response(discord_api)["type"] == 9


async def run_import(gateway, discord_api, rows: list[dict], name: str) -> dict:
    attachment = discord_api.attachment(name, json.dumps(rows).encode())
    await gateway.command("import", {"file": attachment["id"]}, user_id=EXPERT, roles=[EXPERT_ROLE],
                          attachments={attachment["id"]: attachment})
    return last_response(discord_api)


async def import_followup(discord_api, before: int) -> str:
    await wait_until(lambda: len(discord_api.find("POST", "/webhooks/")) > before)
    return discord_api.find("POST", "/webhooks/")[-1].json["content"]


def pairs(prefix: str, n: int) -> list[dict]:
    return [{"instruction": f"{prefix} {i}", "input": "", "output": "fine"} for i in range(n)]


async def test_import_over_the_hourly_limit_is_refused_whole(bot, gateway, discord_api):
    bot.settings.max_pairs_per_user_hour = 5
    await fill_quota(bot, EXPERT, 2)
    # 4 pairs, 3 left: refused after parsing, with the count; nothing written.
    response = await run_import(gateway, discord_api, pairs("too many", 4), "four.json")
    assert response["type"] == 5
    text = await import_followup(discord_api, 0)
    assert "was not imported" in text and "that is 4 pairs, but you can submit only 3 more" in text
    assert len(await bot.store.list_examples()) == 2
    # A file bigger than the whole limit says how to split it.
    response = await run_import(gateway, discord_api, pairs("huge", 6), "six.json")
    text = await import_followup(discord_api, 1)
    assert "more than the limit of 5 pairs per hour" in text and "split it into parts of at most 5" in text
    # 3 fit: imported, and they count.
    await run_import(gateway, discord_api, pairs("fits", 3), "three.json")
    assert "imported **3**" in await import_followup(discord_api, 2)
    assert len(await bot.store.list_examples()) == 5
    # At the limit: refused before the download (no defer, an immediate answer).
    response = await run_import(gateway, discord_api, pairs("later", 1), "one.json")
    assert response["type"] == 4 and response["data"]["flags"] & EPHEMERAL
    text = response["data"]["content"]
    assert "was not imported" in text and "the limit is 5 per hour" in text
    # Imported pairs count against /teach too.
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    assert last_response(discord_api)["type"] == 4
