"""A LoraloopBot for tests and the bench: its settings, its login to the Discord stand-in, the people who talk to it,
and the steps they take (mention it, teach and approve a pair) as the Discord stand-in records them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord
from discord import app_commands

from bot.app import LoraloopBot
from bot.settings import GuildRoles, Settings
from data.store import Store
from tests.harness.db import seed_sqlite
from tests.harness.discord import (
    ADMIN_ROLE,
    BOT_ID,
    CHANNEL_ID,
    EXPERT_ROLE,
    GUILD_ID,
    Call,
    DiscordAPI,
    Gateway,
    message_payload,
    message_with_buttons,
    user_payload,
)
from tests.harness.ollama_server import OllamaTestServer
from tests.harness.polling import wait_until

BASE_TAG = "tiny-base:latest"
FAKE_TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAw.GAbCdE.fake-token-for-tests-0123456789abcdef"

# People in the test guild (user ids); EXPERT and ADMIN act with EXPERT_ROLE / ADMIN_ROLE.
EXPERT, ADMIN, MEMBER, AUTHOR = 21, 22, 23, 24
USER = user_payload(11, "alice")
BOT = {"id": str(BOT_ID), "username": "loraloop", "discriminator": "0", "avatar": None, "bot": True}
# The test guild with an experts channel (where retrain proposals and their results are posted).
EXPERTS_CHANNEL_GUILDS = {GUILD_ID: GuildRoles(expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                               experts_channel_id=CHANNEL_ID)}

# A pair the retrieval tests teach, and the question it answers.
QUESTION = "How do I reset my password on the staging cluster?"
ANSWER = "Run `vault reset --env staging` and wait for the mail."

Handler = Callable[[discord.Interaction], Awaitable[None]]


def make_settings(tmp_path, ollama_url: str, **overrides) -> Settings:
    values = dict(
        home=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", ollama_host=ollama_url,
        ollama_base=BASE_TAG, system_prompt="You are terse.", chat_cooldown_s=0, rating_quorum=2,
        guilds={GUILD_ID: GuildRoles(expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                     allow_non_expert_teach=False)},
    )
    values.update(overrides)
    return Settings(**values)


async def start_bot(settings: Settings, **options) -> LoraloopBot:
    """``options``: LoraloopBot's keyword arguments (dispatcher, run_scheduler, …)."""
    await seed_sqlite(settings.resolved_database_url)  # a new database: a copy of a migrated one (tests/harness/db.py)
    # Scoped to the first community, as the bot's own: a test's bot.store.add_example teaches the test guild.
    store = Store(settings.resolved_database_url,
                  policy=settings.review.policy(),
                  community=settings.community_names()[0])
    bot = LoraloopBot(settings, store=store, **options)
    await bot.login(FAKE_TOKEN)  # GET /users/@me, application info, setup_hook (migrate, cogs, sync)
    return bot


def add_test_command(bot, name: str, handler: Handler) -> None:
    """A guild command on the bot's own tree, dispatched like any other (no sync needed to receive it)."""

    async def callback(interaction: discord.Interaction) -> None:
        await handler(interaction)

    bot.tree.add_command(app_commands.Command(name=name, description="test", callback=callback),
                         guild=discord.Object(GUILD_ID))


def mention(text: str, **kw) -> dict:
    return message_payload(f"<@{BOT_ID}> {text}", author=kw.pop("author", USER), mentions=[BOT], **kw)


def last_response(api: DiscordAPI) -> dict:
    return api.interaction_responses()[-1].json


def last_edit(api: DiscordAPI) -> Call:
    """The newest accepted edit through an interaction's webhook: a deferred click's update of its message."""
    return [c for c in api.find("PATCH", "/webhooks/") if c.status < 400][-1]


async def ask(gateway: Gateway, discord_api: DiscordAPI, text: str, **where) -> dict:
    """Mention the bot; the bot's finished reply (the message that carries the feedback buttons). ``where``:
    message_payload's guild_id, channel_id, author (a DM: guild_id None)."""
    def finished() -> list[dict]:
        return [m for m in discord_api.bot_messages() if m.get("components")]

    before = len(finished())
    await gateway.message(mention(text, **where))
    await wait_until(lambda: len(finished()) > before)
    return finished()[-1]


def chats(ollama_server: OllamaTestServer) -> list[list[dict[str, Any]]]:
    """The messages of every chat the model server received, oldest first."""
    return [body["messages"] for body in ollama_server.requests_to("POST", "/api/chat")]


async def teach(gateway: Gateway, discord_api: DiscordAPI, question: str, answer: str, *, guild_id: int = GUILD_ID,
                channel_id: int = CHANNEL_ID, expert_role: int = EXPERT_ROLE) -> str:
    """An expert teaches a pair with /teach and its form; what the bot answered the form."""
    where = {"guild_id": guild_id, "channel_id": channel_id}
    await gateway.command("teach", user_id=EXPERT, roles=[expert_role], **where)
    modal = last_response(discord_api)
    fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
    await gateway.submit_modal(modal["data"]["custom_id"], dict(zip(fields, [question, answer, ""], strict=True)),
                               user_id=EXPERT, roles=[expert_role], **where)
    return discord_api.reply_text()


async def teach_and_approve(bot, gateway: Gateway, discord_api: DiscordAPI, question: str, answer: str, *,
                            guild_id: int = GUILD_ID, channel_id: int = CHANNEL_ID, expert_role: int = EXPERT_ROLE,
                            admin_role: int = ADMIN_ROLE) -> int:
    """An expert of ``guild_id`` teaches a pair and its admin approves it; the example's id."""
    await teach(gateway, discord_api, question, answer, guild_id=guild_id, channel_id=channel_id,
                expert_role=expert_role)
    store = bot.community_store(bot.settings.community_of_guild(guild_id))
    [example] = [e for e in await store.list_examples(status="pending") if e.messages[0]["content"] == question]
    await gateway.click(f"ll:rv:approve:{example.id}", user_id=ADMIN, roles=[admin_role], guild_id=guild_id,
                        channel_id=channel_id, message=message_with_buttons(
                            [f"ll:rv:approve:{example.id}"], guild_id=guild_id, channel_id=channel_id))
    await bot.retrievers.wait_idle()  # the approval asked for a sync; it runs beside the click's response
    return example.id
