"""The Discord stand-in enforces Discord's interaction rules: each rule fires for a handler that breaks it.

The handlers are tiny test commands on the real bot's CommandTree; what they get back is what discord.py
raises when Discord refuses (docs: interactions/receiving-and-responding, opcodes-and-status-codes)."""

from __future__ import annotations

import asyncio
import io
import time

import discord
import pytest

from tests.harness.bot import add_test_command
from tests.harness.discord import interaction_name, message_with_buttons


async def test_a_first_response_after_2_5_s_is_unknown_interaction(bot, gateway, discord_api):
    """Discord's 3 s, less half a second for the network the stand-in does not have (FIRST_RESPONSE_LIMIT_S)."""
    refused: list[discord.NotFound] = []

    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(2.7)  # the handler's own slowness; the stand-in adds none
        try:
            await interaction.response.send_message("late")
        except discord.NotFound as exc:
            refused.append(exc)

    add_test_command(bot, "slow", slow)
    with pytest.raises(AssertionError, match=r"/slow: no response within 2\.5 s"):
        await gateway.command("slow")
    [exc] = refused
    assert exc.status == 404 and exc.code == 10062 and "Unknown interaction" in exc.text
    assert discord_api.interaction_responses() == []  # refused calls are recorded, never shown
    assert [c.status for c in discord_api.find("POST", "/callback")] == [404]
    assert "/slow" not in discord_api.first_response_times


@pytest.mark.slow  # waits out the 2.5 s deadline
async def test_an_interaction_without_any_response_fails_the_test(bot, gateway, discord_api):
    async def silent(interaction: discord.Interaction) -> None:
        return None

    add_test_command(bot, "silent", silent)
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"/silent: no response within 2\.5 s"):
        await gateway.command("silent")
    assert time.monotonic() - started < 3.5  # it fails at the deadline, not after a long silent wait
    # A modal submit discord.py holds no modal for gets no response: the caller says so, and it passes.
    await gateway.submit_modal("ll:nobody-opened-this", {"field": "text"}, expect_response=False)
    assert discord_api.find("POST", "/callback") == []


async def test_a_second_initial_response_is_already_acknowledged(bot, gateway, discord_api):
    refused: list[discord.HTTPException] = []

    async def twice(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("first")
        # A second process answering the same interaction: discord.py's own guard is per object.
        try:
            await discord.InteractionResponse(interaction).send_message("second")
        except discord.HTTPException as exc:
            refused.append(exc)

    add_test_command(bot, "twice", twice)
    await gateway.command("twice")
    [exc] = refused
    assert exc.status == 400 and exc.code == 40060 and "already been acknowledged" in exc.text
    assert [c.json["data"]["content"] for c in discord_api.interaction_responses()] == ["first"]
    assert discord_api.reply_text() == "first"


async def test_time_to_first_response_is_recorded_per_interaction_name(bot, gateway, discord_api):
    async def deliberate(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)
        await interaction.response.defer(ephemeral=True, thinking=True)
        await asyncio.sleep(0.5)  # after the defer: not part of the time to first response
        await interaction.followup.send("done", ephemeral=True)

    add_test_command(bot, "deliberate", deliberate)
    await gateway.command("deliberate")
    [seconds] = discord_api.first_response_times["/deliberate"]
    assert 0.3 <= seconds < 0.8
    assert discord_api.reply_text() == "done"  # the handler had finished when the dispatch returned

    answer = await bot.store.record_answer(prompt=[{"role": "user", "content": "q"}], answer="a", model_tag="m")
    msg = message_with_buttons([f"ll:fb:up:{answer.id}"])
    await gateway.click(f"ll:fb:up:{answer.id}", message=msg, user_id=5)
    [click] = discord_api.first_response_times["button ll:fb:up:…"]
    assert 0 <= click < 3


def test_interaction_names_group_ids():
    assert interaction_name({"type": 2, "data": {"name": "model", "options": [
        {"name": "rollback", "type": 1, "options": [{"name": "to", "type": 3, "value": "x"}]}]}}) == \
        "/model rollback"
    assert interaction_name({"type": 3, "data": {"custom_id": "ll:rv:4:1234"}}) == "button ll:rv:4:…"
    assert interaction_name({"type": 3, "data": {"custom_id": "ll:rb:17"}}) == "button ll:rb:…"
    assert interaction_name({"type": 5, "data": {"custom_id": "ll:suggest:3:21:9f2c"}}) == "modal ll:suggest:…"
    assert interaction_name({"type": 5, "data": {"custom_id": "0f" * 16}}) == "modal {random id}"


async def test_uploads_over_the_attachment_size_limit_are_refused(bot, gateway, discord_api):
    refused: list[discord.HTTPException] = []

    def file(size: int) -> discord.File:
        return discord.File(io.BytesIO(b"x" * size), filename="data.bin")

    async def upload(interaction: discord.Interaction) -> None:
        assert interaction.filesize_limit == 1000  # discord.py's name for the payload's attachment_size_limit
        try:
            await interaction.response.send_message("big", file=file(1001))
        except discord.HTTPException as exc:
            refused.append(exc)
        await interaction.response.defer(thinking=True)  # the refused response did not count
        try:
            await interaction.followup.send("big", file=file(1001))
        except discord.HTTPException as exc:
            refused.append(exc)
        await interaction.followup.send("small", file=file(1000))

    add_test_command(bot, "upload", upload)
    gateway.attachment_size_limit = 1000
    await gateway.command("upload")
    assert [(e.status, e.code, e.text) for e in refused] == [(413, 40005, "Request entity too large")] * 2
    followups = [c for c in discord_api.find("POST", "/webhooks/") if c.status == 200]
    assert [(c.json["content"], len(c.files[0][1])) for c in followups] == [("small", 1000)]


async def test_the_default_limit_is_discords_10_mib(bot, gateway, discord_api):
    seen: list[int] = []

    async def look(interaction: discord.Interaction) -> None:
        seen.append(interaction.filesize_limit)
        await interaction.response.send_message("ok")

    add_test_command(bot, "look", look)
    await gateway.command("look")
    assert seen == [10 * 1024 * 1024]
