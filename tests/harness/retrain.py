"""The retrain loop's test bed: the tiny model's training settings, a bot's settings with a retrain wired in,
approved examples, a job spec, and the whole loop through Discord (taught pairs → proposal → votes → training →
deploy → the bot's next answer) that test modules run on different bases and dispatchers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sqlalchemy import select

from bot.settings import GuildRoles, Settings
from data import runs
from data.communities import guild_community, lineage_name
from data.conversation import Conversation
from data.models import Answer
from data.snapshot import MANIFEST_FILE, parse_manifest
from deploy.config import DeployConfig, DeploySettings
from deploy.ollama import OllamaClient
from deploy.promotion import rollback
from tests.harness.bot import make_settings, mention, start_bot
from tests.harness.discord import ADMIN_ROLE, CHANNEL_ID, EXPERT_ROLE, GUILD_ID, Gateway, message_with_buttons
from tests.harness.polling import wait_until
from tests.harness.snapshots import synthetic_conversations, write_snapshot
from worker.job import JobSpec

BASE = "tiny-llama:base"
REDIS_URL = os.environ.get("LORALOOP_TEST_REDIS_URL")
# Small but real: a few optimizer steps on CPU, short generations everywhere.
TRAIN = {"cpu_threads": 1, "learning_rate": 5e-3, "max_steps": 6, "batch_size": 8, "max_length": 96,
         "max_new_tokens": 8, "eval_generate": 2, "probes": ["what colour is the sky?"], "probe_eval_samples": 1}
EXPERTS = (31, 32, 33)
JOB_SECRET = "test-job-secret-shared-by-bot-and-worker"  # signs the celery dispatcher's jobs (worker/job.py)
COMMUNITY = guild_community(GUILD_ID)  # loop_settings' one guild is a community of its own


def tag(n: int, community: str = COMMUNITY) -> str:
    """The Ollama tag of a community's n-th fine-tune of the tiny model (its lineage: data.communities)."""
    return f"loraloop-{lineage_name('tiny', community)}:v{n}"


# The product's gate, every dimension on (deploy/config.py DeploySettings defaults).
FULL_GATE = {f"gate_{name}": DeploySettings.model_fields[name].default for name in ("paraphrases", "consistency_n")}


GUILD_B, CHANNEL_B = GUILD_ID + 1, CHANNEL_ID + 1


def two_communities(**overrides) -> dict:
    """Settings overrides: the test guild is community acme, a second guild globex, each with its experts channel."""
    roles = {"expert_role_ids": [EXPERT_ROLE], "admin_role_ids": [ADMIN_ROLE]}
    return {"guilds": {GUILD_ID: GuildRoles(**roles, community="acme", experts_channel_id=CHANNEL_ID),
                       GUILD_B: GuildRoles(**roles, community="globex", experts_channel_id=CHANNEL_B)},
            **overrides}


def loop_settings(tmp_path: Path, ollama_url: str, base_dir: Path, **overrides) -> Settings:
    """The bot's test settings (tests/harness/bot.py) for a whole retrain of the tiny model."""
    values = dict(
        home=tmp_path / "home", model_name="tiny", base_model=str(base_dir), ollama_base=BASE,
        retrain_quorum=2, retrain_train=dict(TRAIN), deploy_eval_limit=3, deploy_outtype="f32",
        # The gate's reworded and repeated questions (~30 more chats, 2.5 s a run of the tiny model): the full loop
        # asks for them (FULL_GATE), as do the gate's own tests and the real-model test; fault and queue tests not.
        gate_paraphrases=0, gate_consistency_n=0,
        worker_heartbeat_timeout_s=3, worker_home=tmp_path / "worker", redis_url=REDIS_URL or "redis://127.0.0.1:6379/15",
        worker_job_secret=JOB_SECRET,
        guilds={GUILD_ID: GuildRoles(expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                     allow_non_expert_teach=False, experts_channel_id=CHANNEL_ID)},
    )
    return make_settings(tmp_path, ollama_url, **{**values, **overrides})


async def approved_examples(store, n: int = 40, seed: int = 0) -> None:
    """What weeks of expert review leave behind: approved pairs (the tests teach and rate a few themselves)."""
    convs = synthetic_conversations(n, seed=seed)
    await store.import_conversations(convs, approve=True)


def qa(i: int) -> Conversation:
    return Conversation.qa(f"what colour is lamp {i}?", f"lamp {i} is green.")


