"""Nothing the bot does follows up through an interaction's token after Discord voided it (15 min after the
interaction: 401 50027, tests/harness/discord.py INTERACTION_TOKEN_TTL_S).

The audit: /dataset export, /import, /model rollback and the retrain buttons answer within seconds of their
defer; retrain progress and results go to the experts' channel, never through a token. /ask streams its whole
answer through its token, so its time limit must stay well inside the token's life."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from data.models import Answer
from tests.harness.bot import BASE_TAG, make_settings
from tests.harness.discord import INTERACTION_TOKEN_TTL_S


def test_the_ask_time_limit_stays_inside_the_token_life(tmp_path):
    assert make_settings(tmp_path, "http://ollama", chat_time_limit_s=600).chat_time_limit_s == 600
    with pytest.raises(ValidationError, match="chat_time_limit_s"):
        make_settings(tmp_path, "http://ollama", chat_time_limit_s=INTERACTION_TOKEN_TTL_S)


async def test_an_ask_answer_past_the_token_life_is_recorded_but_not_shown(bot, gateway, discord_api,
                                                                           ollama_server):
    """Why the cap: past 15 min every edit of an /ask answer is refused; the bot stops showing it, logs once,
    and still records it (bot/chat.py _Showing)."""
    reply = " ".join(f"word{i}" for i in range(40))
    ollama_server.add_scripted_model(BASE_TAG, reply=reply, token_delay=0.05)  # ~2 s of streaming
    original = discord_api.now

    def later() -> float:  # the token dies while the answer streams
        return original() + (INTERACTION_TOKEN_TTL_S + 1 if discord_api.find("POST", "/webhooks/") else 0)

    discord_api.now = later  # type: ignore[method-assign]
    await gateway.command("ask", {"question": "a long one"})
    refused = [c for c in discord_api.calls if "/webhooks/" in c.path and c.status == 401]
    assert refused and all(c.method == "PATCH" for c in refused)
    assert not any(m.get("components") for m in discord_api.bot_messages())  # never finished in Discord
    async with bot.store.session() as session:
        [answer] = (await session.execute(select(Answer))).scalars()
    assert answer.answer == reply
