"""What goes wrong in real life, on real components: a worker killed with SIGKILL mid-training, Ollama down at
registration, Redis down at dispatch, the bot restarting mid-run, cancellation, expiry, the scheduler."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.retrain.dispatch import CeleryDispatcher, LocalDispatcher, make_dispatcher
from bot.retrain.orchestrator import NothingToTrain, Orchestrator
from data import runs
from data.conversation import Conversation
from data.models import utcnow
from data.review import ReviewPolicy
from data.store import RunInProgress, Store
from deploy.ollama import OllamaClient
from tests.harness.bot import start_bot
from tests.harness.polling import wait_until
from tests.harness.retrain import COMMUNITY, TRAIN, approved_examples, loop_settings, tag

pytestmark = pytest.mark.slow
SLOW_TRAIN = {**TRAIN, "max_steps": 400}  # long enough to be interrupted half-way


class Recorder:
    """A Notifier that keeps what it was told (and, like the Discord one, records the proposal's message)."""

    def __init__(self, store) -> None:
        self.store = store
        self.calls: list[tuple[str, int, str]] = []

    async def proposed(self, run):
        self.calls.append(("proposed", run.id, run.state))
        await runs.set_run(self.store, run.id, message_id=1000 + run.id)

    async def reminder(self, run):
        self.calls.append(("reminder", run.id, run.state))

    async def progress(self, run):
        self.calls.append(("progress", run.id, (run.progress or {}).get("stage")))

    async def finished(self, run, loss_png):
        self.calls.append(("finished", run.id, run.state))


@asynccontextmanager
async def orchestrator_for(settings, dispatcher=None):
    """An orchestrator on its own store and Ollama client, as one bot process has them."""
    store = Store(settings.resolved_database_url, policy=ReviewPolicy(2, 4.0, 2.5), community=COMMUNITY)
    await store.migrate()
    client = OllamaClient(settings.ollama_host, timeout=60)
    orchestrator = Orchestrator(store, settings, dispatcher or make_dispatcher(settings), client,
                                notifier=Recorder(store), poll_s=0.1)
    try:
        yield orchestrator
    finally:
        await orchestrator.close()
        await client.close()
        await store.close()


async def approve(orchestrator, run_id):
    await orchestrator.vote(run_id, 1, True)
    _, started = await orchestrator.vote(run_id, 2, True)
    assert started


async def training_step(orchestrator, run_id, at_least=1):
    async def ready():
        run = await runs.get_run(orchestrator.store, run_id)
        return run if run.state == "training" and (run.progress or {}).get("step", 0) >= at_least else None
    return await wait_until(ready, 90, "training to be under way")


def trainer_processes(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"train" in cmdline and marker.encode() in cmdline and state != "Z":
            found.append(int(pid))
    return found


async def test_worker_killed_mid_training_fails_the_run_and_a_new_one_can_run(
        tmp_path, base_server, tiny_llama_dir, redis_url, start_worker):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="celery", redis_url=redis_url,
                             retrain_train=dict(SLOW_TRAIN))
    worker = start_worker(settings)
    async with orchestrator_for(settings) as orch:
        await approved_examples(orch.store, 40)
        run = await orch.propose()
        await approve(orch, run.id)
        await training_step(orch, run.id)
        assert trainer_processes(str(settings.worker_home))  # the trainer child runs under the worker
        worker.kill9()
        failed = await orch.wait(run.id, limit_s=30)
        assert failed.state == "failed" and "stopped without reporting back" in failed.reason
        assert await orch.store.active_model_version() is None  # the base keeps answering
        version = await orch.store.get_model_version(failed.model_version_id)
        assert version.status == "failed" and base_server.get(version.tag) is None
        await wait_until(lambda: not trainer_processes(str(settings.worker_home)), 10, "the orphan to die")

        # a new proposal runs to the end on a fresh worker
        start_worker(settings)
        settings.retrain_train = dict(TRAIN)
        again = await orch.propose()
        await approve(orch, again.id)
        done = await orch.wait(again.id, limit_s=120)
        assert done.state == "promoted", done.reason
        assert (await orch.store.active_model_version()).tag == tag(2)


async def test_ollama_down_at_registration_fails_and_switches_nothing(
        tmp_path, unreachable_ollama_url, tiny_llama_dir):
    settings = loop_settings(tmp_path, unreachable_ollama_url, tiny_llama_dir, dispatcher="local")
    async with orchestrator_for(settings) as orch:
        await approved_examples(orch.store, 40)
        run = await orch.propose()
        await approve(orch, run.id)
        done = await orch.wait(run.id, limit_s=120)
        assert done.state == "failed" and "Ollama" in done.reason and "reach" in done.reason, done.reason
        assert done.progress.get("stage") in ("converting", "registering")  # training itself succeeded
        assert await orch.store.active_model_version() is None
        assert (await orch.store.get_model_version(done.model_version_id)).status == "failed"
        assert ("finished", run.id, "failed") in orch.notifier.calls


async def test_redis_down_at_dispatch_is_a_clear_error_and_loses_nothing(tmp_path, tiny_llama_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = loop_settings(tmp_path, "http://127.0.0.1:9", tiny_llama_dir, dispatcher="celery",
                             redis_url=f"redis://:secret@127.0.0.1:{port}/0")
    async with orchestrator_for(settings) as orch:
        await approved_examples(orch.store, 40)
        before = await orch.store.dataset_stats()
        run = await orch.propose()
        await approve(orch, run.id)
        done = await orch.wait(run.id, limit_s=30)
        assert done.state == "failed"
        assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in done.reason and "secret" not in done.reason
        assert "approved data is kept" in done.reason
        after = await orch.store.dataset_stats()
        assert after.by_status == before.by_status
        assert after.new_approved_since_active == before.new_approved_since_active == 40
        assert await runs.open_run(orch.store) is None
        assert (await orch.propose()).state == "proposed"  # and it can be proposed again


async def test_two_bot_processes_approving_at_once_start_one_run(tmp_path, tiny_llama_dir):
    """Two orchestrators on two connection pools get the deciding approval at the same moment."""
    settings = loop_settings(tmp_path, "http://127.0.0.1:9", tiny_llama_dir, dispatcher="celery",
                             redis_url="redis://127.0.0.1:9/0", retrain_quorum=1)
    async with orchestrator_for(settings) as a, orchestrator_for(settings) as b:
        await approved_examples(a.store, 10)
        for _ in range(3):
            run = await a.propose()
            (_, started_a), (_, started_b) = await asyncio.gather(a.vote(run.id, 1, True), b.vote(run.id, 2, True))
            assert [started_a, started_b].count(True) == 1
            done = await (a if started_a else b).wait(run.id, limit_s=30)
            assert done.state == "failed"  # no Redis here: what matters is that exactly one run started
        async with a.store.session() as s:
            states = (await s.execute(text("select state, count(*) from retrain_runs group by state"))).all()
        assert dict(states) == {"failed": 3}


async def test_restart_reattaches_to_a_running_job_then_manual_promotion(
        tmp_path, base_server, tiny_llama_dir):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="local",
                             retrain_promotion="manual", retrain_train={**TRAIN, "max_steps": 30})
    async with orchestrator_for(settings) as orch:
        await approved_examples(orch.store, 40)
        run = await orch.propose()
        await approve(orch, run.id)
        await training_step(orch, run.id)
    # the bot stopped; the job's own process goes on. A new bot (new dispatcher, no child handle) reattaches.
    async with orchestrator_for(settings, LocalDispatcher(Path(settings.home) / "jobs")) as orch:
        await orch.recover()
        assert run.id in orch._tasks
        done = await orch.wait(run.id, limit_s=120)
        assert done.state == "evaluated", done.reason  # manual mode: it waits for an expert
        assert await orch.store.active_model_version() is None
        promoted = await orch.decide_promotion(done.id, 7, True)
        assert promoted.state == "promoted"
        assert (await orch.store.active_model_version()).tag == tag(1)


async def test_restart_fails_runs_whose_job_is_gone(tmp_path, tiny_llama_dir):
    settings = loop_settings(tmp_path, "http://127.0.0.1:9", tiny_llama_dir, dispatcher="local")
    async with orchestrator_for(settings) as orch:
        await approved_examples(orch.store, 5)
        gone = tmp_path / "job-gone"
        gone.mkdir()
        (gone / "pid").write_text("999999999")
        run = await runs.propose_run(orch.store, summary={})
        await runs.transition(orch.store, run.id, "approved")
        await runs.transition(orch.store, run.id, "training", job_ref=str(gone), dispatcher="local")
        await orch.recover()
        failed = await runs.get_run(orch.store, run.id)
        assert failed.state == "failed" and failed.reason.startswith("interrupted")
        assert await runs.open_run(orch.store) is None


async def test_cancel_stops_the_training_process(tmp_path, base_server, tiny_llama_dir):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="local",
                             retrain_train=dict(SLOW_TRAIN))
    async with orchestrator_for(settings) as orch:
        await approved_examples(orch.store, 40)
        run = await orch.propose()
        await approve(orch, run.id)
        running = await training_step(orch, run.id)
        cancelled = await orch.cancel(run.id, by=5)
        assert cancelled.state == "cancelled" and cancelled.reason == "cancelled by 5"
        await wait_until(lambda: not trainer_processes(running.job_ref), 20, "the training process to stop")
        assert await orch.store.active_model_version() is None
        assert (await orch.store.get_model_version(run.model_version_id or cancelled.model_version_id)).status == \
            "failed"