def spec_for(tmp_path, base_dir, **overrides) -> JobSpec:
    """A training job on 30 synthetic pairs (the snapshot written under ``tmp_path``) for the tiny base."""
    snap = write_snapshot(tmp_path / "snap", synthetic_conversations(30), source="teach")
    files = {p.name: p.read_text(encoding="utf-8") for p in snap.iterdir()}
    values = dict(run_id=1, community="default", tag="loraloop-tiny:v1", base_model=str(base_dir),
                  ollama_host="http://127.0.0.1:9",
                  deploy=DeployConfig(model_name="tiny", ollama_base=BASE, paraphrases=0, consistency_n=0),
                  snapshot_sha256=parse_manifest(files[MANIFEST_FILE]).sha256, snapshot_files=files,
                  train={**TRAIN, "max_steps": 400, "system_prompt": "You are terse."})
    return JobSpec(**{**values, **overrides})


async def last_answer(bot) -> Answer | None:
    """The answer the bot recorded last."""
    async with bot.store.session() as s:
        return await s.scalar(select(Answer).order_by(Answer.id.desc()).limit(1))


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


async def full_loop(settings, discord_api, base_server, *, beside: str | None = None,
                    worker_pids: set[int] | None = None) -> None:
    """The whole loop, asserting at each step what experts and the model server see.

    ``beside``: a second server's community (two_communities) whose run is approved while the first trains: on the
    local dispatcher it waits its turn in the one queue, then trains; on two Celery workers (``worker_pids``) both
    train at once, one job on each. Each gets its own model; rolling the first back leaves the second answering.
    """
    community = settings.community_of_guild(GUILD_ID)
    bot = await start_bot(settings, run_scheduler=False)
    gateway = Gateway(bot, discord_api)
    gateway.add_guild()
    if beside is not None:
        gateway.add_guild(GUILD_B, channel_id=CHANNEL_B)
    try:
        await approved_examples(bot.store, 40)
        await teach_and_rate(gateway, discord_api, bot)

        # ---- propose: the proposal is posted in the experts channel with its numbers and buttons ------------
        await gateway.command("retrain", subcommand="propose", user_id=EXPERTS[0], roles=[EXPERT_ROLE])
        assert "proposed" in discord_api.reply_text()
        run = await runs.open_run(bot.store)
        proposal = discord_api.messages[run.message_id]
        assert int(proposal["channel_id"]) == CHANNEL_ID and "**42**" in proposal["content"]
        buttons = [c["custom_id"] for row in proposal["components"] for c in row["components"]]
        assert buttons == [f"ll:rt:approve:{run.id}", f"ll:rt:reject:{run.id}"]

        # ---- a non-expert cannot vote; two experts approve at the same moment: exactly one run -------------
        await gateway.click(buttons[0], message=proposal, user_id=99, roles=[])
        assert "Only experts" in discord_api.reply_text()
        await asyncio.gather(*(gateway.click(buttons[0], message=proposal, user_id=u, roles=[EXPERT_ROLE])
                               for u in EXPERTS[:2]))
        assert (await runs.get_run(bot.store, run.id)).state != "proposed"
        cog = bot.get_cog("RetrainCog")
        orchestrator = cog.orchestrator_of(GUILD_ID)
        assert list(orchestrator._tasks) == [run.id]
        await wait_until(lambda: proposal["components"] == [])  # the buttons go; a stale client still clicks:
        await gateway.click(buttons[0], message=message_with_buttons(buttons), user_id=EXPERTS[2],
                            roles=[EXPERT_ROLE])
        assert "not waiting for this vote" in discord_api.reply_text()

        second = None
        if beside is not None:  # the second community's run, approved while the first is under way
            other = cog.orchestrators[beside]
            await approved_examples(other.store, 40, seed=1)
            other_run = await other.propose()
            for expert in EXPERTS[:2]:
                await other.vote(other_run.id, expert, True)
            if worker_pids is None:  # one local worker: it waits its turn, and says where it stands
                async def waiting():
                    waits = await runs.get_run(other.store, other_run.id)
                    first = await runs.get_run(bot.store, run.id)
                    return waits if waits.state == "snapshotted" and first.state == "training" else None
                await wait_until(waiting, 60, f"{beside} to wait while {community} trains")
                assert await runs.queue_position(other.store, other_run.id) == 1
            second = (other, other_run)

        # ---- the run: live progress, then promotion -----------------------------------------------------------
        t0 = time.monotonic()
        done = await orchestrator.wait(run.id, limit_s=240)  # a bound on a hang: two jobs may share the CPU
        assert done.state == "promoted", (done.state, done.reason)
        assert done.slot is None and done.result["passed"]
        active = await bot.store.active_model_version()
        assert active.tag == tag(1, community) and active.id == done.model_version_id
        assert base_server.get(active.tag) is not None
        status = discord_api.messages[done.status_message_id]
        edits = discord_api.find("PATCH", f"/messages/{done.status_message_id}")
        assert len(edits) >= 2 and "promoted" in status["content"]
        assert any("training" in (c.json or {}).get("content", "") for c in edits)
        [final] = [c for c in discord_api.find("POST", f"/channels/{CHANNEL_ID}/messages") if c.files]
        assert final.files[0][0] == f"retrain-{run.id}-loss.png" and final.files[0][1][:8] == b"\x89PNG\r\n\x1a\n"
        assert "ROUGE-L" in final.json["content"] and f"now answers with `{active.tag}`" in final.json["content"]
        # The gate's second table, measured by the bot after the job's verdict: for information, under it.
        assert "with retrieval (for information; the verdict above judged the weights alone)" in final.json["content"]
        assert active.evaluation["with_retrieval"]["prompts"] == done.result["scores"]["candidate"]["count"]
        # The whole gate ran where asked (FULL_GATE): the base reworded the eval questions, the probes were answered
        # n times by both models at the served sampling.
        gate, asked = active.evaluation, settings.deploy
        assert ("paraphrased_by" in gate["paraphrase"]) == bool(asked.paraphrases)
        if asked.consistency_n >= 2:
            consistency = gate["consistency"]
            assert consistency["n"] == asked.consistency_n and consistency["probes"] >= 1
            assert {"candidate", "active"} <= consistency.keys()
        print(f"\n[{settings.dispatcher}] approval → promoted in {time.monotonic() - t0:.1f} s")

        # ---- the next answer comes from the new version ---------------------------------------------------
        chats = len(base_server.requests_to("POST", "/api/chat"))
        await gateway.message(mention("what colour is lamp 1?"))
        answer = await wait_until(lambda: last_answer(bot), 20, "the bot's answer")
        assert answer.model_tag == active.tag and answer.model_version_id == active.id
        # Among the server's chats since, the bot's went to the new version (the other community's job may be
        # chatting with its own models at the same time: the newest chat need not be the bot's).
        models = [r["model"] for r in base_server.requests_to("POST", "/api/chat")[chats:]]
        assert active.tag in models, models

        if second is not None:
            await _the_other_community(bot, base_server, orchestrator, (run, done), *second, worker_pids)
    finally:
        await bot.close()


