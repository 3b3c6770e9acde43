"""/import with hostile files, through discord.py's real command tree: each problem is named, nothing bad is stored."""

from __future__ import annotations

import json

from data.conversation import Conversation
from tests.harness.discord import EXPERT_ROLE
from tests.harness.polling import wait_until

EXPERT = 21
EPHEMERAL = 64


async def import_file(gateway, discord_api, name: str, data: bytes) -> dict:
    """Run /import on a file as an expert; the follow-up message that answers it."""
    before = len(discord_api.find("POST", "/webhooks/"))
    attachment = discord_api.attachment(name, data)
    await gateway.command("import", {"file": attachment["id"]}, user_id=EXPERT, roles=[EXPERT_ROLE],
                          attachments={attachment["id"]: attachment})
    await wait_until(lambda: len(discord_api.find("POST", "/webhooks/")) > before)
    return discord_api.find("POST", "/webhooks/")[-1].json


async def test_nul_and_surrogate_records_are_named_and_not_stored(bot, gateway, discord_api):
    """PostgreSQL refuses NUL in text and no database can encode a lone surrogate: each record says so."""
    await bot.store.add_example(Conversation.qa("known", "yes"), source="teach")
    rows = [{"instruction": "q", "input": "", "output": "an\x00swer"},
            {"instruction": "q\ud800", "input": "", "output": "a"}]
    data = json.dumps(rows).encode()  # ensure_ascii: the file holds the \u0000 and \ud800 escapes
    reply = await import_file(gateway, discord_api, "hostile.json", data)
    text = reply["content"]
    assert "imported **0**" in text and "rejected **2**" in text, text
    assert "• record 0: message 1 (assistant) contains a NUL character" in text
    assert "• record 1: message 0 (user) contains an unpaired surrogate" in text
    assert reply["flags"] & EPHEMERAL
    assert [e.messages[0]["content"] for e in await bot.store.list_examples()] == ["known"]


async def test_a_file_nested_100k_deep_is_refused_whole(bot, gateway, discord_api):
    reply = await import_file(gateway, discord_api, "deep.json", b"[" * 100_000 + b"]" * 100_000)
    assert "`deep.json` was not imported: not valid JSON: nested too deeply" in reply["content"]
    nested_object = b'{"instruction": "q", "output": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    reply = await import_file(gateway, discord_api, "object.json", nested_object)
    assert "`object.json` was not imported: no line of the file is valid JSON" in reply["content"]
    assert "nested too deeply" in reply["content"] and reply["flags"] & EPHEMERAL
    assert await bot.store.list_examples() == []