async def test_proposals_need_data_expire_and_remind(tmp_path, tiny_llama_dir):
    settings = loop_settings(tmp_path, "http://127.0.0.1:9", tiny_llama_dir, retrain_min_new_examples=10,
                             retrain_expiry_h=10, retrain_reminder_h=2)
    async with orchestrator_for(settings) as orch:
        with pytest.raises(NothingToTrain, match="0 new approved examples"):
            await orch.propose()
        await approved_examples(orch.store, 5)
        assert await orch.maybe_propose() is None  # the scheduled check wants 10
        await approved_examples(orch.store, 12, seed=1)
        run = await orch.maybe_propose()
        assert run.summary["new_examples"] >= 10 and run.summary["hyperparameters"]["lora_r"] == 16
        with pytest.raises(RunInProgress):
            await orch.propose()
        await runs.set_run(orch.store, run.id)  # nothing due yet
        await orch.expire_due()
        assert [c[0] for c in orch.notifier.calls] == ["proposed"]
        async with orch.store.session() as s, s.begin():  # 9 hours later
            await s.execute(text("update retrain_runs set expires_at = :t"), {"t": utcnow() + timedelta(hours=1)})
        await orch.expire_due()
        await orch.expire_due()
        assert [c[0] for c in orch.notifier.calls] == ["proposed", "reminder"]  # once
        async with orch.store.session() as s, s.begin():
            await s.execute(text("update retrain_runs set expires_at = :t"), {"t": utcnow() - timedelta(seconds=1)})
        await orch.expire_due()
        expired = await runs.get_run(orch.store, run.id)
        assert expired.state == "expired" and "no quorum of 2 approvals within 10 h" in expired.reason
        assert orch.notifier.calls[-1] == ("finished", run.id, "expired")


