"""The whole loop through Discord, on both dispatchers: examples taught and rated → /retrain propose → two
experts approve at the same moment → snapshot → training of the tiny model on CPU → GGUF → registration
with the Ollama-API test server → gate → switch → the bot's next answer comes from the new version."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.bot.conftest import start_bot
from tests.bot.test_chat import mention, wait_for
from tests.fixtures.discord import CHANNEL_ID, EXPERT_ROLE, Gateway, message_with_buttons
from tests.retrain.conftest import approved_examples, loop_settings, qa, wait_until

pytestmark = pytest.mark.slow
EXPERTS = (31, 32, 33)


async def teach_and_rate(gateway: Gateway, api, bot, n: int = 2) -> None:
    """Experts teach pairs through the modal and two others rate them 5: they become approved."""
    for i in range(n):
        author, raters = EXPERTS[i % 3], [e for e in EXPERTS if e != EXPERTS[i % 3]]
        await gateway.command("teach", user_id=author, roles=[EXPERT_ROLE])
        modal = api.interaction_responses()[-1].json
        fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
        pair = qa(i)
        await gateway.submit_modal(modal["data"]["custom_id"],
                                   dict(zip(fields, [pair.messages[0].content, pair.messages[1].content, ""],
                                            strict=True)), user_id=author, roles=[EXPERT_ROLE])
        [example] = [e for e in await bot.store.list_examples(status="pending")]
        for rater in raters:
            await gateway.click(f"ll:rv:5:{example.id}", message=message_with_buttons([f"ll:rv:5:{example.id}"]),
                                user_id=rater, roles=[EXPERT_ROLE])
        assert (await bot.store.get_example(example.id)).status == "approved"


async def full_loop(settings, discord_api, base_server) -> None:
    bot = await start_bot(settings, run_scheduler=False)
    gateway = Gateway(bot, discord_api)
    gateway.add_guild()
    try:
        await approved_examples(bot.store, 40)
        await teach_and_rate(gateway, discord_api, bot)

        # ---- propose: the proposal is posted in the experts channel with its numbers and buttons ------------
        await gateway.command("retrain", subcommand="propose", user_id=EXPERTS[0], roles=[EXPERT_ROLE])
        assert "proposed" in discord_api.reply_text()
        run = await bot.store.open_run()
        proposal = discord_api.messages[run.message_id]
        assert int(proposal["channel_id"]) == CHANNEL_ID and "**42**" in proposal["content"]
        buttons = [c["custom_id"] for row in proposal["components"] for c in row["components"]]
        assert buttons == [f"ll:rt:approve:{run.id}", f"ll:rt:reject:{run.id}"]

        # ---- a non-expert cannot vote; two experts approve at the same moment: exactly one run -------------
        await gateway.click(buttons[0], message=proposal, user_id=99, roles=[])
        assert "Only experts" in discord_api.reply_text()
        await asyncio.gather(*(gateway.click(buttons[0], message=proposal, user_id=u, roles=[EXPERT_ROLE])
                               for u in EXPERTS[:2]))
        assert (await bot.store.get_run(run.id)).state != "proposed"
        orchestrator = bot.get_cog("RetrainCog").orchestrator
        assert list(orchestrator._tasks) == [run.id]
        await wait_for(lambda: proposal["components"] == [])  # the buttons go; a stale client still clicks:
        await gateway.click(buttons[0], message=message_with_buttons(buttons), user_id=EXPERTS[2],
                            roles=[EXPERT_ROLE])
        assert "not waiting for this vote" in discord_api.reply_text()

        # ---- the run: live progress, then promotion -----------------------------------------------------------
        t0 = time.monotonic()
        done = await orchestrator.wait(run.id, limit_s=170)
        assert done.state == "promoted", (done.state, done.reason)
        assert done.slot is None and done.result["passed"]
        active = await bot.store.active_model_version()
        assert active.tag == "loraloop-tiny:v1" and active.id == done.model_version_id
        assert base_server.get(active.tag) is not None
        status = discord_api.messages[done.status_message_id]
        edits = discord_api.find("PATCH", f"/messages/{done.status_message_id}")
        assert len(edits) >= 2 and "promoted" in status["content"]
        assert any("training" in (c.json or {}).get("content", "") for c in edits)
        [final] = [c for c in discord_api.find("POST", f"/channels/{CHANNEL_ID}/messages") if c.files]
        assert final.files[0][0] == f"retrain-{run.id}-loss.png" and final.files[0][1][:8] == b"\x89PNG\r\n\x1a\n"
        assert "ROUGE-L" in final.json["content"] and "now answers with `loraloop-tiny:v1`" in final.json["content"]
        print(f"\n[{settings.dispatcher}] approval → promoted in {time.monotonic() - t0:.1f} s")

        # ---- the next answer comes from the new version ---------------------------------------------------
        await gateway.message(mention("what colour is lamp 1?"))
        answer = await wait_until(lambda: _last_answer(bot), 20, "the bot's answer")
        assert answer.model_tag == "loraloop-tiny:v1" and answer.model_version_id == active.id
        assert base_server.requests_to("POST", "/api/chat")[-1]["model"] == "loraloop-tiny:v1"
    finally:
        await bot.close()


async def _last_answer(bot):
    async with bot.store.session() as s:
        from sqlalchemy import select

        from data.models import Answer

        return await s.scalar(select(Answer).order_by(Answer.id.desc()).limit(1))


async def test_full_loop_local_dispatcher(tmp_path, discord_api, base_server, tiny_llama_dir):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="local")
    await full_loop(settings, discord_api, base_server)


async def test_full_loop_celery_worker(tmp_path, discord_api, base_server, tiny_llama_dir, redis_url, start_worker):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="celery", redis_url=redis_url)
    start_worker(settings)
    await full_loop(settings, discord_api, base_server)
