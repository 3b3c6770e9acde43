"""/retrain through discord.py's real CommandTree and DynamicItems: who may do what, and what the experts see."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from sqlalchemy import text
from typer.testing import CliRunner

from bot.permissions import NOT_SET_UP
from bot.settings import GuildRoles
from data import runs
from data.models import utcnow
from data.store import Store
from tests.harness.bot import EXPERTS_CHANNEL_GUILDS, make_settings, start_bot
from tests.harness.discord import ADMIN_ROLE, CHANNEL_ID, EXPERT_ROLE, GUILD_ID, Gateway, message_with_buttons
from tests.harness.polling import wait_until
from tests.harness.retrain import approved_examples

EXPERT, OTHER_EXPERT, ADMIN, MEMBER = 41, 42, 43, 44


async def test_propose_vote_reject_cancel_and_status(tmp_path, discord_api, ollama_server):
    settings = make_settings(tmp_path, ollama_server.url, guilds=EXPERTS_CHANNEL_GUILDS)
    bot = await start_bot(settings)
    gateway = Gateway(bot, discord_api)
    try:
        await gateway.command("retrain", subcommand="propose", user_id=MEMBER, roles=[])
        assert "Only experts" in discord_api.reply_text()
        await gateway.command("retrain", subcommand="propose", user_id=EXPERT, roles=[EXPERT_ROLE])
        assert "No retrain proposed: 0 new approved examples" in discord_api.reply_text()
        await gateway.command("retrain", subcommand="status", user_id=MEMBER, roles=[])
        assert discord_api.reply_text() == "No retrains yet."

        await approved_examples(bot.store, 12)
        await gateway.command("retrain", subcommand="propose", user_id=EXPERT, roles=[EXPERT_ROLE])
        assert "Retrain #1 proposed" in discord_api.reply_text()
        run = await runs.open_run(bot.store)
        proposal = discord_api.messages[run.message_id]
        assert "**12**" in proposal["content"] and "r=16" in proposal["content"] and "Approvals: 0/2" in \
            proposal["content"]
        await gateway.command("retrain", subcommand="propose", user_id=OTHER_EXPERT, roles=[EXPERT_ROLE])
        assert "already open: #1 (proposed)" in discord_api.reply_text()

        buttons = [c["custom_id"] for row in proposal["components"] for c in row["components"]]
        await gateway.click(buttons[0], message=message_with_buttons(buttons), user_id=MEMBER, roles=[])
        assert "Only experts" in discord_api.reply_text()
        await gateway.click(buttons[0], message=message_with_buttons(buttons), user_id=EXPERT, roles=[EXPERT_ROLE])
        assert discord_api.reply_text() == "Approved (1/2)."
        await wait_until(lambda: "Approvals: 1/2" in proposal["content"])  # the proposal message is edited
        await gateway.command("retrain", subcommand="status", user_id=MEMBER, roles=[])
        assert "#1 **proposed** — 1/2 approvals, 12 new examples" in discord_api.reply_text()
        await gateway.click(buttons[1], message=message_with_buttons(buttons), user_id=OTHER_EXPERT,
                            roles=[EXPERT_ROLE])
        assert discord_api.reply_text() == "Retrain #1 rejected."
        await wait_until(lambda: f"**rejected**: rejected by expert {OTHER_EXPERT}" in proposal["content"])
        assert proposal["components"] == []
        assert await runs.open_run(bot.store) is None

        await gateway.command("retrain", subcommand="propose", user_id=EXPERT, roles=[EXPERT_ROLE])
        await gateway.command("retrain", subcommand="cancel", user_id=EXPERT, roles=[EXPERT_ROLE])
        assert "Only admins" in discord_api.reply_text()
        await gateway.command("retrain", subcommand="cancel", user_id=ADMIN, roles=[ADMIN_ROLE])
        await wait_until(lambda: "cancelled" in discord_api.reply_text())  # deferred: the answer is a followup
        assert discord_api.reply_text() == f"Retrain #2 cancelled: cancelled by {ADMIN}"
        await gateway.command("retrain", subcommand="cancel", user_id=ADMIN, roles=[ADMIN_ROLE])
        assert discord_api.reply_text() == "Nothing to cancel: no retrain is open."
        await gateway.command("retrain", subcommand="status", user_id=MEMBER, roles=[])
        assert discord_api.reply_text().splitlines() == [f"#2 **cancelled** — cancelled by {ADMIN}",
                                                   f"#1 **rejected** — rejected by expert {OTHER_EXPERT}"]
    finally:
        await bot.close()


async def test_command_line_proposal_is_announced_and_reminded(tmp_path, discord_api, ollama_server, monkeypatch):
    settings = make_settings(tmp_path, ollama_server.url, guilds=EXPERTS_CHANNEL_GUILDS, retrain_expiry_h=24,
                             retrain_reminder_h=6)
    bot = await start_bot(settings)
    try:
        await approved_examples(bot.store, 7)
        for key, value in {"LORALOOP_HOME": str(tmp_path), "LORALOOP_DATABASE_URL": settings.resolved_database_url,
                           "LORALOOP_GUILDS": json.dumps({str(k): v.model_dump()
                                                          for k, v in EXPERTS_CHANNEL_GUILDS.items()}),
                           "OLLAMA_HOST": ollama_server.url}.items():
            monkeypatch.setenv(key, value)
        from bot.cli import app

        result = await asyncio.to_thread(CliRunner().invoke, app, ["retrain", "propose"])
        assert result.exit_code == 0, result.output
        assert "retrain #1 proposed with 7 new examples" in result.output
        again = await asyncio.to_thread(CliRunner().invoke, app, ["retrain", "propose"])
        assert again.exit_code == 1 and "already open: #1" in again.output

        cog = bot.get_cog("RetrainCog")
        await cog.orchestrator.expire_due()  # the bot's housekeeping job announces it
        run = await runs.get_run(bot.store, 1)
        assert "(by the command line)" in discord_api.messages[run.message_id]["content"]
        assert int(discord_api.messages[run.message_id]["channel_id"]) == CHANNEL_ID
        async with bot.store.session() as s, s.begin():
            await s.execute(text("update retrain_runs set expires_at = :t"), {"t": utcnow() + timedelta(hours=5)})
        await cog.orchestrator.expire_due()
        reminder = discord_api.find("POST", f"/channels/{CHANNEL_ID}/messages")[-1].json
        assert reminder["content"].startswith("⏰ Retrain proposal #1 expires") and "0/2 approvals" in \
            reminder["content"]
        assert int(reminder["message_reference"]["message_id"]) == run.message_id

        status = await asyncio.to_thread(CliRunner().invoke, app, ["retrain", "status", "--json"])
        assert json.loads(status.stdout)[0]["state"] == "proposed"
        cancelled = await asyncio.to_thread(CliRunner().invoke, app, ["retrain", "cancel"])
        assert cancelled.exit_code == 0 and "retrain #1 cancelled" in cancelled.output
    finally:
        await bot.close()


async def test_manual_promotion_buttons(tmp_path, discord_api, ollama_server):
    """retrain_promotion: manual — an evaluated candidate waits for an expert's Promote (or Discard)."""
    settings = make_settings(tmp_path, ollama_server.url, guilds=EXPERTS_CHANNEL_GUILDS, retrain_promotion="manual")
    bot = await start_bot(settings)
    gateway = Gateway(bot, discord_api)
    try:
        store = bot.store
        tags = []
        for _ in range(2):
            version = await store.create_model_version(name="assistant", base_model="tiny",
                                                       ollama_base=settings.ollama_base)
            await store.update_model_version(version.id, status="evaluated", in_ollama=True)
            ollama_server.add_scripted_model(version.tag, reply="tuned")
            run = await runs.propose_run(store, summary={}, channel_id=CHANNEL_ID)
            for state in ("approved", "snapshotted", "training", "converting", "registering", "evaluating",
                          "evaluated"):
                await runs.transition(store, run.id, state, **({"model_version_id": version.id}
                                                               if state == "snapshotted" else {}))
            tags.append((run.id, version.tag))
            if len(tags) == 1:
                ids = [f"ll:rt:promote:{run.id}", f"ll:rt:discard:{run.id}"]
                await gateway.click(ids[0], message=message_with_buttons(ids), user_id=MEMBER, roles=[])
                assert "Only experts" in discord_api.reply_text()
                await gateway.click(ids[0], message=message_with_buttons(ids), user_id=EXPERT, roles=[EXPERT_ROLE])
                assert discord_api.reply_text() == f"Retrain #{run.id}: promoted"
                assert (await store.active_model_version()).tag == version.tag
            else:
                ids = [f"ll:rt:promote:{run.id}", f"ll:rt:discard:{run.id}"]
                await gateway.click(ids[1], message=message_with_buttons(ids), user_id=EXPERT, roles=[EXPERT_ROLE])
                assert discord_api.reply_text().startswith(f"Retrain #{run.id}: rejected (discarded by expert {EXPERT}")
                assert (await store.active_model_version()).tag == tags[0][1]  # unchanged
                assert ollama_server.get(version.tag) is None  # the discarded candidate is deleted
                assert (await store.get_model_version(version.id)).status == "rejected"
    finally:
        await bot.close()


