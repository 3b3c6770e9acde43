"""The chat path through discord.py: what Discord receives when people talk to the bot."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.chat import DISCORD_LIMIT, split_message
from tests.harness.bot import BASE_TAG, BOT, USER, mention
from tests.harness.discord import BOT_ID, CHANNEL_ID, message_payload, user_payload
from tests.harness.polling import wait_until


@pytest.fixture(params=[False, True], ids=["no-intent", "intent"])
def message_content_intent(request) -> bool:
    """The chat path runs without the privileged intent (Discord's default) and with it."""
    return request.param


async def test_mention_streams_one_message_with_throttled_edits(bot, gateway, discord_api, ollama_server):
    reply = " ".join(f"word{i}" for i in range(60))
    ollama_server.add_scripted_model(BASE_TAG, reply=reply, token_delay=0.05)  # ~3 s of streaming
    await gateway.message(mention("tell me something"))
    await wait_until(lambda: any(c.json and c.json.get("components") for c in discord_api.find("PATCH")))
    posts = discord_api.sent_messages()
    assert len(posts) == 1 and posts[0].path == f"/channels/{CHANNEL_ID}/messages"
    assert posts[0].json["allowed_mentions"] == {"parse": [], "replied_user": False}
    assert posts[0].json["message_reference"]["message_id"]  # a reply to the question
    edits = discord_api.find("PATCH", "/messages/")
    gaps = [b.at - a.at for a, b in zip([posts[0]] + edits, edits, strict=False)][:-1]  # the final edit is immediate
    assert len(edits) >= 2 and all(gap >= 0.9 for gap in gaps), gaps
    assert edits[-1].json["content"] == reply
    custom_ids = [c["custom_id"] for row in edits[-1].json["components"] for c in row["components"]]
    assert [cid.split(":")[2] for cid in custom_ids] == ["up", "down", "fix"]
    assert discord_api.find("POST", "/typing")
    # the answer is recorded with the model that gave it and the system prompt it was given
    answer = await bot.store.get_answer(int(custom_ids[0].rsplit(":", 1)[1]))
    assert answer.model_tag == BASE_TAG and answer.answer == reply
    assert answer.prompt[0] == {"role": "system", "content": "You are terse."}


async def test_a_slow_typing_indicator_is_still_asked_for_before_the_answer(bot, gateway, discord_api,
                                                                            ollama_server):
    """Typing is asked for beside the work before the answer, not ahead of it; but never after the answer is
    posted (Discord would show the bot typing for seconds after it answered)."""
    ollama_server.add_scripted_model(BASE_TAG, reply="at once")
    discord_api.rate_limit("POST", "/typing", retry_after=0.4)  # discord.py waits, then asks again
    await gateway.message(mention("quick one"))
    await wait_until(lambda: any(m["components"] for m in discord_api.bot_messages()))
    typed = [c for c in discord_api.find("POST", "/typing") if c.status < 400]
    [posted] = discord_api.sent_messages()
    assert typed and discord_api.calls.index(typed[0]) < discord_api.calls.index(posted)


async def test_long_answer_is_split_into_replies(bot, gateway, discord_api, ollama_server):
    reply = ("lorem ipsum dolor " * 200).strip()  # ~3,600 characters
    ollama_server.add_scripted_model(BASE_TAG, reply=reply)
    await gateway.message(mention("long please"))
    await wait_until(lambda: any(c.json and c.json.get("components") for c in discord_api.find("PATCH"))
                     or any(c.json.get("components") for c in discord_api.sent_messages()))
    messages = [m for m in discord_api.messages.values() if m["author"]["id"] == str(BOT_ID)]
    assert len(messages) == 2
    assert all(len(m["content"]) <= DISCORD_LIMIT for m in messages)
    assert " ".join(m["content"] for m in messages) == reply  # cut at a space, nothing lost
    assert all(c.json["allowed_mentions"]["parse"] == [] for c in discord_api.sent_messages())


async def test_reply_chain_becomes_conversation_history(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Paris.")
    first_q = discord_api.add_message(mention("capital of France?"))
    first_a = discord_api.add_message(message_payload("Paris.", author=BOT, reference=first_q))
    # the follow-up replies to the bot's answer; discord.py must fetch the older part of the chain
    first_a_ref = dict(first_a)
    first_a_ref.pop("referenced_message")
    await gateway.message(message_payload(f"<@{BOT_ID}> and of Italy?", author=USER, mentions=[BOT],
                                          reference=first_a_ref))
    await wait_until(lambda: ollama_server.requests_to("POST", "/api/chat"))
    body = ollama_server.requests_to("POST", "/api/chat")[-1]
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "You are terse."), ("user", "capital of France?"), ("assistant", "Paris."),
        ("user", "and of Italy?"),
    ]
    assert discord_api.find("GET", f"/messages/{first_q['id']}")


