"""/ask end to end: defer, the answer streamed into the loading message, split into follow-ups, feedback buttons."""

from __future__ import annotations

import pytest

from bot.chat import DISCORD_LIMIT
from tests.harness.bot import BASE_TAG
from tests.harness.discord import CHANNEL_ID, EPHEMERAL


@pytest.fixture(params=[False, True], ids=["no-intent", "intent"])
def message_content_intent(request) -> bool:
    return request.param


def button_ids(message: dict) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


async def test_ask_defers_then_streams_into_the_loading_message(bot, gateway, discord_api, ollama_server):
    reply = " ".join(f"word{i}" for i in range(40))
    ollama_server.add_scripted_model(BASE_TAG, reply=reply, token_delay=0.05)  # ~2 s: several edits
    await gateway.command("ask", {"question": "tell me something"}, user_id=11)
    [callback] = discord_api.interaction_responses()
    assert callback.json["type"] == 5 and not (callback.json.get("data") or {}).get("flags", 0) & EPHEMERAL
    assert discord_api.first_response_times["/ask"][0] < 1.0
    loading_id = int(callback_message_id(discord_api))
    [followup] = [c for c in discord_api.find("POST", "/webhooks/") if c.status == 200]
    edits = [c for c in discord_api.find("PATCH", "/webhooks/") if c.status == 200]
    assert len(edits) >= 2 and all(c.path.endswith(f"/messages/{loading_id}") for c in edits)
    assert followup.json["allowed_mentions"]["parse"] == []
    [answer_message] = discord_api.bot_messages()  # the loading message, filled and edited: one message
    assert int(answer_message["id"]) == loading_id and answer_message["content"] == reply
    assert not answer_message["flags"] & EPHEMERAL
    ids = button_ids(answer_message)
    assert [i.split(":")[2] for i in ids] == ["up", "down", "fix"]
    answer = await bot.store.get_answer(int(ids[0].rsplit(":", 1)[1]))
    assert answer.answer == reply and answer.prompt[-1] == {"role": "user", "content": "tell me something"}
    assert answer.channel_id == CHANNEL_ID and answer.user_id == 11
    body = ollama_server.requests_to("POST", "/api/chat")[-1]
    assert body["messages"][-1] == {"role": "user", "content": "tell me something"}


def callback_message_id(discord_api) -> str:
    """The loading message's id: the one the deferred response created (the stand-in answers with it)."""
    loading = [m for m in discord_api.bot_messages() if m.get("interaction_metadata")]
    return loading[0]["id"]


async def test_a_long_answer_continues_in_follow_ups_without_channel_permissions(bot, gateway, discord_api,
                                                                                  ollama_server):
    """A follow-up needs no channel permission (user-installed apps, channels the bot cannot post in);
    a channel reply does: every chunk of an /ask answer goes out through the interaction's webhook."""
    reply = ("lorem ipsum dolor " * 200).strip()  # ~3,600 characters: two messages
    ollama_server.add_scripted_model(BASE_TAG, reply=reply)
    discord_api.forbid("POST", rf"^/channels/{CHANNEL_ID}/messages$")
    discord_api.forbid("GET", rf"^/channels/{CHANNEL_ID}/messages", code=50001)
    await gateway.command("ask", {"question": "long please"})
    messages = discord_api.bot_messages()
    assert len(messages) == 2 and all(len(m["content"]) <= DISCORD_LIMIT for m in messages)
    assert " ".join(m["content"] for m in messages) == reply
    assert all(m.get("interaction_metadata") for m in messages)  # both through the webhook
    assert [c.status for c in discord_api.sent_messages() if c.path.startswith("/channels/")] == []
    assert button_ids(messages[-1]) and not messages[0]["components"]


async def test_ask_cooldown_is_an_ephemeral_answer(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="ok")
    bot.settings.chat_cooldown_s = 60
    await gateway.command("ask", {"question": "first"})
    await gateway.command("ask", {"question": "second, too soon"})
    last = discord_api.interaction_responses()[-1].json
    assert last["type"] == 4 and last["data"]["flags"] & EPHEMERAL and "Please wait" in last["data"]["content"]
    assert len(ollama_server.requests_to("POST", "/api/chat")) == 1
