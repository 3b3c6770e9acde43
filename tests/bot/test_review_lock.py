"""Every click and form that writes answers Discord at once, even while SQLite's write lock is held for longer
than Discord's 3 s window (a bulk import, a backup, a retrain's snapshot): it defers first, writes when the lock
frees, then follows up."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from data.conversation import Conversation
from data.formats.preference import Preference
from data.preferences import import_preferences, list_preferences
from tests.harness.bot import ADMIN, AUTHOR, BASE_TAG, EXPERT, MEMBER, last_response
from tests.harness.discord import ADMIN_ROLE, EXPERT_ROLE, RESPONSE_DEADLINE_S, message_with_buttons

HOLD_S = RESPONSE_DEADLINE_S + 0.5  # past Discord's window for a first response: a write behind it must defer first


@contextlib.asynccontextmanager
async def sqlite_write_lock(database: str, hold_s: float = HOLD_S) -> AsyncIterator[None]:
    """Another connection holds the database's write lock (BEGIN IMMEDIATE) for ``hold_s`` seconds."""
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    release = asyncio.get_running_loop().call_later(hold_s, holder.execute, "ROLLBACK")
    try:
        yield
    finally:
        release.cancel()
        holder.close()


def newest_followup(discord_api) -> str:
    """What the user sees last: the newest follow-up or edit of an answered interaction."""
    calls = [c for method in ("POST", "PATCH") for c in discord_api.find(method, "/webhooks/") if c.status < 400]
    return max(calls, key=lambda c: c.at).json.get("content") or ""


async def modal_fields(discord_api) -> tuple[str, list[str]]:
    modal = last_response(discord_api)
    assert modal["type"] == 9, modal
    return modal["data"]["custom_id"], [c["components"][0]["custom_id"] for c in modal["data"]["components"]]


Act = Callable[[], Awaitable[None]]


async def rate_pair(bot, gateway, discord_api) -> tuple[Act, str]:
    example = await bot.store.add_example(Conversation.qa("q", "a"), source="teach", author_id=AUTHOR)
    return (lambda: gateway.click(f"ll:rv:4:{example.id}", message=message_with_buttons([f"ll:rv:4:{example.id}"]),
                                  user_id=EXPERT, roles=[EXPERT_ROLE]), f"Rated #{example.id} 4/5")


async def approve_pair(bot, gateway, discord_api) -> tuple[Act, str]:
    example = await bot.store.add_example(Conversation.qa("q", "a"), source="teach", author_id=AUTHOR)
    button = f"ll:rv:approve:{example.id}"
    return (lambda: gateway.click(button, message=message_with_buttons([button]), user_id=ADMIN,
                                  roles=[ADMIN_ROLE]), f"Example #{example.id} approved.")


async def rate_preference(bot, gateway, discord_api) -> tuple[Act, str]:
    await import_preferences(bot.store, [Preference.from_row([{"role": "user", "content": "q"}],
                                                             {"role": "assistant", "content": "yes"},
                                                             {"role": "assistant", "content": "no"})])
    [record] = await list_preferences(bot.store)
    button = f"ll:pf:5:{record.id}"
    return (lambda: gateway.click(button, message=message_with_buttons([button]), user_id=EXPERT,
                                  roles=[EXPERT_ROLE]), f"Rated preference #{record.id} 5/5")


async def thumbs_up(bot, gateway, discord_api) -> tuple[Act, str]:
    answer = await bot.store.record_answer(prompt=[{"role": "user", "content": "why?"}], answer="because",
                                           model_tag=BASE_TAG)
    button = f"ll:fb:up:{answer.id}"
    return lambda: gateway.click(button, message=message_with_buttons([button]), user_id=MEMBER), "Thanks, noted"


async def teach(bot, gateway, discord_api) -> tuple[Act, str]:
    await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
    custom_id, fields = await modal_fields(discord_api)
    values = dict(zip(fields, ["What is r?", "The LoRA rank.", ""], strict=True))
    return (lambda: gateway.submit_modal(custom_id, values, user_id=EXPERT, roles=[EXPERT_ROLE]),
            "waiting for expert review")


async def suggest(bot, gateway, discord_api) -> tuple[Act, str]:
    answer = await bot.store.record_answer(prompt=[{"role": "user", "content": "why?"}], answer="because",
                                           model_tag=BASE_TAG)
    button = f"ll:fb:fix:{answer.id}"
    await gateway.click(button, message=message_with_buttons([button]), user_id=EXPERT, roles=[EXPERT_ROLE])
    custom_id, fields = await modal_fields(discord_api)
    values = dict(zip(fields, ["why?", "because of the rank"], strict=True))
    return (lambda: gateway.submit_modal(custom_id, values, user_id=EXPERT, roles=[EXPERT_ROLE]),
            "waiting for expert review")


async def edit(bot, gateway, discord_api) -> tuple[Act, str]:
    example = await bot.store.add_example(Conversation.qa("q", "a"), source="teach", author_id=AUTHOR)
    button = f"ll:rv:edit:{example.id}"
    await gateway.click(button, message=message_with_buttons([button]), user_id=EXPERT, roles=[EXPERT_ROLE])
    custom_id, fields = await modal_fields(discord_api)
    values = dict(zip(fields, ["q", "a better answer"], strict=True))
    return (lambda: gateway.submit_modal(custom_id, values, user_id=EXPERT, roles=[EXPERT_ROLE]),
            f"#{example.id} is superseded")


@pytest.mark.parametrize("prepare", [rate_pair, approve_pair, rate_preference, thumbs_up, teach, suggest, edit])
async def test_a_write_behind_a_held_sqlite_lock_is_answered_in_time_then_followed_up(
        bot, gateway, discord_api, settings, prepare):
    act, expected = await prepare(bot, gateway, discord_api)
    answered = len(discord_api.interaction_responses())
    database = settings.resolved_database_url.split(":///", 1)[1]
    async with sqlite_write_lock(database):
        started = time.monotonic()
        await act()  # fails when the first response misses Discord's 3 s window; waits for the handler's end
        took = time.monotonic() - started
    first = discord_api.interaction_responses()[answered:]
    assert len(first) == 1 and first[0].json["type"] in (5, 6)  # deferred: the write had not happened yet
    record = list(discord_api.interactions.values())[-1]  # the interaction ``act`` fed
    first_s = record.responded - record.created
    assert first_s < RESPONSE_DEADLINE_S
    assert took >= HOLD_S - 0.5, "the lock did not hold the write back"
    assert expected in newest_followup(discord_api)
    print(f"{prepare.__name__}: first response {first_s:.3f} s, follow-up after {took:.1f} s")