async def test_scheduler_job_is_persistent_and_proposes(tmp_path, tiny_llama_dir):
    from bot.retrain import scheduler as sched

    settings = loop_settings(tmp_path, "http://127.0.0.1:9", tiny_llama_dir, retrain_min_new_examples=3,
                             retrain_cron="30 2 * * *")
    async with orchestrator_for(settings) as orch:
        await approved_examples(orch.store, 5)
        sched.bind({COMMUNITY: orch})
        first = sched.start_scheduler(settings)
        job = first.get_job(sched.check_job(COMMUNITY))
        assert (job.next_run_time.hour, job.next_run_time.minute) == (2, 30)
        first.modify_job(sched.check_job(COMMUNITY), next_run_time=utcnow())  # the check falls due
        run = await wait_until(lambda: runs.open_run(orch.store), 10, "the scheduled check to propose")
        assert run.proposed_by is None and run.summary["new_examples"] == 5
        assert run.summary["origin"] == "scheduler"
        check = sched.check_job(COMMUNITY)
        await wait_until(lambda: first.get_job(check).next_run_time > utcnow(), 5, "the reschedule")
        next_run = first.get_job(sched.check_job(COMMUNITY)).next_run_time
        await first.stop()  # the check may still be writing (Recorder.proposed) while the store is open

        # the jobs live in the database, beside it: a restarted bot keeps the stored next run time …
        jobs = sched.sync_url(settings.resolved_database_url).split("///", 1)[1]
        assert jobs.endswith("bot-scheduler.sqlite3")
        with sqlite3.connect(jobs) as conn:
            ids = {row[0] for row in conn.execute("select id from apscheduler_jobs")}
        assert ids == {sched.check_job(COMMUNITY), sched.HOUSEKEEPING_JOB}
        second = sched.start_scheduler(settings)
        assert second.get_job(sched.check_job(COMMUNITY)).next_run_time == next_run
        await second.stop()
        # … and a changed cron reschedules it
        settings.retrain_cron = "0 4 * * *"
        third = sched.start_scheduler(settings)
        assert third.get_job(sched.check_job(COMMUNITY)).next_run_time.hour == 4
        await third.stop()
        sched.bind(None)
    with pytest.raises(ValueError, match="'every night' is not a crontab line"):  # refused with the settings
        loop_settings(tmp_path, "http://x", tiny_llama_dir, retrain_cron="every night")


