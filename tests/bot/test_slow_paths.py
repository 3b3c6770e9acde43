"""Handlers whose work can outlast Discord's 3 s window answer first (a defer) and report in a follow-up.

The slowness is real: the Ollama-API test server waits ``latency_s`` before every /api/* request, and the
Discord stand-in refuses a first response after 3 s — so without the defer these tests fail."""

from __future__ import annotations

import asyncio
import gzip
import json

from bot.settings import GuildRoles
from data import runs
from data.conversation import Conversation
from tests.harness.bot import BASE_TAG, make_settings, start_bot
from tests.harness.discord import ADMIN_ROLE, CHANNEL_ID, EXPERT_ROLE, GUILD_ID, Gateway, message_with_buttons

EXPERT, ADMIN, MEMBER = 51, 52, 53
SLOW_OLLAMA_S = 3.5
DEFERRED = 5
EPHEMERAL = 64


def followups(api) -> list:
    return [c for c in api.find("POST", "/webhooks/") if c.status == 200]


async def promoted_versions(bot, ollama_server, n: int) -> list:
    """``n`` versions promoted in turn: the last is active, the one before it the rollback target."""
    versions = []
    for _ in range(n):
        v = await bot.store.create_model_version(name="m", base_model="tiny", ollama_base=BASE_TAG)
        await bot.store.update_model_version(v.id, status="registered", in_ollama=True)
        ollama_server.add_scripted_model(v.tag, reply="x")
        await bot.store.promote(v.id)
        versions.append(v)
    return versions


async def test_rollback_defers_while_ollama_is_slow_and_a_retry_changes_nothing(bot, gateway, discord_api,
                                                                                  ollama_server):
    v0, v1, v2 = await promoted_versions(bot, ollama_server, 3)
    ollama_server.latency_s = SLOW_OLLAMA_S
    await gateway.command("model", subcommand="rollback", user_id=ADMIN, roles=[ADMIN_ROLE])
    assert discord_api.interaction_responses()[-1].json["type"] == DEFERRED
    confirm = followups(discord_api)[-1].json
    assert confirm["content"] == f"Roll back from `{v2.tag}` to `{v1.tag}`?"
    [button] = [c["custom_id"] for row in confirm["components"] for c in row["components"]]
    assert button == f"ll:rb:{v1.id}"
    assert (await bot.store.active_model_version()).id == v2.id  # nothing changed before the confirmation

    message = message_with_buttons([button])
    # The admin clicks, the answer seems slow, they click again: both clicks name v1, so v1 it stays.
    await asyncio.gather(*(gateway.click(button, message=message, user_id=ADMIN, roles=[ADMIN_ROLE])
                           for _ in range(2)))
    texts = sorted(c.json["content"] for c in followups(discord_api)[-2:])
    assert texts == [f"Nothing to do: {v1.tag} is already the active model; nothing was rolled back.",
                     f"Rolled back: now answering with `{v1.tag}`."]
    await gateway.click(button, message=message, user_id=ADMIN, roles=[ADMIN_ROLE])  # later, once more
    assert followups(discord_api)[-1].json["content"].startswith("Nothing to do:")
    assert (await bot.store.active_model_version()).id == v1.id  # not v0: never two versions back
    assert (await bot.store.get_model_version(v0.id)).status == "promoted"
    assert all(t < 3 for t in discord_api.first_response_times["button ll:rb:…"])


async def test_rollback_to_a_named_version(bot, gateway, discord_api, ollama_server):
    v0, v1, v2 = await promoted_versions(bot, ollama_server, 3)
    ollama_server.latency_s = SLOW_OLLAMA_S
    await gateway.command("model", {"to": v0.tag}, subcommand="rollback", user_id=ADMIN, roles=[ADMIN_ROLE])
    assert f"{v0.tag} is not the previous good version (that is {v1.tag})" in discord_api.reply_text()
    for _ in range(2):
        await gateway.command("model", {"to": v1.tag}, subcommand="rollback", user_id=ADMIN, roles=[ADMIN_ROLE])
    assert [c.json["content"] for c in followups(discord_api)[-2:]] == [
        f"Rolled back: now answering with `{v1.tag}`.",
        f"Nothing to do: {v1.tag} is already the active model; nothing was rolled back."]
    assert (await bot.store.active_model_version()).id == v1.id
    assert all(c.json["type"] == DEFERRED for c in discord_api.interaction_responses())


async def test_ask_defers_while_ollama_is_slow(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="slow but sure")
    ollama_server.latency_s = SLOW_OLLAMA_S
    await gateway.command("ask", {"question": "are you there?"}, user_id=MEMBER)
    assert discord_api.interaction_responses()[-1].json["type"] == DEFERRED
    assert followups(discord_api)  # the answer's first piece replaces the "thinking…" message
    # Then it is edited as it streams (the last edit may carry only the buttons: an edit keeps what it leaves out).
    sent = [c.json for c in discord_api.calls if "/webhooks/" in c.path and "content" in (c.json or {})]
    assert sent[-1]["content"] == "slow but sure"


async def test_export_defers_before_reading_the_dataset(bot, gateway, discord_api):
    await bot.store.import_conversations([Conversation.qa(f"q{i}", "a") for i in range(3)], approve=True)
    await gateway.command("dataset", {"format": "openai"}, subcommand="export", user_id=EXPERT, roles=[EXPERT_ROLE])
    [defer] = discord_api.interaction_responses()
    assert defer.json == {"type": DEFERRED, "data": {"flags": EPHEMERAL}}
    [upload] = followups(discord_api)
    assert defer.at < upload.at
    assert upload.json["content"] == "3 approved examples (openai)."
    [(name, payload)] = upload.files
    assert name == "loraloop-openai.jsonl" and len(payload.splitlines()) == 3


