"""Slash commands, buttons and modals dispatched through discord.py's real CommandTree and view store."""

from __future__ import annotations

import pytest

from data.conversation import Conversation
from deploy.gate import GateResult
from tests.harness.bot import ADMIN, AUTHOR, BASE_TAG, EXPERT, MEMBER, last_edit, last_response, start_bot
from tests.harness.db import feedback_counts
from tests.harness.discord import ADMIN_ROLE, EPHEMERAL, EXPERT_ROLE, GUILD_ID, Gateway, message_with_buttons
from tests.harness.polling import wait_until


def is_ephemeral(api) -> bool:
    payload = api.last_reply()
    return bool(payload.get("flags", 0) & EPHEMERAL)


PRIVILEGED = [
    ("review", {}, None, "Only experts"),
    ("import", {"file": "1"}, None, "Only experts"),
    ("dataset", {"format": "openai"}, "export", "Only experts"),
    ("model", {}, "rollback", "Only admins"),
    ("teach", {}, None, "Only experts"),  # this test server does not allow non-expert teaching
]


@pytest.mark.parametrize(("name", "options", "sub", "refusal"), PRIVILEGED)
async def test_privileged_commands_refuse_non_experts(bot, gateway, discord_api, name, options, sub, refusal):
    attachments = None
    if name == "import":
        attachments = {"1": {"id": "1", "filename": "x.json", "size": 10, "url": "http://127.0.0.1:1/x",
                             "proxy_url": "http://127.0.0.1:1/x"}}
    await gateway.command(name, options, subcommand=sub, user_id=MEMBER, roles=[], attachments=attachments)
    response = last_response(discord_api)
    assert response["type"] == 4
    assert response["data"]["flags"] & EPHEMERAL
    assert refusal in response["data"]["content"]


