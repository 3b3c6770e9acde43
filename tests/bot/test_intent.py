"""What the bot can read without the privileged message-content intent, and what enabling it changes.

Each test runs both ways: ``message_content_intent`` off (the default: Discord blanks other people's messages
unless they mention the bot) and on (the operator enabled it in the developer portal and in the settings)."""

from __future__ import annotations

import pytest

from tests.harness.bot import BASE_TAG, BOT, USER, mention
from tests.harness.discord import BOT_ID, message_payload, reply_payload, user_payload
from tests.harness.polling import wait_until

BOB = user_payload(12, "bob")


@pytest.fixture(params=[False, True], ids=["no-intent", "intent"])
def message_content_intent(request) -> bool:
    return request.param


def chat_turns(ollama_server) -> list[tuple[str, str]]:
    body = ollama_server.requests_to("POST", "/api/chat")[-1]
    return [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]


async def test_the_bot_declares_the_intent_it_was_configured_with(bot, message_content_intent):
    assert bot.intents.message_content is message_content_intent


async def test_a_reply_to_an_ask_answer(bot, gateway, discord_api, ollama_server, message_content_intent):
    ollama_server.add_scripted_model(BASE_TAG, reply="Paris.")
    await gateway.command("ask", {"question": "capital of France?"})
    await wait_until(lambda: any(m["components"] for m in discord_api.bot_messages()))  # the answer is finished
    [answer] = discord_api.bot_messages()
    ollama_server.add_scripted_model(BASE_TAG, reply="Rome.")
    await gateway.message(reply_payload("and of Italy?", to=answer, author=USER))  # a ping-reply
    await wait_until(lambda: len(discord_api.bot_messages()) == 2)
    if message_content_intent:  # a streamed answer: finished once its buttons are on
        await wait_until(lambda: discord_api.bot_messages()[-1]["components"])
    reply = discord_api.bot_messages()[-1]
    if message_content_intent:
        # The question is not on the /ask answer: it comes from the recorded answer behind its buttons.
        assert chat_turns(ollama_server) == [("user", "capital of France?"), ("assistant", "Paris."),
                                             ("user", "and of Italy?")]
        assert reply["content"] == "Rome."
    else:
        # Discord hid the reply's text; the bot says how to go on instead of ignoring it.
        assert len(ollama_server.requests_to("POST", "/api/chat")) == 1
        assert "mention" in reply["content"] and "message content intent" in reply["content"]
        assert len(reply["content"]) < 300 and reply["message_reference"]
        # Mentioning the bot in the reply works without the intent.
        await gateway.message(reply_payload(f"<@{BOT_ID}> and of Italy?", to=answer, author=USER, mentions=[BOT]))
        await wait_until(lambda: len(ollama_server.requests_to("POST", "/api/chat")) == 2)
        assert chat_turns(ollama_server)[-1] == ("user", "and of Italy?")


async def test_a_ping_reply_to_a_mention_answer_needs_no_intent(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Paris.")
    await gateway.message(mention("capital of France?"))
    await wait_until(lambda: any(m["components"] for m in discord_api.bot_messages()))
    [answer] = discord_api.bot_messages()
    ollama_server.add_scripted_model(BASE_TAG, reply="Rome.")
    await gateway.message(reply_payload("and of Italy?", to=answer, author=USER))
    await wait_until(lambda: len(ollama_server.requests_to("POST", "/api/chat")) == 2)
    assert chat_turns(ollama_server) == [("user", "capital of France?"), ("assistant", "Paris."),
                                         ("user", "and of Italy?")]


async def test_a_reply_chain_through_another_users_message(bot, gateway, discord_api, ollama_server,
                                                           message_content_intent):
    ollama_server.add_scripted_model(BASE_TAG, reply="Yes.")
    question = discord_api.add_message(mention("capital of France?"))
    answer = discord_api.add_message(message_payload("Paris.", author=BOT, reference=question))
    remark = discord_api.add_message(reply_payload("I heard Lyon", to=answer, author=BOB, ping=False))
    await gateway.message(reply_payload(f"<@{BOT_ID}> is Bob right?", to=remark, author=USER, mentions=[BOT]))
    await wait_until(lambda: any(m["components"] for m in discord_api.bot_messages()[1:]))
    shown = discord_api.bot_messages()[-1]["content"]
    if message_content_intent:
        assert chat_turns(ollama_server) == [("user", "capital of France?"), ("assistant", "Paris."),
                                             ("user", "I heard Lyon\nis Bob right?")]
        assert shown == "Yes."
    else:
        # Bob's turn is hidden from the bot: it answers what it can see and says a turn was missing.
        assert chat_turns(ollama_server) == [("user", "capital of France?"), ("assistant", "Paris."),
                                             ("user", "is Bob right?")]
        assert shown.startswith("Yes.") and "1 earlier message" in shown and "intent" in shown
        recorded = await bot.store.get_answer(
            int(discord_api.bot_messages()[-1]["components"][0]["components"][0]["custom_id"].rsplit(":", 1)[1]))
        assert recorded.answer == "Yes."  # the note is for the reader, not part of the answer
