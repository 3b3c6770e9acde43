"""Discord failing under an answer (a deleted question or answer, a missing permission, a rate limit) never
escapes Chat.answer: the answer is recorded, the error logged once, and the bot keeps serving."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from data.models import RetrainRun
from tests.harness.bot import BASE_TAG, mention
from tests.harness.discord import BOT_ID, CHANNEL_ID, message_payload, user_payload
from tests.harness.polling import wait_until

THREAD = 710_000_000_000_000_001
DM_CHANNEL = 720_000_000_000_000_001


@pytest.fixture(params=[False, True], ids=["no-intent", "intent"])
def message_content_intent(request) -> bool:
    return request.param


async def recorded_answers(bot) -> list:
    from sqlalchemy import select

    from data.models import Answer

    async with bot.store.session() as session:
        return list((await session.execute(select(Answer).order_by(Answer.id))).scalars())


async def wait_for_answers(bot, count: int, limit: float = 10.0) -> list:
    # Polling: the answer is recorded by a handler task this test holds no handle on.
    async def enough() -> list | None:
        answers = await recorded_answers(bot)
        return answers if len(answers) >= count else None

    answers = await wait_until(enough, limit, f"{count} recorded answer(s)", interval=0.05)
    await asyncio.sleep(0.2)  # and the handler's last Discord calls
    return answers


def chat_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.chat" and r.levelno >= logging.WARNING]


def escaped(caplog) -> list[logging.LogRecord]:
    """What discord.py logs when an event handler raised: the error escaped the bot's own handling."""
    return [r for r in caplog.records if r.name.startswith("discord") and r.levelno >= logging.ERROR]


async def assert_keeps_serving(bot, gateway, discord_api, ollama_server) -> None:
    ollama_server.add_scripted_model(BASE_TAG, reply="still here")
    discord_api.faults.clear()
    await gateway.message(message_payload(f"<@{BOT_ID}> are you there?", author=user_payload(13, "carol"),
                                          mentions=[user_payload(BOT_ID, "loraloop", bot=True)]))
    await wait_until(lambda: any(m["content"] == "still here" and m["components"]
                                 for m in discord_api.bot_messages()))


async def test_a_question_deleted_before_the_answer_still_gets_it(bot, gateway, discord_api, ollama_server,
                                                                 caplog):
    ollama_server.add_scripted_model(BASE_TAG, reply="an answer nobody asked for anymore")
    discord_api.rate_limit("POST", "/typing", retry_after=0.3)  # the question is gone by the time we reply
    question = mention("quick, then gone")
    await gateway.message(question)
    discord_api.delete_message(int(question["id"]))
    await wait_until(lambda: any(m["components"] for m in discord_api.bot_messages()))
    [answer_message] = discord_api.bot_messages()
    assert answer_message["content"] == "an answer nobody asked for anymore"
    assert "message_reference" not in answer_message  # posted in the channel, not as a reply
    assert [a.answer for a in await recorded_answers(bot)] == ["an answer nobody asked for anymore"]
    assert escaped(caplog) == []


async def test_an_answer_deleted_mid_stream_is_recorded_and_logged_once(bot, gateway, discord_api,
                                                                       ollama_server, caplog):
    reply = " ".join(f"word{i}" for i in range(40))
    ollama_server.add_scripted_model(BASE_TAG, reply=reply, token_delay=0.05)
    await gateway.message(mention("tell me a story"))
    await wait_until(lambda: discord_api.bot_messages())
    discord_api.delete_message(int(discord_api.bot_messages()[0]["id"]))
    [answer] = await wait_for_answers(bot, 1)
    assert answer.answer == reply
    refused = [c for c in discord_api.find("PATCH", "/messages/") if c.status == 404]
    assert len(refused) == 1  # no edit hammering a message that is gone
    assert len(chat_warnings(caplog)) == 1 and escaped(caplog) == []
    await assert_keeps_serving(bot, gateway, discord_api, ollama_server)


