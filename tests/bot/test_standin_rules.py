"""The Discord stand-in behaves as Discord does (/work/shared/notes/discord-contract.md): each rule fires.

Handlers are tiny test commands and buttons on the real bot; what they get back is what discord.py raises or
returns when Discord answers that way."""

from __future__ import annotations

import time

import discord
import pytest
from discord.ext import commands

from tests.harness.bot import FAKE_TOKEN, add_test_command
from tests.harness.discord import (
    BOT_ID,
    CHANNEL_ID,
    EPHEMERAL,
    Gateway,
    message_payload,
    message_with_buttons,
    reply_payload,
    user_payload,
)

ALICE = user_payload(11, "alice")
BOB = user_payload(12, "bob")
BOT = user_payload(BOT_ID, "loraloop", bot=True)


def capture_messages(client: discord.Client) -> list[discord.Message]:
    seen: list[discord.Message] = []

    async def on_message(message: discord.Message) -> None:
        seen.append(message)

    if isinstance(client, commands.Bot):
        client.add_listener(on_message, "on_message")
    else:
        client.event(on_message)
    return seen


# -- message content without the privileged intent --------------------------------------------------------
async def test_message_content_is_blank_without_the_intent(bot, gateway, discord_api):
    seen = capture_messages(bot)
    answer = discord_api.add_message(message_payload("Paris.", author=BOT))  # a regular bot message
    slash = discord_api.add_message(message_payload("Rome.", author=BOT, interaction_metadata={
        "id": "1", "type": 2, "user": ALICE, "authorizing_integration_owners": {}}, type=20))
    embed = [{"title": "t", "description": "d"}]
    await gateway.message(message_payload("chatting", author=ALICE, embeds=embed))
    await gateway.message(message_payload(f"<@{BOT_ID}> hi", author=ALICE, mentions=[BOT]))
    await gateway.message(message_payload("in a DM", author=ALICE, guild_id=None))
    await gateway.message(reply_payload("ping-reply", to=answer, author=ALICE))
    await gateway.message(reply_payload("quiet reply", to=answer, author=ALICE, ping=False))
    await gateway.message(reply_payload("reply to /ask", to=slash, author=ALICE))
    assert [m.content for m in seen] == ["", f"<@{BOT_ID}> hi", "in a DM", "ping-reply", "", ""]
    assert seen[0].embeds == [] and seen[5].mentions  # the ping reached the bot, the text did not
    # referenced_message is judged on its own: a mention replying to someone else's message
    chatter = discord_api.add_message(message_payload("the hidden turn", author=BOB))
    await gateway.message(reply_payload(f"<@{BOT_ID}> what about this?", to=chatter, author=ALICE,
                                        mentions=[BOT]))
    assert seen[-1].content.endswith("what about this?") and seen[-1].reference.resolved.content == ""
    # REST reads: fetches and history blank the same messages
    channel = bot.get_partial_messageable(CHANNEL_ID)
    assert (await channel.fetch_message(int(chatter["id"]))).content == ""
    assert (await channel.fetch_message(int(answer["id"]))).content == "Paris."
    history = {m.id: m.content async for m in channel.history(limit=50)}
    assert history[int(chatter["id"])] == "" and history[int(answer["id"])] == "Paris."
    assert discord_api.messages[int(chatter["id"])]["content"] == "the hidden turn"  # the truth is kept


async def test_the_intent_shows_everything_and_must_be_granted(discord_api):
    intents = discord.Intents.default()
    intents.message_content = True
    client = discord.Client(intents=intents)
    await client.login(FAKE_TOKEN)
    try:
        with pytest.raises(AssertionError, match="4014"):
            Gateway(client, discord_api)  # asked for, not granted in the portal
        discord_api.message_content_intent = True
        seen = capture_messages(client)
        await Gateway(client, discord_api).message(message_payload("chatting", author=ALICE))
        assert [m.content for m in seen] == ["chatting"]
        fetched = await client.get_partial_messageable(CHANNEL_ID).fetch_message(seen[0].id)
        assert fetched.content == "chatting"
    finally:
        await client.close()