async def test_review_buttons_refuse_non_experts(bot, gateway, discord_api):
    example = await bot.store.add_example(Conversation.qa("q", "a"), source="teach", author_id=AUTHOR)
    msg = message_with_buttons([f"ll:rv:{a}:{example.id}" for a in ("1", "2", "3", "4", "5", "approve", "reject",
                                                                    "edit")])
    for custom_id in (f"ll:rv:5:{example.id}", f"ll:rv:edit:{example.id}"):
        await gateway.click(custom_id, message=msg, user_id=MEMBER, roles=[])
        assert "Only experts" in last_response(discord_api)["data"]["content"]
    await gateway.click(f"ll:rv:approve:{example.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    assert "Only admins" in last_response(discord_api)["data"]["content"]
    assert (await bot.store.get_example(example.id)).status == "pending"
    assert await bot.store.ratings_for(example.id) == []


async def test_teach_modal_creates_pending_example(bot, gateway, discord_api):
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    modal = last_response(discord_api)
    assert modal["type"] == 9  # MODAL
    fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
    await gateway.submit_modal(modal["data"]["custom_id"], dict(zip(fields, ["What is r?", "The LoRA rank.", ""],
                                                                    strict=True)),
                               user_id=EXPERT, roles=[EXPERT_ROLE])
    assert "waiting for expert review" in discord_api.reply_text()
    [example] = await bot.store.list_examples()
    assert example.status == "pending" and example.source == "teach" and example.author_id == EXPERT
    assert example.messages == [{"role": "user", "content": "What is r?"},
                                {"role": "assistant", "content": "The LoRA rank."}]


async def test_teach_modal_refuses_oversize_and_duplicates(bot, gateway, discord_api):
    await bot.store.add_example(Conversation.qa("known", "yes"), source="teach")
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    modal = last_response(discord_api)["data"]
    fields = [c["components"][0]["custom_id"] for c in modal["components"]]
    bot.settings.max_field_chars = 50
    await gateway.submit_modal(modal["custom_id"], dict(zip(fields, ["q" * 60, "a", ""], strict=True)),
                               user_id=EXPERT, roles=[EXPERT_ROLE])
    assert "over the limit of 50" in discord_api.reply_text()
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    modal = last_response(discord_api)["data"]
    await gateway.submit_modal(modal["custom_id"], dict(zip(fields, ["known", "yes", ""], strict=True)),
                               user_id=EXPERT, roles=[EXPERT_ROLE])
    assert "already in the dataset" in discord_api.reply_text()
    assert len(await bot.store.list_examples()) == 1


async def test_review_flow_rates_and_shows_next(bot, gateway, discord_api):
    own = await bot.store.add_example(Conversation.qa("mine", "x"), source="teach", author_id=EXPERT)
    other = await bot.store.add_example(Conversation.qa("theirs", "y"), source="teach", author_id=AUTHOR)
    await gateway.command("review", user_id=EXPERT, roles=[EXPERT_ROLE])
    shown = last_response(discord_api)["data"]
    assert f"Example #{other.id}" in shown["content"] and shown["flags"] & EPHEMERAL  # never one's own
    buttons = [c["custom_id"] for row in shown["components"] for c in row["components"]]
    assert f"ll:rv:4:{other.id}" in buttons and f"ll:rv:approve:{other.id}" in buttons
    await gateway.click(f"ll:rv:4:{other.id}", message=discord_api.messages[max(discord_api.messages)],
                        user_id=EXPERT, roles=[EXPERT_ROLE])
    assert last_response(discord_api)["type"] == 6  # deferred before the write; the card is then edited
    update = last_edit(discord_api).json
    assert f"Rated #{other.id} 4/5" in update["content"] and "Nothing left to review" in update["content"]
    await gateway.command("review", user_id=ADMIN, roles=[ADMIN_ROLE])
    assert f"Example #{own.id}" in last_response(discord_api)["data"]["content"]  # oldest the admin did not write
    await gateway.click(f"ll:rv:5:{other.id}", message=message_with_buttons([f"ll:rv:5:{other.id}"]),
                        user_id=ADMIN, roles=[ADMIN_ROLE])
    assert "→ approved" in last_edit(discord_api).json["content"]
    assert (await bot.store.get_example(other.id)).status == "approved"
    assert (await bot.store.get_example(own.id)).status == "pending"


async def test_feedback_buttons_survive_a_restart(discord_api, settings, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="an answer")
    first = await start_bot(settings)
    answer = await first.store.record_answer(prompt=[{"role": "user", "content": "why?"}], answer="because",
                                             model_tag=BASE_TAG)
    await first.close()
    second = await start_bot(settings)  # a new process: nothing in memory but the registered DynamicItems
    try:
        gw = Gateway(second, discord_api)
        msg = message_with_buttons([f"ll:fb:{k}:{answer.id}" for k in ("up", "down", "fix")], "because")
        await gw.click(f"ll:fb:up:{answer.id}", message=msg, user_id=MEMBER)
        assert "noted" in discord_api.reply_text()
        assert await feedback_counts(second.store, answer.id) == (1, 0)
        # Suggesting follows /teach's rule (experts here; this server does not allow non-expert teaching).
        await gw.click(f"ll:fb:fix:{answer.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
        modal = last_response(discord_api)
        assert modal["type"] == 9
        question = modal["data"]["components"][0]["components"][0]
        assert question["value"] == "why?"  # prefilled with the question
        fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
        await gw.submit_modal(modal["data"]["custom_id"], dict(zip(fields, ["why?", "Because of X."], strict=True)),
                              user_id=EXPERT, roles=[EXPERT_ROLE])
        [example] = await second.store.list_examples()
        assert example.source == "correction" and example.answer_id == answer.id and example.status == "pending"
    finally:
        await second.close()


async def test_model_status_and_rollback_for_admins(bot, gateway, discord_api, ollama_server):
    v1 = await bot.store.create_model_version(name="m", base_model="tiny", ollama_base=BASE_TAG)
    v2 = await bot.store.create_model_version(name="m", base_model="tiny", ollama_base=BASE_TAG)
    for v in (v1, v2):
        await bot.store.update_model_version(v.id, status="registered", in_ollama=True)
        ollama_server.add_scripted_model(v.tag, reply="x")
        await bot.store.promote(v.id)
    gate = GateResult(v2.tag, v1.tag, 0.02, True, "candidate ROUGE-L 0.610 vs active 0.500 (margin 0.02)",
                      {"candidate": {"rouge_l": 0.61, "exact_match": 0.2, "count": 5},
                       "active": {"rouge_l": 0.5, "exact_match": 0.0, "count": 5}})
    await bot.store.update_model_version(v2.id, evaluation=gate.to_dict())
    await gateway.command("model", subcommand="status", user_id=MEMBER)
    status = last_response(discord_api)["data"]["content"]
    assert f"`{v2.tag}`" in status and "ROUGE-L" in status and "0.610" in status and "PASS" in status
    await gateway.command("model", subcommand="rollback", user_id=ADMIN, roles=[ADMIN_ROLE])
    assert f"Roll back from `{v2.tag}` to `{v1.tag}`?" in discord_api.reply_text()  # the target, to confirm
    assert (await bot.store.active_model_version()).id == v2.id
    confirm = discord_api.messages[max(discord_api.messages)]
    await gateway.click(f"ll:rb:{v1.id}", message=confirm, user_id=MEMBER)
    assert "Only admins" in discord_api.reply_text()
    await gateway.click(f"ll:rb:{v1.id}", message=confirm, user_id=ADMIN, roles=[ADMIN_ROLE])
    assert f"now answering with `{v1.tag}`" in discord_api.reply_text()
    assert (await bot.store.active_model_version()).id == v1.id
    await gateway.command("model", subcommand="history", user_id=MEMBER)
    assert "rolled_back" in last_response(discord_api)["data"]["content"]


async def test_commands_synced_per_guild_on_start(bot, discord_api):
    puts = discord_api.find("PUT", f"/guilds/{GUILD_ID}/commands")
    assert len(puts) == 1
    names = {c["name"] for c in puts[0].json}
    assert {"ask", "teach", "import", "review", "dataset", "model"} <= names


async def test_dataset_stats(bot, gateway, discord_api):
    await bot.store.import_conversations([Conversation.qa(f"q{i}", "a") for i in range(3)], approve=True)
    await gateway.command("dataset", subcommand="stats", user_id=MEMBER)
    assert "**Examples:** 3" in last_response(discord_api)["data"]["content"]




async def test_import_attachment_reports_each_outcome(bot, gateway, discord_api):
    import json

    await bot.store.add_example(Conversation.qa("known", "yes"), source="teach")
    rows = [{"instruction": "new one", "input": "", "output": "fine"},
            {"instruction": "known", "input": "", "output": "yes"},
            {"instruction": "no answer"}]
    attachment = discord_api.attachment("pairs.json", json.dumps(rows).encode())
    await gateway.command("import", {"file": attachment["id"]}, user_id=EXPERT, roles=[EXPERT_ROLE],
                          attachments={attachment["id"]: attachment})
    assert last_response(discord_api)["type"] == 5  # deferred: the file is downloaded and parsed
    await wait_until(lambda: discord_api.find("POST", "/webhooks/"))
    followups = discord_api.find("POST", "/webhooks/")
    assert followups, "no follow-up reached Discord"
    text = followups[-1].json["content"]
    assert "imported **1**" in text and "duplicates **1**" in text and "rejected **1**" in text
    assert 'record 2: missing "output"' in text and followups[-1].json["flags"] & EPHEMERAL
    pending = await bot.store.list_examples(status="pending")
    assert [e.messages[0]["content"] for e in pending] == ["known", "new one"]


async def test_import_refuses_oversize_and_garbage(bot, gateway, discord_api):
    bot.settings.max_import_bytes = 100
    big = discord_api.attachment("big.json", b"[" + b" " * 200 + b"]")
    await gateway.command("import", {"file": big["id"]}, user_id=EXPERT, roles=[EXPERT_ROLE],
                          attachments={big["id"]: big})
    assert "the limit is 100 bytes" in last_response(discord_api)["data"]["content"]
    junk = discord_api.attachment("junk.json", b"\x00\x01\x02")
    await gateway.command("import", {"file": junk["id"]}, user_id=EXPERT, roles=[EXPERT_ROLE],
                          attachments={junk["id"]: junk})
    await wait_until(lambda: discord_api.find("POST", "/webhooks/"))
    assert "was not imported: this is a binary file" in discord_api.find("POST", "/webhooks/")[-1].json["content"]
    assert await bot.store.list_examples() == []


async def test_export_sends_a_file(bot, gateway, discord_api):
    await bot.store.import_conversations([Conversation.qa(f"q{i}", "a") for i in range(3)], approve=True)
    await gateway.command("dataset", {"format": "openai"}, subcommand="export", user_id=EXPERT, roles=[EXPERT_ROLE])
    assert last_response(discord_api)["type"] == 5  # deferred: the whole dataset is read and encoded
    call = discord_api.find("POST", "/webhooks/")[-1]
    assert call.json["content"].startswith("3 approved examples")
    [(name, payload)] = call.files
    assert name == "loraloop-openai.jsonl" and len(payload.splitlines()) == 3
