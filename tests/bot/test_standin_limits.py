"""The Discord stand-in's time limits, response types, empty messages and rate limits fire as Discord's do.

Tiny test commands and buttons on the real bot; what they get back is what discord.py raises (or waits out)
when Discord answers that way. Each rule's source is cited where the stand-in emulates it
(tests/harness/discord.py)."""

from __future__ import annotations

import time

import aiohttp
import discord
import pytest

from tests.harness.bot import FAKE_TOKEN, add_test_command
from tests.harness.discord import (
    CHANNEL_ID,
    INTERACTION_TOKEN_TTL_S,
    message_with_buttons,
)


# -- the interaction token lives 15 minutes -------------------------------------------------------------------
async def test_follow_ups_and_edits_after_15_minutes_are_invalid_webhook_token(bot, gateway, discord_api):
    refused: list[discord.HTTPException] = []
    got: dict[str, discord.Message] = {}

    async def long_job(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        got["first"] = await interaction.followup.send("started", wait=True)
        discord_api.advance(INTERACTION_TOKEN_TTL_S - 1)
        got["edited"] = await got["first"].edit(content="still within the window")
        discord_api.advance(2)  # 15 min and 1 s after the interaction
        for late in (interaction.followup.send("done", wait=True), got["first"].edit(content="done"),
                     interaction.edit_original_response(content="done"), interaction.original_response()):
            try:
                await late
            except discord.HTTPException as exc:
                refused.append(exc)

    add_test_command(bot, "longjob", long_job)
    await gateway.command("longjob")
    assert discord_api.messages[got["edited"].id]["content"] == "still within the window"
    assert [(e.status, e.code, e.text) for e in refused] == [(401, 50027, "Invalid Webhook Token")] * 4
    # The channel still takes the bot's messages: that is where late results go.
    assert (await bot.get_partial_messageable(CHANNEL_ID).send("done")).content == "done"


# -- response types --------------------------------------------------------------------------------------------
async def test_update_responses_answer_components_only(bot, gateway, discord_api):
    refused: list[discord.HTTPException] = []

    async def update_a_command(interaction: discord.Interaction) -> None:
        # discord.py refuses edit_message for a command itself; a raw type 6/7 is what a confused bot sends.
        for kind in (6, 7):
            try:
                await interaction._state.http.request(discord.http.Route(
                    "POST", "/interactions/{interaction_id}/{token}/callback", interaction_id=interaction.id,
                    token=interaction.token), json={"type": kind, "data": {"content": "x"} if kind == 7 else None})
            except discord.HTTPException as exc:
                refused.append(exc)
        await interaction.response.send_message("answered")  # the refused ones did not count

    add_test_command(bot, "update", update_a_command)
    await gateway.command("update")
    assert [(e.status, e.code) for e in refused] == [(400, 50035)] * 2
    assert all("type" in e.text and "Value must be one of" in e.text for e in refused)
    assert discord_api.reply_text() == "answered"


class FormButton(discord.ui.View):
    """A button whose modal is answered, on submit, by a type-7 update of the message it came from."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="form", custom_id="standin:form")
    async def form(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        modal = discord.ui.Modal(title="t", custom_id="standin:modal", timeout=60)
        modal.add_item(discord.ui.TextInput(label="l", custom_id="standin:text"))

        async def on_submit(submitted: discord.Interaction) -> None:
            await submitted.response.edit_message(content=f"submitted {modal.children[0].value}")

        modal.on_submit = on_submit  # type: ignore[method-assign]
        await interaction.response.send_modal(modal)


async def test_a_modal_submit_updates_only_the_message_its_button_was_on(bot, gateway, discord_api):
    bot.add_view(FormButton())
    clicked = message_with_buttons(["standin:form"], content="before")
    await gateway.click("standin:form", message=clicked)
    await gateway.submit_modal("standin:modal", {"standin:text": "yes"}, message=clicked)
    assert discord_api.messages[int(clicked["id"])]["content"] == "submitted yes"
    # A modal opened from a slash command: its submit carries no message, and Discord refuses the update.
    errors: list[BaseException] = []
    await gateway.click("standin:form", message=clicked)
    original = bot._connection._view_store._modals["standin:modal"]

    async def on_error(interaction: discord.Interaction, error: Exception) -> None:
        errors.append(error)

    original.on_error = on_error  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="no response"):
        await gateway.submit_modal("standin:modal", {"standin:text": "no"})
    [error] = errors
    assert isinstance(error, discord.HTTPException) and (error.status, error.code) == (400, 50035)


async def test_a_modal_is_never_the_answer_to_a_modal_submit(bot, gateway, discord_api):
    refused: list[discord.HTTPException] = []

    async def open_form(interaction: discord.Interaction) -> None:
        first = discord.ui.Modal(title="first", custom_id="standin:first", timeout=60)
        first.add_item(discord.ui.TextInput(label="l", custom_id="standin:a"))

        async def on_submit(submitted: discord.Interaction) -> None:
            second = discord.ui.Modal(title="second", timeout=60)
            second.add_item(discord.ui.TextInput(label="l"))
            try:
                await submitted.response.send_modal(second)
            except discord.HTTPException as exc:
                refused.append(exc)
            await submitted.response.send_message("one form at a time", ephemeral=True)

        first.on_submit = on_submit  # type: ignore[method-assign]
        await interaction.response.send_modal(first)

    add_test_command(bot, "form", open_form)
    await gateway.command("form")
    await gateway.submit_modal("standin:first", {"standin:a": "x"})
    [exc] = refused
    assert (exc.status, exc.code) == (400, 50035) and "Value must be one of" in exc.text
    assert discord_api.reply_text() == "one form at a time"


# -- empty messages --------------------------------------------------------------------------------------------
async def test_an_empty_message_is_refused(bot, gateway, discord_api):
    channel = bot.get_partial_messageable(CHANNEL_ID)
    refused: list[discord.HTTPException] = []
    try:
        await channel.send()
    except discord.HTTPException as exc:
        refused.append(exc)

    async def empty(interaction: discord.Interaction) -> None:
        for attempt in (interaction.response.send_message(), interaction.response.defer(thinking=True),
                        interaction.followup.send(wait=True)):
            try:
                await attempt
            except discord.HTTPException as exc:
                refused.append(exc)
        await interaction.followup.send(view=discord.ui.View().add_item(discord.ui.Button(label="ok", url=
                                                                                          "https://example.com")))

    add_test_command(bot, "empty", empty)
    await gateway.command("empty")
    assert [(e.status, e.code, e.text) for e in refused] == [(400, 50006, "Cannot send an empty message")] * 3
    assert discord_api.last_reply()["components"]  # components alone are a message


# -- rate limits -----------------------------------------------------------------------------------------------
async def test_message_edits_are_limited_to_5_per_5_s_per_channel(bot, discord_api):
    channel = bot.get_partial_messageable(CHANNEL_ID)
    sent = await channel.send("counting")
    url = f"{discord_api.url}/channels/{CHANNEL_ID}/messages/{sent.id}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {FAKE_TOKEN}"}) as session:
        answers = []
        for i in range(6):
            async with session.patch(url, json={"content": f"edit {i}"}) as response:
                answers.append((response.status, dict(response.headers), await response.json()))
    assert [status for status, _, _ in answers] == [200] * 5 + [429]
    remaining = [h["X-RateLimit-Remaining"] for _, h, _ in answers[:5]]
    assert remaining == ["4", "3", "2", "1", "0"]
    assert all(h["X-RateLimit-Limit"] == "5" and h["X-RateLimit-Bucket"] for _, h, _ in answers)
    assert 0 < float(answers[0][1]["X-RateLimit-Reset-After"]) <= 5
    assert abs(float(answers[0][1]["X-RateLimit-Reset"]) - time.time() - 5) < 1
    _status, headers, body = answers[5]
    assert body["message"] == "You are being rate limited." and body["global"] is False
    assert 0 < body["retry_after"] <= 5 and headers["Via"] and headers["X-RateLimit-Scope"] == "user"
    assert int(headers["Retry-After"]) >= body["retry_after"]
    assert discord_api.messages[sent.id]["content"] == "edit 4"  # the refused edit changed nothing


@pytest.mark.slow  # waits out one 5 s window
async def test_discord_py_waits_out_the_edit_bucket(bot, discord_api):
    channel = bot.get_partial_messageable(CHANNEL_ID)
    first, second = await channel.send("one"), await channel.send("two")
    other = bot.get_partial_messageable(CHANNEL_ID + 1)  # another channel: another bucket
    elsewhere = await other.send("elsewhere")
    started = time.monotonic()
    for i in range(6):
        await (first if i % 2 else second).edit(content=f"edit {i}")
    waited = time.monotonic() - started
    await elsewhere.edit(content="not held up")
    assert time.monotonic() - started - waited < 1
    patches = discord_api.find("PATCH", "/messages/")
    assert all(c.status == 200 for c in patches), [c.status for c in patches]  # discord.py read the headers
    assert waited >= 4  # the sixth edit waited for the window to reset
