"""An answer has limits: tokens (Ollama's num_predict), characters, Discord messages and seconds. A model that
runs away or stalls ends with a short note, is recorded, and the bot goes on serving."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from bot.chat import MAX_MESSAGES, AnswerLimits, cut_note, fit_messages, split_message
from tests.harness.bot import BASE_TAG, mention
from tests.harness.discord import BOT_ID
from tests.harness.polling import wait_until

LENGTH_NOTE = cut_note("length")
TIME_NOTE = cut_note("time")


def bot_messages(discord_api) -> list[dict]:
    return [m for m in discord_api.messages.values() if m["author"]["id"] == str(BOT_ID)]


def answered(discord_api, count: int = 1):
    """True once ``count`` answers carry their feedback buttons (the last step of an answer)."""
    return lambda: sum(1 for m in bot_messages(discord_api) if m.get("components")) >= count


async def recorded_answer(bot, message: dict):
    custom_id = message["components"][0]["components"][0]["custom_id"]
    return await bot.store.get_answer(int(custom_id.rsplit(":", 1)[1]))


async def test_token_cap_reaches_ollama_and_a_runaway_answer_is_cut(bot, gateway, discord_api, ollama_server):
    bot.settings.chat_max_tokens = 16
    # The scripted model ignores num_predict, like a server that does not honour it: the bot's own cap stops it.
    ollama_server.add_scripted_model(BASE_TAG, reply=" ".join(f"word{i}" for i in range(5000)))
    await gateway.message(mention("talk forever"))
    await wait_until(answered(discord_api))
    assert ollama_server.requests_to("POST", "/api/chat")[-1]["options"]["num_predict"] == 16
    (message,) = bot_messages(discord_api)
    assert message["content"].endswith(LENGTH_NOTE)
    assert len(message["content"]) <= 16 * 6 + len(LENGTH_NOTE)
    assert (await recorded_answer(bot, message)).answer == message["content"]


async def test_a_long_answer_never_floods_the_channel(bot, gateway, discord_api, ollama_server):
    bot.settings.chat_max_tokens = 20_000  # a generous token cap still means a handful of messages
    reply = ("lorem ipsum dolor sit amet " * 3000).strip()  # ~80,000 characters: 40+ messages uncapped
    ollama_server.add_scripted_model(BASE_TAG, reply=reply)
    await gateway.message(mention("write a book"))
    await wait_until(answered(discord_api))
    messages = bot_messages(discord_api)
    assert len(messages) == MAX_MESSAGES
    assert all(len(m["content"]) <= 2000 for m in messages)
    assert messages[-1]["content"].endswith(LENGTH_NOTE)
    assert reply.startswith(" ".join(m["content"] for m in messages).removesuffix(LENGTH_NOTE).rstrip())


async def test_a_slow_endless_stream_is_cut_by_the_time_limit_and_the_bot_keeps_serving(
        bot, gateway, discord_api, ollama_server):
    bot.settings.chat_time_limit_s = 2.0
    ollama_server.add_scripted_model(BASE_TAG, reply=" ".join(f"w{i}" for i in range(10_000)), token_delay=0.05)
    started = time.monotonic()
    await gateway.message(mention("never stop"))
    await wait_until(answered(discord_api), limit=10)
    assert time.monotonic() - started < 6
    (message,) = bot_messages(discord_api)
    assert message["content"].startswith("w0 w1 w2") and message["content"].endswith(TIME_NOTE)
    answer = await recorded_answer(bot, message)
    assert answer.answer == message["content"] and answer.model_tag == BASE_TAG

    ollama_server.add_scripted_model(BASE_TAG, reply="still here")
    await gateway.message(mention("are you there?"))
    await wait_until(answered(discord_api, 2))
    assert any(m["content"] == "still here" for m in bot_messages(discord_api))


async def test_a_stalled_stream_is_cut_by_the_time_limit(bot, gateway, discord_api, ollama_server):
    bot.settings.chat_time_limit_s = 1.0
    ollama_server.add_scripted_model(BASE_TAG, reply="first then-silence", token_delay=60)  # 60 s between pieces
    started = time.monotonic()
    await gateway.message(mention("hello?"))
    await wait_until(answered(discord_api), limit=10)
    assert time.monotonic() - started < 5
    (message,) = bot_messages(discord_api)
    assert message["content"] == "first" + TIME_NOTE


def test_limits_follow_the_token_cap():
    class S:
        chat_max_tokens, chat_time_limit_s = 16, 30.0

    assert AnswerLimits.from_settings(S()) == AnswerLimits(16, 30.0, 96, 1)
    S.chat_max_tokens = 1024
    assert AnswerLimits.from_settings(S()).max_messages == 4
    S.chat_max_tokens = 100_000
    limits = AnswerLimits.from_settings(S())
    assert (limits.max_messages, limits.max_chars) == (MAX_MESSAGES, MAX_MESSAGES * 2000)


@given(st.text(alphabet=st.sampled_from(list("ab c\n`xyz")), max_size=12_000), st.integers(1, 5))
def test_fit_messages_keeps_the_note_and_the_message_count(text, n):
    fitted = fit_messages(text, n, LENGTH_NOTE)
    assert fitted.endswith(LENGTH_NOTE)
    assert len(split_message(fitted)) <= n


async def test_the_base_gets_the_served_options_per_request_a_fine_tune_carries_its_own(
        bot, gateway, discord_api, ollama_server):
    """Base and fine-tunes sample alike: the base tag's parameters are not ours, so while it answers the served
    options travel with each chat; a fine-tune has them inside its Ollama model, so only the cap is sent."""
    bot.settings.serve_options = {"temperature": 0.3, "top_p": 0.8}
    ollama_server.add_scripted_model(BASE_TAG, reply="from the base")
    await gateway.message(mention("hello base"))
    await wait_until(answered(discord_api))
    options = ollama_server.requests_to("POST", "/api/chat")[-1]["options"]
    assert options["temperature"] == 0.3 and options["top_p"] == 0.8
    assert options["num_predict"] == bot.settings.chat_max_tokens

    version = await bot.store.create_model_version(name="tiny", base_model="b", ollama_base=BASE_TAG)
    ollama_server.add_scripted_model(version.tag, reply="from the fine-tune")
    await bot.store.update_model_version(version.id, status="evaluated", in_ollama=True)
    await bot.store.promote(version.id)
    await gateway.message(mention("hello fine-tune"))
    await wait_until(answered(discord_api, 2))
    request = ollama_server.requests_to("POST", "/api/chat")[-1]
    assert request["model"] == version.tag
    assert request["options"] == {"num_predict": bot.settings.chat_max_tokens}


async def test_a_reasoning_model_s_thinking_never_reaches_discord_as_raw_tags(bot, gateway, discord_api,
                                                                               ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="<think>The user greets; be brief.</think>\n\nHello!")
    await gateway.message(mention("hi"))
    await wait_until(answered(discord_api))
    (message,) = bot_messages(discord_api)
    assert "<think>" not in message["content"] and "</think>" not in message["content"]
    assert message["content"] == "💭 ||The user greets; be brief.||\n\nHello!"
    assert (await recorded_answer(bot, message)).answer == "Hello!"  # the thinking is not the answer

    bot.settings.chat_thinking = "hidden"
    await gateway.message(mention("hi again"))
    await wait_until(answered(discord_api, 2))
    assert bot_messages(discord_api)[-1]["content"] == "Hello!"
