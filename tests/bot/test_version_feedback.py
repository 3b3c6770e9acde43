"""Per-version feedback in production: /model status and history show 👍/👎 with 95% intervals next to the
previous version's, `loraloop models list --json` carries them, a clear regression is told to the experts once
(with Roll back), and 👎 answers reach the experts' "needs a better answer" list."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from bot.settings import GuildRoles
from tests.harness.bot import BASE_TAG, make_settings, start_bot
from tests.harness.discord import ADMIN_ROLE, CHANNEL_ID, EXPERT_ROLE, GUILD_ID, Gateway, message_with_buttons

EXPERT, MEMBER = 51, 52


@pytest.fixture
async def bot(tmp_path, discord_api, ollama_server):
    settings = make_settings(tmp_path, ollama_server.url, model_name="m", guilds={GUILD_ID: GuildRoles(
        expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE], allow_non_expert_teach=False,
        experts_channel_id=CHANNEL_ID)})
    ollama_server.add_scripted_model(BASE_TAG, reply="x")
    bot = await start_bot(settings, run_scheduler=False)
    try:
        yield bot
    finally:
        await bot.close()


async def promoted(bot, ollama_server):
    v = await bot.store.create_model_version(name="m", base_model="tiny", ollama_base=BASE_TAG)
    await bot.store.update_model_version(v.id, status="registered", in_ollama=True,
                                         artifacts={"parameters": {"temperature": 0.7, "num_ctx": 4096,
                                                                   "stop": ["<|im_end|>"]}})
    ollama_server.add_scripted_model(v.tag, reply="x")
    return await bot.store.promote(v.id)


async def answers(bot, version, up: int, down: int, first_user: int = 1000) -> list[int]:
    ids = []
    for i in range(up + down):
        a = await bot.store.record_answer(prompt=[{"role": "user", "content": f"question {i}?"}],
                                          answer=f"answer {i}", model_tag=version.tag if version else BASE_TAG,
                                          model_version_id=version.id if version else None)
        await bot.store.add_feedback(a.id, first_user + i, 1 if i < up else -1)
        ids.append(a.id)
    return ids


def content(api) -> str:
    return api.reply_text()


async def test_status_history_and_cli_show_each_versions_feedback(bot, discord_api, ollama_server, monkeypatch):
    gateway = Gateway(bot, discord_api)
    await gateway.command("model", subcommand="status", user_id=MEMBER)
    assert f"base model `{BASE_TAG}`" in content(discord_api) and "Served with: temperature 0.7" in content(discord_api)
    await answers(bot, None, up=3, down=1)
    v1 = await promoted(bot, ollama_server)
    await answers(bot, v1, up=8, down=2, first_user=2000)
    await gateway.command("model", subcommand="status", user_id=MEMBER)
    status = content(discord_api)
    assert "Served with: temperature 0.7, num_ctx 4096." in status  # the parameters written into the model
    assert "Feedback since promotion: 👍 8 / 👎 2 · 80% 👍 (95% CI 49%–94%)" in status
    assert f"Before it, `{BASE_TAG}`: 👍 3 / 👎 1 · 75% 👍" in status
    v2 = await promoted(bot, ollama_server)
    await answers(bot, v2, up=1, down=1, first_user=3000)
    await gateway.command("model", subcommand="status", user_id=MEMBER)
    assert f"Before it, `{v1.tag}`: 👍 8 / 👎 2" in content(discord_api)
    await gateway.command("model", subcommand="history", user_id=MEMBER)
    history = content(discord_api).splitlines()
    assert history[0].startswith(f"▶ `{v2.tag}` promoted · 👍 1 / 👎 1 · 50% 👍 (95% CI")
    assert history[1].startswith(f"· `{v1.tag}` promoted · 👍 8 / 👎 2") and BASE_TAG in history[-1]

    from bot.cli import app

    monkeypatch.setenv("LORALOOP_DATABASE_URL", bot.settings.resolved_database_url)
    monkeypatch.setenv("LORALOOP_OLLAMA_HOST", ollama_server.url)
    monkeypatch.setenv("LORALOOP_OLLAMA_BASE", BASE_TAG)
    monkeypatch.setenv("LORALOOP_GUILDS", json.dumps({str(GUILD_ID): {}}))  # its only community: the bot's
    listed = await asyncio.to_thread(CliRunner().invoke, app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["tag"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert rows[v1.tag]["feedback"]["up"] == 8 and rows[v1.tag]["feedback"]["up_rate"] == 0.8
    low, high = rows[v1.tag]["feedback"]["up_rate_ci95"]
    assert 0.49 < low < 0.5 and 0.94 < high < 0.95
    assert rows[v2.tag]["previous"] == {"tag": v1.tag, "feedback": rows[v1.tag]["feedback"]}


async def test_a_clear_regression_is_told_once_with_roll_back_and_noise_is_not(bot, discord_api, ollama_server):
    gateway = Gateway(bot, discord_api)
    gateway.add_guild()
    v1 = await promoted(bot, ollama_server)
    await answers(bot, v1, up=25, down=5)  # 17% 👎
    v2 = await promoted(bot, ollama_server)
    ids = await answers(bot, v2, up=12, down=0, first_user=5000)

    async def thumbs_down(answer_id: int, user: int) -> None:
        button = f"ll:fb:down:{answer_id}"
        await gateway.click(button, message=message_with_buttons([button]), user_id=user)
        assert "noted 👎" in content(discord_api)

    def alerts() -> list[dict]:
        return [m for m in discord_api.messages.values() if "gets more 👎" in (m.get("content") or "")]

    for i, answer_id in enumerate(ids[:6]):  # 6 of 12 votes 👎: 50% against 17%, but only 12 votes: noise
        await thumbs_down(answer_id, 5000 + i)
    assert alerts() == []
    for i in range(14):  # 20 👎 of 26 votes now: a regression no test at 95% calls chance
        fresh = await bot.store.record_answer(prompt=[{"role": "user", "content": "q?"}], answer="bad",
                                              model_tag=v2.tag, model_version_id=v2.id)
        await thumbs_down(fresh.id, 7000 + i)
    [alert] = alerts()
    assert int(alert["channel_id"]) == CHANNEL_ID and f"`{v2.tag}` gets more 👎 than `{v1.tag}`" in alert["content"]
    assert [c["custom_id"] for row in alert["components"] for c in row["components"]] == [f"ll:rb:{v1.id}"]
    fresh = await bot.store.record_answer(prompt=[{"role": "user", "content": "q?"}], answer="bad",
                                          model_tag=v2.tag, model_version_id=v2.id)
    await thumbs_down(fresh.id, 9000)
    assert len(alerts()) == 1  # told once
    await gateway.click(f"ll:rb:{v1.id}", message=alert, user_id=EXPERT, roles=[ADMIN_ROLE])
    assert (await bot.store.active_model_version()).id == v1.id


async def test_thumbs_down_answers_reach_the_review_list_and_leave_it_once_answered(bot, discord_api,
                                                                                   ollama_server):
    gateway = Gateway(bot, discord_api)
    gateway.add_guild()
    ok, bad = await answers(bot, None, up=1, down=1)
    await gateway.command("review", {"what": "bad answers"}, user_id=MEMBER, roles=[])
    assert "Only experts" in content(discord_api)
    await gateway.command("review", {"what": "bad answers"}, user_id=EXPERT, roles=[EXPERT_ROLE])
    listed = discord_api.interaction_responses()[-1].json["data"]
    assert "question 1?" in listed["content"] and "answer 1" in listed["content"] and "question 0?" not in \
        listed["content"]
    [row] = listed["components"]
    assert [c["custom_id"] for c in row["components"]] == [f"ll:ba:{bad}"]
    await gateway.click(f"ll:ba:{bad}", message=message_with_buttons([f"ll:ba:{bad}"]), user_id=EXPERT,
                        roles=[EXPERT_ROLE])
    modal = discord_api.interaction_responses()[-1].json
    assert modal["type"] == 9 and modal["data"]["components"][0]["components"][0]["value"] == "question 1?"
    fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
    await gateway.submit_modal(modal["data"]["custom_id"], dict(zip(fields, ["question 1?", "The right answer."],
                                                                    strict=True)), user_id=EXPERT, roles=[EXPERT_ROLE])
    [example] = await bot.store.list_examples()
    assert example.source == "correction" and example.answer_id == bad and example.status == "pending"
    await gateway.command("review", {"what": "bad answers"}, user_id=EXPERT, roles=[EXPERT_ROLE])
    assert "No 👎 answer is waiting" in content(discord_api)