async def _the_other_community(bot, base_server, orchestrator, first, other, other_run, worker_pids) -> None:
    """full_loop's second community: its own run, queued or beside the first's, its own model, and its own
    rollback."""
    run, done = first
    other_done = await other.wait(other_run.id, limit_s=240)
    assert other_done.state == "promoted", (other_done.state, other_done.reason)
    assert other_done.result["passed"]
    events = await orchestrator.dispatcher.events(run.id, done.job_ref, 0)
    other_events = await other.dispatcher.events(other_run.id, other_done.job_ref, 0)
    if worker_pids is None:  # one worker: the second started after the first had finished
        assert other_events[0]["event"] == "started" and other_events[0]["t"] >= events[-1]["t"]
    else:  # each worker took one job (its own process), and each started before the other had finished
        assert {events[0]["pid"], other_events[0]["pid"]} == worker_pids
        assert events[0]["t"] < other_events[-1]["t"] and other_events[0]["t"] < events[-1]["t"]
    mine, theirs = await bot.store.active_model_version(), await other.store.active_model_version()
    assert theirs.tag == tag(1, other.store.community) and theirs.id == other_done.model_version_id
    assert base_server.get(theirs.tag) is not None and theirs.tag != mine.tag
    # rolling the first community back to its base leaves the second's model answering
    async with OllamaClient(base_server.url) as client:
        assert str(await rollback(bot.store, client)) == f"{BASE} (the base model)"
    assert await bot.store.active_model_version() is None
    assert (await other.store.active_model_version()).tag == theirs.tag