async def test_thread_messages_become_conversation_history(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Rome.")
    thread = 710_000_000_000_000_001
    gateway.add_guild(thread_ids=(thread,))
    discord_api.add_message(mention("capital of France?", channel_id=thread))
    discord_api.add_message(message_payload("Paris.", author=BOT, channel_id=thread))
    await gateway.message(mention("and of Italy?", channel_id=thread))
    await wait_until(lambda: ollama_server.requests_to("POST", "/api/chat"))
    body = ollama_server.requests_to("POST", "/api/chat")[-1]
    assert [(m["role"], m["content"]) for m in body["messages"]][1:] == [
        ("user", "capital of France?"), ("assistant", "Paris."), ("user", "and of Italy?"),
    ]
    assert discord_api.find("GET", f"/channels/{thread}/messages")


async def test_ollama_down_gives_a_short_clear_reply(discord_api, tmp_path, unreachable_ollama_url):
    from tests.harness.bot import make_settings, start_bot
    from tests.harness.discord import Gateway

    bot = await start_bot(make_settings(tmp_path, unreachable_ollama_url))
    try:
        started = time.monotonic()
        await Gateway(bot).message(mention("hello?"))
        await wait_until(lambda: discord_api.sent_messages(), limit=5)
        assert time.monotonic() - started < 5
        text = discord_api.sent_messages()[0].json["content"]
        assert "not reachable" in text and len(text) < 200
        assert not bot.is_closed()
    finally:
        await bot.close()


async def test_missing_model_is_explained(bot, gateway, discord_api):
    await gateway.message(mention("hello?"))
    await wait_until(lambda: discord_api.sent_messages())
    assert f"`{BASE_TAG}` is not installed" in discord_api.sent_messages()[0].json["content"]


async def test_answers_with_the_active_version(bot, gateway, discord_api, ollama_server):
    version = await bot.store.create_model_version(name="physics", base_model="tiny", ollama_base=BASE_TAG)
    await bot.store.update_model_version(version.id, status="registered", in_ollama=True)
    await bot.store.promote(version.id)
    ollama_server.add_scripted_model(version.tag, reply="fine-tuned answer")
    await gateway.message(mention("who are you"))
    await wait_until(lambda: any(c.json and c.json.get("components") for c in discord_api.find("PATCH")))
    assert ollama_server.requests_to("POST", "/api/chat")[-1]["model"] == version.tag
    answer_id = int(discord_api.find("PATCH")[-1].json["components"][0]["components"][0]["custom_id"]
                    .rsplit(":", 1)[1])
    assert (await bot.store.get_answer(answer_id)).model_version_id == version.id


async def test_ignores_messages_not_for_it(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="x")
    await gateway.message(message_payload("just chatting", author=USER))
    await gateway.message(message_payload(f"<@{BOT_ID}> hi", author=BOT, mentions=[BOT]))
    await asyncio.sleep(0.2)
    assert discord_api.sent_messages() == []


@given(st.text(alphabet=st.sampled_from(list("ab c\n`xyz")), max_size=6000))
def test_split_keeps_text_and_limits(text):
    chunks = split_message(text)
    assert all(len(c) <= DISCORD_LIMIT for c in chunks)
    if "```" not in text:
        assert "".join(chunks).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")


def test_split_reopens_code_blocks():
    code = "```python\n" + "\n".join(f"x_{i} = {i}" for i in range(400)) + "\n```\nDone."
    chunks = split_message(code)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0, chunk[-50:]
    assert all(c.startswith("```python\n") for c in chunks[1:-1])


async def test_per_user_cooldown(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="ok")
    bot.settings.chat_cooldown_s = 60
    await gateway.message(mention("first"))
    await wait_until(lambda: discord_api.sent_messages())
    await gateway.message(mention("second, too soon"))
    await wait_until(lambda: len(discord_api.sent_messages()) == 2)
    assert discord_api.sent_messages()[1].json["content"].startswith("Please wait")
    assert len(ollama_server.requests_to("POST", "/api/chat")) == 1
    await gateway.message(message_payload(f"<@{BOT_ID}> another user", author=user_payload(12), mentions=[BOT]))
    await wait_until(lambda: len(ollama_server.requests_to("POST", "/api/chat")) == 2)