@pytest.mark.parametrize("code", [50013, 50001])
async def test_a_channel_the_bot_may_not_post_in(bot, gateway, discord_api, ollama_server, caplog, code):
    ollama_server.add_scripted_model(BASE_TAG, reply="unseen answer")
    discord_api.forbid("POST", rf"^/channels/{CHANNEL_ID}/", code=code)  # messages and typing
    await gateway.message(mention("can you hear me?"))
    assert [a.answer for a in await wait_for_answers(bot, 1)] == ["unseen answer"]
    assert len(chat_warnings(caplog)) == 1 and escaped(caplog) == []
    await assert_keeps_serving(bot, gateway, discord_api, ollama_server)


async def test_unreadable_thread_history_falls_back_to_the_message(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Rome.")
    gateway.add_guild(thread_ids=(THREAD,))
    discord_api.add_message(mention("capital of France?", channel_id=THREAD))
    discord_api.forbid("GET", rf"^/channels/{THREAD}/messages", code=50001)
    await gateway.message(mention("and of Italy?", channel_id=THREAD))
    await wait_until(lambda: any(m["components"] for m in discord_api.bot_messages(THREAD)))
    body = ollama_server.requests_to("POST", "/api/chat")[-1]
    assert [(m["role"], m["content"]) for m in body["messages"]][1:] == [("user", "and of Italy?")]


async def test_a_rate_limited_edit_stalls_neither_its_stream_nor_other_conversations(
        bot, gateway, discord_api, ollama_server):
    reply = " ".join(f"word{i}" for i in range(20))
    ollama_server.add_scripted_model(BASE_TAG, reply=reply, token_delay=0.05)  # ~1 s of streaming
    discord_api.rate_limit("PATCH", rf"^/channels/{CHANNEL_ID}/messages/", retry_after=4.0)
    started = time.monotonic()
    await gateway.message(mention("first conversation"))
    await wait_until(lambda: discord_api.find("PATCH", f"/channels/{CHANNEL_ID}/messages/"))
    # Another conversation, in a DM (another rate-limit bucket), is answered while the first edit waits: the
    # first one kept reading its stream (the model server answers one chat at a time) and recorded its answer.
    await gateway.message(message_payload(f"<@{BOT_ID}> second conversation", author=user_payload(12),
                                          channel_id=DM_CHANNEL, guild_id=None))
    await wait_until(lambda: any(m["components"] for m in discord_api.bot_messages(DM_CHANNEL)))
    assert time.monotonic() - started < 4.0
    assert [a.answer for a in await recorded_answers(bot)] == [reply, reply]
    assert not any(m["components"] for m in discord_api.bot_messages(CHANNEL_ID))  # its edit still waits
    await wait_until(lambda: any(m["components"] for m in discord_api.bot_messages(CHANNEL_ID)))
    [first] = discord_api.bot_messages(CHANNEL_ID)
    assert first["content"] == reply
    patches = discord_api.find("PATCH", f"/channels/{CHANNEL_ID}/messages/")
    assert [c.status for c in patches][:2] == [429, 200] and len(patches) <= 3  # coalesced, not a backlog


async def test_retrain_progress_edits_coalesce_under_a_rate_limit(bot, discord_api):
    cog = bot.get_cog("RetrainCog")
    channel = bot.get_partial_messageable(CHANNEL_ID)
    status = await channel.send("progress")
    discord_api.rate_limit("PATCH", rf"/messages/{status.id}$", retry_after=1.0)

    def run(step: int) -> RetrainRun:
        return RetrainRun(id=7, state="running", channel_id=CHANNEL_ID, status_message_id=status.id,
                          progress={"stage": "training", "step": step, "total": 10})

    started = time.monotonic()
    for step in range(1, 6):
        await cog.progress(run(step))
    assert time.monotonic() - started < 0.5  # the orchestrator is never held up by the limit
    await wait_until(lambda: "5/10" in discord_api.messages[status.id]["content"], limit=5)
    assert "5/10" in discord_api.messages[status.id]["content"]  # the latest state wins
    statuses = [c.status for c in discord_api.find("PATCH", f"/messages/{status.id}")]
    assert statuses[0] == 429 and statuses[-1] == 200 and len(statuses) <= 3  # steps in between never sent
