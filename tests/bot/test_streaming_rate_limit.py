"""Several answers streaming into one channel at once share Discord's edit bucket (5 per 5 s per channel, see
tests/harness/discord.py ROUTE_LIMITS): discord.py waits on the headers, the bot's edits coalesce, and every
answer still ends whole, with its buttons.

Discord's answers come back over a network whose delay varies, so two edits in flight at once can be answered in
either order. discord.py then trusts the older answer's ``X-RateLimit-Remaining`` and sends a request the bucket
has no room for (a 429, which it retries, but which counts towards Discord's invalid-request limit: docs
topics/rate-limits, "Invalid Request Limit"). ``Overtaken`` delays the stand-in's answers so that this happens
in every run to a bot that has several edits of one channel in flight; the bot sends them one at a time per
channel (bot/chat.py ``_Showing``)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from data.models import Answer
from tests.harness.bot import BASE_TAG, BOT
from tests.harness.discord import BOT_ID, CHANNEL_ID, message_payload, user_payload
from tests.harness.polling import wait_until

ANSWERS = 3


@pytest.mark.slow  # about 10 s of streaming and rate-limit windows
async def test_answers_streaming_in_one_channel_all_finish_within_the_edit_bucket(
        bot, gateway, discord_api, ollama_server):
    reply = " ".join(f"word{i}" for i in range(80))
    ollama_server.add_scripted_model(BASE_TAG, reply=reply, token_delay=0.05)  # ~4 s of streaming each
    discord_api.latency = Overtaken()  # answers land late, and out of order
    questions = [message_payload(f"<@{BOT_ID}> question {i}", author=user_payload(30 + i), mentions=[BOT])
                 for i in range(ANSWERS)]
    await asyncio.gather(*(gateway.message(q) for q in questions))

    def finished() -> list[dict]:
        return [m for m in discord_api.bot_messages(CHANNEL_ID) if m.get("components")]

    await wait_until(lambda: len(finished()) == ANSWERS, limit=60)
    answers = discord_api.bot_messages(CHANNEL_ID)
    assert len(answers) == ANSWERS and all(m["content"] == reply for m in answers)
    replied_to = {str(m["message_reference"]["message_id"]) for m in answers}
    assert replied_to == {q["id"] for q in questions}  # each question has its own answer
    edits = discord_api.find("PATCH", f"/channels/{CHANNEL_ID}/messages/")
    # More edits were wanted than the bucket allows (one a second per answer): discord.py read the headers and
    # waited, so Discord never had to refuse one.
    assert [c.status for c in edits if c.status != 200] == []
    per_window = windows([c.at for c in edits])
    assert max(per_window) == 5, per_window  # the bucket was filled, never overfilled
    recorded = [a.answer for a in await _answers(bot)]
    assert recorded == [reply] * ANSWERS


class Overtaken:
    """Network delay on the answers to message edits: an edit sent while none is in flight is answered after
    0.3 s, one sent beside it at once, so the later edit's answer arrives first. discord.py sets its count of the
    bucket's room from each answer's ``X-RateLimit-Remaining`` (bounded only by its requests still in flight:
    discord/http.py ``Ratelimit.update``), so the late, older answer raises the count again and discord.py sends
    an edit the bucket has no room for."""

    def __init__(self, delay: float = 0.3) -> None:
        self.delay, self.busy_until = delay, float("-inf")

    def __call__(self, call) -> float:
        if call.method != "PATCH" or call.at < self.busy_until:
            return 0.0
        self.busy_until = call.at + self.delay
        return self.delay


def windows(times: list[float], per: float = 5.0) -> list[int]:
    """Requests per rate-limit window as Discord counts them: a window opens with the first request after the
    last one closed."""
    counts: list[int] = []
    closes = float("-inf")
    for at in sorted(times):
        if at >= closes:
            counts.append(0)
            closes = at + per
        counts[-1] += 1
    return counts


async def _answers(bot) -> list:
    async with bot.store.session() as session:
        return list((await session.execute(select(Answer).order_by(Answer.id))).scalars())