# -- defer, then follow up ----------------------------------------------------------------------------------
async def test_the_first_follow_up_fills_the_loading_message(bot, gateway, discord_api):
    got: dict[str, discord.Message] = {}
    refused: list[discord.NotFound] = []

    async def deferred(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        got["first"] = await interaction.followup.send("first", ephemeral=False, wait=True)
        got["second"] = await interaction.followup.send("second", wait=True)
        got["edited"] = await got["second"].edit(content="second, edited")
        got["original"] = await interaction.edit_original_response(content="first, edited")
        try:
            await interaction.followup.edit_message(1234, content="nope")
        except discord.NotFound as exc:
            refused.append(exc)

    add_test_command(bot, "deferred", deferred)
    await gateway.command("deferred")
    [callback] = discord_api.interaction_responses()
    loading_id = int(discord_api.messages[got["first"].id]["id"])
    assert callback.json["type"] == 5
    assert got["first"].id == loading_id == got["original"].id  # filled, then edited in place
    assert discord_api.messages[loading_id]["flags"] & EPHEMERAL  # the defer chose; the follow-up's flag lost
    assert got["second"].id != loading_id and got["edited"].id == got["second"].id
    assert not discord_api.messages[got["second"].id]["flags"] & EPHEMERAL
    assert discord_api.messages[loading_id]["content"] == "first, edited"
    [exc] = refused
    assert exc.status == 404 and exc.code == 10008


async def test_ephemeral_messages_never_appear_in_history_or_fetches(bot, gateway, discord_api):
    ids: list[int] = []

    async def secret(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("only you", ephemeral=True)
        ids.append((await interaction.original_response()).id)
        ids.append((await interaction.followup.send("public", wait=True)).id)

    add_test_command(bot, "secret", secret)
    await gateway.command("secret")
    channel = bot.get_partial_messageable(CHANNEL_ID)
    assert [m.content async for m in channel.history(limit=10)] == ["public"]
    with pytest.raises(discord.NotFound) as refused:
        await channel.fetch_message(ids[0])
    assert refused.value.code == 10008
    assert (await channel.fetch_message(ids[1])).content == "public"


class UpdateView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="update", custom_id="standin:update")
    async def update(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content="updated in place")


async def test_a_type_7_update_edits_the_clicked_message(bot, gateway, discord_api):
    bot.add_view(UpdateView())
    clicked = message_with_buttons(["standin:update"], content="before")
    await gateway.click("standin:update", message=clicked)
    [callback] = discord_api.interaction_responses()
    assert callback.json["type"] == 7
    assert discord_api.messages[int(clicked["id"])]["content"] == "updated in place"
    assert len(discord_api.bot_messages()) == 1  # no new message


# -- rate limits, permissions, deleted messages ---------------------------------------------------------------
async def test_a_429_is_retried_by_discord_py(bot, discord_api):
    channel = bot.get_partial_messageable(CHANNEL_ID)
    discord_api.rate_limit("POST", rf"^/channels/{CHANNEL_ID}/messages$", retry_after=0.3)
    started = time.monotonic()
    sent = await channel.send("patience")
    assert time.monotonic() - started >= 0.3
    assert [c.status for c in discord_api.sent_messages()] == [429, 200]
    assert discord_api.messages[sent.id]["content"] == "patience"
    # Without a Via header discord.py takes the 429 for a Cloudflare ban and raises.
    discord_api.rate_limit("POST", rf"^/channels/{CHANNEL_ID}/messages$", via=False)
    with pytest.raises(discord.HTTPException) as banned:
        await channel.send("again")
    assert banned.value.status == 429


async def test_missing_permissions_and_access_are_403(bot, discord_api):
    channel = bot.get_partial_messageable(CHANNEL_ID)
    discord_api.forbid("POST", rf"^/channels/{CHANNEL_ID}/messages$", times=1)
    discord_api.forbid("GET", rf"^/channels/{CHANNEL_ID}/messages", code=50001)
    with pytest.raises(discord.Forbidden) as no_send:
        await channel.send("hello")
    with pytest.raises(discord.Forbidden) as no_read:
        [m async for m in channel.history(limit=5)]
    assert (no_send.value.code, no_read.value.code) == (50013, 50001)
    assert (await channel.send("allowed again")).content == "allowed again"  # times=1


async def test_a_deleted_message_cannot_be_edited_or_replied_to(bot, discord_api):
    channel = bot.get_partial_messageable(CHANNEL_ID)
    sent = await channel.send("soon gone")
    discord_api.delete_message(sent.id)
    with pytest.raises(discord.NotFound) as edit:
        await sent.edit(content="too late")
    with pytest.raises(discord.HTTPException) as reply:
        await sent.reply("to nothing")
    assert edit.value.code == 10008
    assert (reply.value.status, reply.value.code) == (400, 50035) and "Unknown message" in reply.value.text
    kept = await channel.send("still said", reference=sent.to_reference(fail_if_not_exists=False))
    assert kept.reference is None and kept.content == "still said"


# -- limits ------------------------------------------------------------------------------------------------------
async def test_length_limits_are_invalid_form_body(bot, gateway, discord_api):
    channel = bot.get_partial_messageable(CHANNEL_ID)
    refused: list[discord.HTTPException] = []
    for kwargs in ({"content": "x" * 2001}, {"embed": discord.Embed(description="x" * 4000, title="t" * 256)
                                                              .add_field(name="n", value="v" * 1024)
                                                              .add_field(name="n", value="v" * 1024)}):
        try:
            await channel.send(**kwargs)
        except discord.HTTPException as exc:
            refused.append(exc)
    assert [(e.status, e.code) for e in refused] == [(400, 50035)] * 2
    assert (await channel.send("x" * 2000)).content == "x" * 2000

    async def modal(interaction: discord.Interaction) -> None:
        for bad in (discord.ui.TextInput(label="l", max_length=4001), discord.ui.TextInput(label="l",
                                                                                           custom_id="c" * 101)):
            form = discord.ui.Modal(title="t")
            form.add_item(bad)
            try:
                await interaction.response.send_modal(form)
            except discord.HTTPException as exc:
                refused.append(exc)
        await interaction.response.send_message("fine")  # refused responses do not count

    add_test_command(bot, "modal", modal)
    await gateway.command("modal")
    assert [(e.status, e.code) for e in refused[2:]] == [(400, 50035)] * 2
    assert discord_api.reply_text() == "fine"


# -- the bot: abandoned modals --------------------------------------------------------------------------------
async def test_abandoned_modals_expire(bot, gateway, discord_api):
    """discord.py keeps every opened modal until it is submitted or times out: one without a timeout that
    nobody submits stays for the life of the process."""
    from tests.harness.discord import EXPERT_ROLE

    for _ in range(3):
        await gateway.command("teach", user_id=11, roles=[EXPERT_ROLE])
    pending = list(bot._connection._view_store._modals.values())
    assert len(pending) == 3
    assert all(m.timeout is not None and m.timeout <= 900 for m in pending)