async def test_export_over_the_upload_limit_is_compressed_or_explained(bot, gateway, discord_api):
    await bot.store.import_conversations([Conversation.qa(f"question {i}?", "the same answer " * 4)
                                          for i in range(60)], approve=True)
    await gateway.command("dataset", {"format": "openai"}, subcommand="export", user_id=EXPERT, roles=[EXPERT_ROLE])
    plain = followups(discord_api)[-1].files[0][1]
    assert len(plain) > 4000

    gateway.attachment_size_limit = 4000  # the whole export does not fit, gzip does
    await gateway.command("dataset", {"format": "openai"}, subcommand="export", user_id=EXPERT, roles=[EXPERT_ROLE])
    upload = followups(discord_api)[-1]
    [(name, packed)] = upload.files
    assert name == "loraloop-openai.jsonl.gz" and len(packed) <= 4000 and gzip.decompress(packed) == plain
    assert "Gzip-compressed" in upload.json["content"]

    gateway.attachment_size_limit = 100  # nothing fits: the answer says how to get the file
    await gateway.command("dataset", {"format": "openai"}, subcommand="export", user_id=EXPERT, roles=[EXPERT_ROLE])
    answer = followups(discord_api)[-1]
    assert answer.files == [] and answer.json["flags"] & EPHEMERAL
    assert f"{len(plain):,} bytes, over this channel's upload limit of 100 bytes" in answer.json["content"]
    assert "`loraloop dataset export --format openai --out loraloop-openai.jsonl`" in answer.json["content"]
    assert [c.status for c in discord_api.find("POST", "/webhooks/")] == [200] * 3  # no refused upload


async def test_retrain_propose_and_promote_defer(tmp_path, discord_api, ollama_server):
    guilds = {GUILD_ID: GuildRoles(expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                   experts_channel_id=CHANNEL_ID)}
    settings = make_settings(tmp_path, ollama_server.url, guilds=guilds, retrain_promotion="manual")
    bot = await start_bot(settings, run_scheduler=False)
    gateway = Gateway(bot, discord_api)
    try:
        await bot.store.import_conversations([Conversation.qa(f"q{i}", "a") for i in range(5)], approve=True)
        await gateway.command("retrain", subcommand="propose", user_id=EXPERT, roles=[EXPERT_ROLE])
        defer = discord_api.interaction_responses()[-1]
        [posted] = discord_api.sent_messages()
        assert defer.json["type"] == DEFERRED and defer.at < posted.at  # answered before the proposal is posted
        assert "Retrain #1 proposed" in discord_api.reply_text()
        await gateway.command("retrain", subcommand="cancel", user_id=ADMIN, roles=[ADMIN_ROLE])

        # An evaluated candidate waiting for a manual Promote; Ollama is slow (has_model, retention).
        version = await bot.store.create_model_version(name="assistant", base_model="tiny",
                                                       ollama_base=settings.ollama_base)
        await bot.store.update_model_version(version.id, status="evaluated", in_ollama=True)
        ollama_server.add_scripted_model(version.tag, reply="tuned")
        run = await runs.propose_run(bot.store, summary={}, channel_id=CHANNEL_ID)
        for state in ("approved", "snapshotted", "training", "converting", "registering", "evaluating",
                      "evaluated"):
            await runs.transition(bot.store, run.id, state, **({"model_version_id": version.id}
                                                               if state == "snapshotted" else {}))
        ollama_server.latency_s = SLOW_OLLAMA_S
        ids = [f"ll:rt:promote:{run.id}", f"ll:rt:discard:{run.id}"]
        await gateway.click(ids[0], message=message_with_buttons(ids), user_id=EXPERT, roles=[EXPERT_ROLE])
        assert discord_api.interaction_responses()[-1].json["type"] == DEFERRED
        assert discord_api.reply_text() == f"Retrain #{run.id}: promoted"
        assert (await bot.store.active_model_version()).tag == version.tag
    finally:
        await bot.close()


async def test_cli_rollback_to_a_tag_twice_goes_back_once(bot, settings, ollama_server, monkeypatch):
    from typer.testing import CliRunner

    from bot.cli import app

    v0, v1, v2 = await promoted_versions(bot, ollama_server, 3)
    for key, value in {"LORALOOP_HOME": str(settings.home), "LORALOOP_DATABASE_URL": settings.resolved_database_url,
                       "LORALOOP_OLLAMA_HOST": ollama_server.url,
                       "LORALOOP_GUILDS": json.dumps({str(g): {} for g in settings.guilds})}.items():  # its community
        monkeypatch.setenv(key, value)
    results = [await asyncio.to_thread(CliRunner().invoke, app, ["models", "rollback", "--to", v1.tag])
               for _ in range(2)]
    assert [r.exit_code for r in results] == [0, 0], [r.output for r in results]
    assert f"rolled back: active model is now {v1.tag}" in results[0].output
    assert f"nothing to do: {v1.tag} is already the active model" in results[1].output
    assert (await bot.store.active_model_version()).id == v1.id
    wrong = await asyncio.to_thread(CliRunner().invoke, app, ["models", "rollback", "--to", v2.tag])
    assert wrong.exit_code == 1 and f"{v2.tag} is not the previous good version (that is {v0.tag})" in wrong.output
