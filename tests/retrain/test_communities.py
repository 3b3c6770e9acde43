"""Communities on the retrain path: each community proposes on its own schedule and threshold, to its own experts;
trains into its own lineage of tags; gets its own active model; and rolls back (to the base, too) without touching
another's. Two communities' runs share one queue: on one worker one after the other, on two workers at once.

The fast tests use models scripted in the Ollama-API test server (both databases); the slow ones train the tiny
model for real, through the local dispatcher and through two real ``loraloop worker`` processes on Redis."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.retrain import scheduler as sched
from bot.retrain.dispatch import LocalDispatcher, make_dispatcher
from bot.retrain.orchestrator import orchestrators
from bot.settings import CommunitySettings
from data import runs
from data.communities import lineage_name
from data.models import utcnow
from data.review import ReviewPolicy
from data.store import NotFound, Store
from deploy.errors import DeployFailed
from deploy.ollama import OllamaClient
from deploy.promotion import AlreadyActive, apply_retention, fail_interrupted, promote, rollback
from tests.harness.discord import CHANNEL_ID, GUILD_ID
from tests.harness.polling import wait_until
from tests.harness.retrain import CHANNEL_B, GUILD_B, approved_examples, loop_settings, spec_for, two_communities
from worker.job import WorkerPolicy

BASE = "tiny-llama:base"


class Recorder:
    """A Notifier that keeps what it was told (the Discord cog's stand-in)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str | None, int | None]] = []

    async def proposed(self, run):
        self.calls.append(("proposed", run.id, run.community, run.channel_id))

    async def reminder(self, run): ...

    async def progress(self, run): ...

    async def finished(self, run, loss_png):
        self.calls.append(("finished", run.id, run.community, run.channel_id))


@asynccontextmanager
async def bot_orchestrators(settings, dispatcher=None):
    """One orchestrator per community on one store, one Ollama client and one dispatcher, as the bot holds them."""
    store = Store(settings.resolved_database_url, policy=ReviewPolicy(2, 4.0, 2.5))
    await store.migrate()
    client = OllamaClient(settings.ollama_host, timeout=60)
    dispatcher = dispatcher or make_dispatcher(settings)
    orchs = orchestrators(store, settings, dispatcher, client, Recorder(), poll_s=0.1)
    try:
        yield orchs
    finally:
        for orch in orchs.values():
            await orch.close(release_dispatcher=False)
        await dispatcher.close()
        await client.close()
        await store.close()


async def approve(orch, run_id):
    await orch.vote(run_id, 1, True)
    _, started = await orch.vote(run_id, 2, True)
    assert started


# ---- promotion, rollback, retention: per community (scripted models, both databases) ------------------------


async def promoted(store, server, n: int) -> list[str]:
    """``n`` fine-tunes of the store's community promoted one after the other, each in Ollama; the last answers."""
    tags = []
    for _ in range(n):
        v = await store.create_model_version(name=lineage_name("tiny", store.community), base_model="tiny",
                                             ollama_base=BASE)
        server.add_scripted_model(v.tag)
        await store.update_model_version(v.id, status="evaluated", in_ollama=True)
        await store.promote(v.tag)
        tags.append(v.tag)
    return tags


async def test_rollback_promotion_and_retention_are_per_community(store, ollama_server):
    ollama_server.add_scripted_model(BASE)
    a, b = store.scoped("acme"), store.scoped("globex")
    a_tags = await promoted(a, ollama_server, 1)
    b_tags = await promoted(b, ollama_server, 3)
    assert a_tags == ["loraloop-tiny-acme:v1"] and b_tags == [f"loraloop-tiny-globex:v{n}" for n in (1, 2, 3)]
    async with OllamaClient(ollama_server.url) as client:
        # acme's only fine-tune goes bad: its rollback goes back to the base model; globex is untouched
        now = await rollback(a, client)
        assert str(now) == f"{BASE} (the base model)" and now.version is None
        assert await a.active_model_version() is None
        assert (await a.get_model_version(a_tags[0])).status == "rolled_back"
        assert (await b.active_model_version()).tag == b_tags[2]
        with pytest.raises(DeployFailed, match="the base model already answers"):
            await rollback(a, client)
        # globex rolls back one version; acme still answers with the base
        assert (await rollback(b, client)).tag == b_tags[1]
        assert await a.active_model_version() is None
        # promoting the base tag (`loraloop models promote <ollama_base>`) switches a community back to it
        await promote(b, client, b_tags[2])
        assert str(await promote(b, client, BASE, base=BASE)) == f"{BASE} (the base model)"
        assert await b.active_model_version() is None
        with pytest.raises(AlreadyActive, match="the base model is already the active model"):
            await promote(b, client, BASE, base=BASE)
        # a community cannot promote another's version: to it, it does not exist
        with pytest.raises(NotFound, match="no model version"):
            await promote(a, client, b_tags[0])

        # retention and interrupted deploys: each community's own tags only
        await promote(b, client, b_tags[2])
        c = await a.create_model_version(name=lineage_name("tiny", "acme"), base_model="tiny", ollama_base=BASE)
        ollama_server.add_scripted_model(c.tag)
        assert await fail_interrupted(b, client, "tiny") == []
        assert await apply_retention(a, client, "tiny", keep=1) == []  # acme's one tag in Ollama is kept
        deleted = await apply_retention(b, client, "tiny", keep=1)
        assert deleted == [b_tags[0]]  # v3 answers, v2 is its rollback target
        assert await fail_interrupted(a, client, "tiny") == [c.tag]
        present = {m.name for m in await client.list_models()}
    assert {a_tags[0], b_tags[1], b_tags[2]} <= present and b_tags[0] not in present and c.tag not in present
    assert (await b.get_model_version(b_tags[0])).in_ollama is False


async def test_versions_from_before_communities_stay_in_their_communitys_housekeeping(store, ollama_server):
    """Rows assigned to a community (data.communities.assign_communities) keep the old lineage name: retention and
    interrupted-deploy clean-up still find them there."""
    a = store.scoped("acme")
    old = await a.create_model_version(name="tiny", base_model="tiny", ollama_base=BASE)  # loraloop-tiny:v1
    ollama_server.add_scripted_model(old.tag)
    async with OllamaClient(ollama_server.url) as client:
        assert await fail_interrupted(a, client, "tiny") == ["loraloop-tiny:v1"]


# ---- the scheduler: one check per community, its own cron and threshold, its own experts ---------------------


async def test_the_scheduler_proposes_per_community_with_its_own_threshold(tmp_path, tiny_llama_dir):
    settings = loop_settings(tmp_path, "http://127.0.0.1:9", tiny_llama_dir, retrain_min_new_examples=10,
                             retrain_cron="0 3 * * *",
                             **two_communities(communities={"acme": CommunitySettings(retrain_min_new_examples=3,
                                                                                      retrain_cron="30 2 * * *")}))
    # a check stored before communities: replaced by one per community
    legacy = sched.start_scheduler(loop_settings(tmp_path, "http://127.0.0.1:9", tiny_llama_dir))
    legacy.add_job(sched.housekeeping, "interval", hours=1, id=sched.CHECK_JOB)
    await legacy.stop()
    async with bot_orchestrators(settings) as orchs:
        acme, globex = orchs["acme"], orchs["globex"]
        await approved_examples(acme.store, 5)
        await approved_examples(globex.store, 5, seed=1)
        sched.bind(orchs)
        scheduler = sched.start_scheduler(settings)
        try:
            jobs = {job.id: job for job in scheduler.get_jobs()}
            assert set(jobs) == {sched.check_job("acme"), sched.check_job("globex"), sched.HOUSEKEEPING_JOB}
            acme_next, globex_next = (jobs[sched.check_job(c)].next_run_time for c in ("acme", "globex"))
            assert (acme_next.hour, acme_next.minute) == (2, 30) and (globex_next.hour, globex_next.minute) == (3, 0)
            for community in orchs:  # both checks fall due
                scheduler.modify_job(sched.check_job(community), next_run_time=utcnow())
            run = await wait_until(lambda: runs.open_run(acme.store), 10, "acme's check to propose")
            await wait_until(lambda: all(scheduler.get_job(sched.check_job(c)).next_run_time > utcnow()
                                         for c in orchs), 10, "both checks to have run")
        finally:
            await scheduler.stop()
            sched.bind(None)
        # acme's 5 new examples pass its threshold of 3; globex's 5 stay under the global 10
        assert run.summary["new_examples"] == 5 and run.summary["origin"] == "scheduler"
        assert await runs.open_run(globex.store) is None
        assert (run.community, run.guild_id, run.channel_id) == ("acme", GUILD_ID, CHANNEL_ID)
        assert acme.notifier.calls == [("proposed", run.id, "acme", CHANNEL_ID)]
        # globex's own proposal goes to its own experts
        other = await globex.propose(min_new=1)
        assert (other.community, other.guild_id, other.channel_id) == ("globex", GUILD_B, CHANNEL_B)


# ---- two communities on the real loop: one after the other on one local worker, at once on two Celery workers:
# the full loop of each dispatcher runs a second community beside it (tests/retrain/test_loop.py).


# ---- the local dispatcher's queue ---------------------------------------------------------------------------


async def test_the_local_dispatcher_runs_one_job_at_a_time_in_order_and_keeps_its_queue_over_a_restart(tmp_path):
    """Jobs that end at once (refused: a base this host does not train) show the queue's order without training."""
    home = (tmp_path / "jobs").resolve()
    policy = WorkerPolicy(home=home, model_name="tiny", base_models=("some/other-base",),
                          ollama_host="http://127.0.0.1:9", max_time_limit_s=600)
    jobs = [spec_for(tmp_path / str(n), "/models/tiny", run_id=n, community=c, tag=f"loraloop-tiny-{c}:v1")
            for n, c in ((1, "acme"), (2, "globex"), (3, "initech"))]
    first = LocalDispatcher(home, policy, poll_s=0.05)
    refs = [await first.submit(job) for job in jobs[:2]]
    await asyncio.wait_for(first._runner, 60)  # the queue ran both
    # a job queued when the bot stopped: submitted, then the dispatcher closed before it could start it
    refs.append(await first.submit(jobs[2]))
    await first.close()
    assert not (Path(refs[2]) / "pid").exists()

    second = LocalDispatcher(home, policy, poll_s=0.05)  # the restarted bot: recover() asks about its runs
    try:
        assert await second.alive(3, refs[2]) is None  # queued again, not lost
        await asyncio.wait_for(second._runner, 60)
    finally:
        await second.close()
    spans = []
    for ref, job in zip(refs, jobs, strict=True):
        events = await second.events(job.run_id, ref, 0)
        assert [e["event"] for e in events] == ["failed"] and "is not one this worker trains" in events[0]["reason"]
        spans.append(((Path(ref) / "pid").stat().st_mtime, events[-1]["t"]))
    assert spans == sorted(spans) and all(spans[i][1] <= spans[i + 1][0] for i in range(2))  # never two at once


def test_a_celery_worker_takes_one_job_at_a_time():
    """Every community's jobs wait in one queue; a worker holds only the job it runs (late acks, prefetch 1), so the
    next one goes to whichever worker is free first."""
    from worker.celery_app import make_celery

    conf = make_celery("redis://127.0.0.1:9/0").conf
    assert (conf.worker_prefetch_multiplier, conf.worker_concurrency, conf.task_acks_late) == (1, 1, True)