class HeldCheck:
    """A scheduled check that is mid-write when the bot shuts down: it records a row once ``release`` is set."""

    def __init__(self, store) -> None:
        self.store, self.started, self.release = store, asyncio.Event(), asyncio.Event()

    async def maybe_propose(self):
        self.started.set()
        await self.release.wait()
        await self.store.import_conversations([Conversation.qa("written by the check", "before close")])

    async def expire_due(self):
        return None


async def test_bot_shutdown_waits_for_a_running_scheduled_check(tmp_path, discord_api, tiny_llama_dir):
    """Closing the bot lets a check that is still writing finish before the store closes, instead of cancelling
    it (or closing the store under it: the hang in teardown this replaced)."""
    from bot.retrain import scheduler as sched

    settings = loop_settings(tmp_path, "http://127.0.0.1:9", tiny_llama_dir)
    bot = await start_bot(settings)  # the scheduler runs, as in production
    check = HeldCheck(bot.store)
    sched.bind({COMMUNITY: check})
    bot.retrain.scheduler.modify_job(sched.check_job(COMMUNITY), next_run_time=utcnow())
    await asyncio.wait_for(check.started.wait(), 10)
    closing = asyncio.create_task(bot.close())
    await asyncio.sleep(0.3)
    assert not closing.done()  # held by the check
    check.release.set()
    await asyncio.wait_for(closing, 30)

    store = Store(settings.resolved_database_url, community=COMMUNITY)
    try:
        assert [e.messages[0]["content"] for e in await store.list_examples()] == ["written by the check"]
    finally:
        await store.close()


def test_dispatcher_choice_follows_settings(tmp_path, tiny_llama_dir):
    local = loop_settings(tmp_path, "http://x", tiny_llama_dir, dispatcher="local")
    assert isinstance(make_dispatcher(local), LocalDispatcher)
    celery = loop_settings(tmp_path, "http://x", tiny_llama_dir, dispatcher="celery")
    assert isinstance(make_dispatcher(celery), CeleryDispatcher)


async def test_scheduler_job_store_on_postgresql(tmp_path, tiny_llama_dir):
    """With PostgreSQL the jobs live in the same database, reached through psycopg (the job store is sync)."""
    url = os.environ.get("LORALOOP_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("needs LORALOOP_TEST_POSTGRES_URL")
    import asyncpg
    import psycopg

    from bot.retrain import scheduler as sched

    name = f"sched_{os.getpid()}"
    admin = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        db_url = url.rsplit("/", 1)[0] + f"/{name}"
        assert sched.sync_url(db_url).startswith("postgresql+psycopg://")
        settings = loop_settings(tmp_path, "http://x", tiny_llama_dir, database_url=db_url, retrain_cron="15 1 * * *")
        first = sched.start_scheduler(settings)
        next_run = first.get_job(sched.check_job(COMMUNITY)).next_run_time
        await first.stop()
        dsn = sched.sync_url(db_url).replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            ids = {row[0] for row in conn.execute("select id from apscheduler_jobs")}
        assert ids == {sched.check_job(COMMUNITY), sched.HOUSEKEEPING_JOB}
        second = sched.start_scheduler(settings)
        assert second.get_job(sched.check_job(COMMUNITY)).next_run_time == next_run
        assert (next_run.hour, next_run.minute) == (1, 15)
        await second.stop()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