async def test_each_server_retrains_its_own_community(tmp_path, discord_api, ollama_server):
    """Two servers, each its own community: a proposal counts its server's examples and goes to its experts; status
    shows a server its own runs and where a dispatched one waits in the queue every community shares; another
    server's experts cannot vote on it, and a server outside every community is told how to set it up."""
    roles_b, channel_b, guild_b = 600_000_000_000_000_011, CHANNEL_ID + 1, GUILD_ID + 1
    guilds = {**EXPERTS_CHANNEL_GUILDS,
              guild_b: GuildRoles(expert_role_ids=[roles_b], admin_role_ids=[roles_b], experts_channel_id=channel_b)}
    bot = await start_bot(make_settings(tmp_path, ollama_server.url, guilds=guilds))
    gateway = Gateway(bot, discord_api)
    in_b = {"guild_id": guild_b, "channel_id": channel_b}
    try:
        gateway.add_guild(guild_b, channel_id=channel_b)
        b = bot.get_cog("RetrainCog").orchestrator_of(guild_b)
        assert b is not None and b.community == f"guild-{guild_b}"
        await approved_examples(bot.store, 12)  # the first server's
        await approved_examples(b.store, 5, seed=1)
        await gateway.command("retrain", subcommand="propose", user_id=EXPERT, roles=[roles_b], **in_b)
        assert f"Retrain #1 proposed in <#{channel_b}>" in discord_api.reply_text()
        run_b = await runs.open_run(b.store)
        proposal = discord_api.messages[run_b.message_id]
        assert int(proposal["channel_id"]) == channel_b and "**5**" in proposal["content"]
        await gateway.command("retrain", subcommand="status", user_id=MEMBER, roles=[])
        assert discord_api.reply_text() == "No retrains yet."
        # the first server's experts: B's run is none of theirs
        ids = [f"ll:rt:approve:{run_b.id}"]
        await gateway.click(ids[0], message=message_with_buttons(ids), user_id=EXPERT, roles=[EXPERT_ROLE])
        assert discord_api.reply_text() == f"there is no retrain run #{run_b.id}"

        # both dispatched, A's first: each server sees its own run and its place in the one queue
        run_a = await runs.propose_run(bot.store, summary={"new_examples": 12}, channel_id=CHANNEL_ID)
        for store, run in ((bot.store, run_a), (b.store, run_b)):
            await runs.transition(store, run.id, "approved")
        for store, run in ((bot.store, run_a), (b.store, run_b)):
            await runs.transition(store, run.id, "snapshotted")
        await gateway.command("retrain", subcommand="status", user_id=MEMBER, roles=[], **in_b)
        assert discord_api.reply_text() == f"**Retrain #{run_b.id}** · snapshotted · 1 ahead in the queue"
        await gateway.command("retrain", subcommand="status", user_id=MEMBER, roles=[])
        assert discord_api.reply_text() == f"**Retrain #{run_a.id}** · snapshotted · next in line"

        outside = GUILD_ID + 9
        await gateway.command("retrain", subcommand="status", user_id=MEMBER, roles=[], guild_id=outside,
                              channel_id=CHANNEL_ID + 9)
        assert discord_api.reply_text() == NOT_SET_UP.format(guild_id=outside)
    finally:
        await bot.close()


async def test_a_restarted_bot_recovers_every_communitys_runs(tmp_path, discord_api, ollama_server):
    """Runs left half-way by a bot that stopped are found in every community at start, not just the first one's
    (here: approved, never handed to a worker, so each fails with the reason, in its own community)."""
    guild_b = GUILD_ID + 1
    guilds = {**EXPERTS_CHANNEL_GUILDS, guild_b: GuildRoles(experts_channel_id=CHANNEL_ID + 1)}
    settings = make_settings(tmp_path, ollama_server.url, guilds=guilds)
    store = Store(settings.resolved_database_url)
    await store.migrate()
    left = {}
    for guild in guilds:
        scoped = store.scoped(settings.community_of_guild(guild))
        run = await runs.propose_run(scoped, summary={})
        left[guild] = (scoped, (await runs.transition(scoped, run.id, "approved")).id)
    bot = await start_bot(settings)
    try:
        for scoped, run_id in left.values():
            run = await runs.get_run(scoped, run_id)
            assert run.state == "failed" and "interrupted: the bot stopped before the job was handed" in run.reason
    finally:
        await bot.close()
        await store.close()
