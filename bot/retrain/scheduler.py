"""APScheduler 3 inside the bot: the retrain check (cron) and housekeeping (expiry, reminders), stored in the
database (SQLAlchemyJobStore) so a restarted bot keeps its schedule and runs a check it missed while down.

Each community has its own check job (its cron and threshold: settings.retrain_schedule), which proposes from
that community's data to its experts channel. Stored jobs refer to module-level functions by name (the check
with the community as its argument); they reach the live orchestrators through ``bind``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Protocol

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
)
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import make_url

from bot.settings import Settings

log = logging.getLogger("loraloop.scheduler")
CHECK_JOB = "loraloop-retrain-check"  # the one check before communities; now one per community (check_job)
HOUSEKEEPING_JOB = "loraloop-retrain-housekeeping"


def check_job(community: str) -> str:
    """The id of a community's stored retrain check."""
    return f"{CHECK_JOB}:{community}"


class Checks(Protocol):
    """What the scheduled jobs call (the Orchestrator)."""

    async def maybe_propose(self) -> object: ...

    async def expire_due(self) -> object: ...


_orchestrators: Mapping[str, Checks] = {}


def bind(orchestrators: Mapping[str, Checks] | None) -> None:
    """The live orchestrators, by community (None: none, the bot is stopping)."""
    global _orchestrators
    _orchestrators = dict(orchestrators or {})


async def retrain_check(community: str) -> None:
    """Propose a retrain in ``community`` when enough new approved data has gathered there."""
    orchestrator = _orchestrators.get(community)
    if orchestrator is not None:
        await orchestrator.maybe_propose()


async def housekeeping() -> None:
    for orchestrator in list(_orchestrators.values()):
        try:
            await orchestrator.expire_due()
        except Exception:  # one community's failure must not skip the others
            log.exception("retrain housekeeping failed")


class RetrainScheduler(AsyncIOScheduler):  # type: ignore[misc]  # APScheduler 3 ships no types: its classes are Any
    """The AsyncIOScheduler, plus ``stop``: let a running job finish, then shut down.

    APScheduler's own ``shutdown`` cancels a running coroutine job whatever ``wait`` says, and the bot closes
    the store right after, so a check cut mid-write lost its write or hung on the closing connection."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.add_listener(self._count, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)

    def _count(self, event: JobEvent) -> None:
        self._running += 1 if event.code == EVENT_JOB_SUBMITTED else -1
        if self._running:
            self._idle.clear()
        else:
            self._idle.set()

    async def stop(self, grace_s: float = 30) -> None:
        """Start no new job, wait up to ``grace_s`` seconds for the running ones, then shut down."""
        if not self.running:
            return
        self.pause()
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            log.warning("a scheduled job still ran after %g s; cancelling it", grace_s)
        self.shutdown(wait=False)


def sync_url(async_url: str) -> str:
    """Where the (synchronous) job store keeps the jobs: PostgreSQL's database through psycopg; for SQLite a
    file of its own beside the database, because the job store's blocking writes on the event loop would
    otherwise wait for SQLite's single write lock held by a transaction that needs that same loop to finish."""
    url = make_url(async_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:"):
            return "sqlite://"
        path = Path(database)
        return f"sqlite:///{path.with_name(path.stem + '-scheduler.sqlite3')}"
    raise ValueError(f"no job store driver for {backend}")


def start_scheduler(settings: Settings, *, database_url: str | None = None, housekeeping_s: float = 60
                    ) -> RetrainScheduler:
    """Start the scheduler (inside a running event loop) with the stored jobs: one retrain check per community.

    A stored check keeps its next run time, so a check that fell while the bot was down runs as soon as it is
    back (within the misfire grace time); only a changed cron (``retrain_cron``, or the community's own under
    ``communities:``) reschedules it. Checks of communities no longer configured are removed. Stop it with
    ``await scheduler.stop()``, before closing the store the jobs write to.
    """
    triggers = {}
    for community in settings.community_names():
        cron, _min_new = settings.retrain_schedule(community)
        try:
            triggers[check_job(community)] = (community, CronTrigger.from_crontab(cron, timezone=UTC))
        except ValueError as exc:
            own = settings.communities.get(community)
            what = f"communities.{community}.retrain_cron" if own and own.retrain_cron else "retrain_cron"
            raise ValueError(f"{what} {cron!r} is not a crontab expression: {exc}") from None
    store = SQLAlchemyJobStore(url=sync_url(database_url or settings.resolved_database_url),
                               tablename="apscheduler_jobs")
    scheduler = RetrainScheduler(jobstores={"default": store}, timezone=UTC,
                                 job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 6 * 3600})
    scheduler.start(paused=True)
    for job in scheduler.get_jobs():
        if job.id.startswith(CHECK_JOB) and job.id not in triggers:
            scheduler.remove_job(job.id)  # the check from before communities, or a community no longer configured
    for job_id, (community, trigger) in triggers.items():
        stored = scheduler.get_job(job_id)
        if stored is None or str(stored.trigger) != str(trigger):
            scheduler.add_job(retrain_check, trigger, args=[community], id=job_id, replace_existing=True)
    if scheduler.get_job(HOUSEKEEPING_JOB) is None:
        scheduler.add_job(housekeeping, IntervalTrigger(seconds=housekeeping_s), id=HOUSEKEEPING_JOB)
    scheduler.resume()
    for job_id, (community, _trigger) in triggers.items():
        log.info("retrain check of %s scheduled (%s UTC), next at %s", community,
                 settings.retrain_schedule(community)[0], scheduler.get_job(job_id).next_run_time)
    return scheduler
