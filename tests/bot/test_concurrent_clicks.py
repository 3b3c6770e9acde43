"""People clicking and submitting at the same moment, through the Discord stand-in (which fails a test when an
interaction gets no response), on a bot whose store is SQLite or PostgreSQL:

- double-clicked 👍/👎 are answered every time and stay one vote (an upsert, no IntegrityError);
- twelve /teach forms submitted at once at a limit of five store exactly five, and every one is answered;
- concurrent /imports store no more than the limit; a KTO file's undesirable records count toward it.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from sqlalchemy import func, select

from bot.app import LoraloopBot
from data.models import Feedback
from tests.harness.bot import BASE_TAG, FAKE_TOKEN, last_response, make_settings
from tests.harness.db import BACKENDS, feedback_counts, make_store
from tests.harness.discord import EXPERT_ROLE, Gateway, message_with_buttons
from tests.harness.polling import wait_until

EXPERT, MEMBER = 61, 62
DOUBLE_CLICK_TRIALS = 50


@pytest.fixture(params=BACKENDS)
async def bot(request, tmp_path, discord_api, ollama_server):
    store, cleanup = await make_store(request.param, tmp_path)
    settings = make_settings(tmp_path, ollama_server.url)
    # Seen as the test guild's community, as the bot's own store is (bot/app.py).
    bot = LoraloopBot(settings, store=store.scoped(settings.community_names()[0]), run_scheduler=False)
    await bot.login(FAKE_TOKEN)
    try:
        yield bot
    finally:
        await bot.close()
        await cleanup()


@pytest.fixture
def gateway(bot, discord_api) -> Gateway:
    return Gateway(bot, discord_api)


def texts(discord_api) -> list[str]:
    """Every message the bot answered interactions with, in order: first responses and follow-ups."""
    calls = sorted((c for c in discord_api.find("POST") if c.status < 400
                    and ("/callback" in c.path or "/webhooks/" in c.path)), key=lambda c: c.at)
    found = [(c.json.get("data") or {}).get("content") if "/callback" in c.path else c.json.get("content")
             for c in calls]
    return [t for t in found if t]


def still_loading(discord_api) -> list[str]:
    """Interactions deferred ("is thinking…") and never followed up: the user waits for ever."""
    return [i.name for i in discord_api.interactions.values() if i.loading]


def errors_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ---- 👍/👎 -----------------------------------------------------------------------------------------------------


async def test_double_clicked_thumbs_are_all_answered_and_one_vote(bot, gateway, discord_api, caplog):
    answered = failed = 0
    for trial in range(DOUBLE_CLICK_TRIALS):
        answer = await bot.store.record_answer(prompt=[{"role": "user", "content": "q?"}], answer="a",
                                               model_tag=BASE_TAG)
        kinds = ("up", "up") if trial % 2 else ("up", "down")
        message = message_with_buttons([f"ll:fb:{k}:{answer.id}" for k in ("up", "down")])
        results = await asyncio.gather(*(gateway.click(f"ll:fb:{kind}:{answer.id}", message=message, user_id=MEMBER)
                                         for kind in kinds), return_exceptions=True)
        failed += sum(isinstance(r, BaseException) for r in results)
        answered += sum(not isinstance(r, BaseException) for r in results)
        up, down = await feedback_counts(bot.store, answer.id)
        assert up + down == 1
    print(f"\n[{bot.store.engine.dialect.name}] {DOUBLE_CLICK_TRIALS} double clicks: {answered} of "
          f"{2 * DOUBLE_CLICK_TRIALS} clicks answered, {failed} not, {len(errors_logged(caplog))} errors logged")
    assert (answered, failed, errors_logged(caplog), still_loading(discord_api)) == (2 * DOUBLE_CLICK_TRIALS, 0, [], [])


async def test_many_people_clicking_at_once_are_all_answered(bot, gateway, discord_api, caplog):
    # 40 clicks in one burst: each person clicks 👍 and 👎 on each answer. (A burst of 100 on this suite's shared
    # two cores once kept some first responses past 3 s: the event loop's load, not the store.)
    answers = [await bot.store.record_answer(prompt=[{"role": "user", "content": "q?"}], answer="a",
                                             model_tag=BASE_TAG) for _ in range(4)]
    clicks = [(answer.id, user, kind) for answer in answers for user in range(100, 105) for kind in ("up", "down")]
    await asyncio.gather(*(gateway.click(f"ll:fb:{kind}:{answer_id}", user_id=user,
                                         message=message_with_buttons([f"ll:fb:{kind}:{answer_id}"]))
                           for answer_id, user, kind in clicks))
    assert errors_logged(caplog) == [] and still_loading(discord_api) == []
    async with bot.store.session() as s:
        assert await s.scalar(select(func.count()).select_from(Feedback)) == 20  # one per person and answer


# ---- the hourly limit -------------------------------------------------------------------------------------


async def test_twelve_teach_forms_submitted_at_once_store_exactly_the_limit(bot, gateway, discord_api):
    bot.settings.max_pairs_per_user_hour = 5
    forms = []
    for _ in range(12):  # every form opens: nothing is used yet
        await gateway.command("teach", user_id=EXPERT, roles=[EXPERT_ROLE])
        modal = last_response(discord_api)
        assert modal["type"] == 9
        forms.append((modal["data"]["custom_id"], [c["components"][0]["custom_id"]
                                                   for c in modal["data"]["components"]]))
    before = len(texts(discord_api))
    await asyncio.gather(*(gateway.submit_modal(custom_id, dict(zip(fields, [f"q {i}", "a", ""], strict=True)),
                                                user_id=EXPERT, roles=[EXPERT_ROLE])
                           for i, (custom_id, fields) in enumerate(forms)))
    replies = texts(discord_api)[before:]
    stored = await bot.store.list_examples()
    print(f"\n[{bot.store.engine.dialect.name}] 12 /teach forms at once at a limit of 5: {len(stored)} stored")
    assert len(stored) == 5 and len(replies) == 12 and still_loading(discord_api) == []
    assert sum("waiting for expert review" in r for r in replies) == 5
    assert sum("the limit is 5 per hour" in r for r in replies) == 7


async def run_import(gateway, discord_api, rows: list[dict], name: str) -> None:
    attachment = discord_api.attachment(name, json.dumps(rows).encode())
    await gateway.command("import", {"file": attachment["id"]}, user_id=EXPERT, roles=[EXPERT_ROLE],
                          attachments={attachment["id"]: attachment})


def import_replies(discord_api) -> list[str]:
    return [c.json["content"] for c in discord_api.find("POST", "/webhooks/") if c.status < 400]


async def test_concurrent_imports_store_no_more_than_the_limit(bot, gateway, discord_api):
    bot.settings.max_pairs_per_user_hour = 5
    await asyncio.gather(*(run_import(gateway, discord_api, [{"instruction": f"file {f} q {i}", "output": "a"}
                                                             for i in range(4)], f"f{f}.json") for f in range(3)))
    await wait_until(lambda: len(import_replies(discord_api)) == 3)
    stored = await bot.store.list_examples()
    print(f"\n[{bot.store.engine.dialect.name}] 3 /imports of 4 at once at a limit of 5: {len(stored)} stored")
    assert len(stored) == 4
    replies = import_replies(discord_api)
    assert sum("imported **4**" in r for r in replies) == 1
    assert sum("was not imported" in r for r in replies) == 2


async def test_a_kto_files_undesirable_records_count_toward_the_limit(bot, gateway, discord_api):
    bot.settings.max_pairs_per_user_hour = 5
    rows = ([{"instruction": "good", "output": "yes", "label": True}]
            + [{"instruction": f"bad {i}", "output": "no", "label": False} for i in range(6)])
    await run_import(gateway, discord_api, rows, "kto.json")
    [reply] = import_replies(discord_api)
    assert "was not imported" in reply and "limit of 5 pairs per hour" in reply
    assert await bot.store.list_examples() == []
