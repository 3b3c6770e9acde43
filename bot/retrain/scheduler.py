"""APScheduler 3 inside the bot: the retrain check (cron) and housekeeping (expiry, reminders), stored in the
database (SQLAlchemyJobStore) so a restarted bot keeps its schedule and runs a check it missed while down.

Stored jobs refer to module-level functions by name; they reach the live orchestrator through ``bind``.
"""

from __future__ import annotations

import logging
from datetime import UTC
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import make_url

log = logging.getLogger("loraloop.scheduler")
CHECK_JOB = "loraloop-retrain-check"
HOUSEKEEPING_JOB = "loraloop-retrain-housekeeping"
_orchestrator: Any = None


def bind(orchestrator: Any) -> None:
    global _orchestrator
    _orchestrator = orchestrator


async def retrain_check() -> None:
    """Propose a retrain when enough new approved data has gathered."""
    if _orchestrator is not None:
        await _orchestrator.maybe_propose()


async def housekeeping() -> None:
    if _orchestrator is not None:
        await _orchestrator.expire_due()


def sync_url(async_url: str) -> str:
    """The job store is synchronous: the same database through a sync driver."""
    url = make_url(async_url)
    driver = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}.get(url.get_backend_name())
    if driver is None:
        raise ValueError(f"no job store driver for {url.get_backend_name()}")
    return url.set(drivername=driver).render_as_string(hide_password=False)


def build_scheduler(settings: Any, *, database_url: str | None = None, schema: str | None = None,
                    housekeeping_s: float = 60) -> AsyncIOScheduler:
    try:
        trigger = CronTrigger.from_crontab(settings.retrain_cron, timezone=UTC)
    except ValueError as exc:
        raise ValueError(f"retrain_cron {settings.retrain_cron!r} is not a crontab expression: {exc}") from None
    store = SQLAlchemyJobStore(url=sync_url(database_url or settings.resolved_database_url),
                               tablename="apscheduler_jobs", tableschema=schema)
    scheduler = AsyncIOScheduler(jobstores={"default": store}, timezone=UTC,
                                 job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 6 * 3600})
    scheduler.add_job(retrain_check, trigger, id=CHECK_JOB, replace_existing=True)
    scheduler.add_job(housekeeping, IntervalTrigger(seconds=housekeeping_s), id=HOUSEKEEPING_JOB,
                      replace_existing=True)
    return scheduler
