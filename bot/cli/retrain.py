"""``loraloop retrain …`` (operators) and ``loraloop worker`` (the GPU host)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from bot.cli.common import Community, console, fail, open_ollama, open_store, print_json, settings
from trainer.progress import RunProgress

if TYPE_CHECKING:
    from bot.retrain.orchestrator import Orchestrator
    from bot.settings import Settings
    from data.models import RetrainRun

T = TypeVar("T")

app = typer.Typer(help="Retrain proposals and runs (the bot announces them in Discord).", no_args_is_help=True)


def _run_line(run: RetrainRun, queued: int | None = None) -> dict[str, Any]:
    return {"id": run.id, "community": run.community, "state": run.state, "reason": run.reason,
            "progress": run.progress, "queue_position": queued,
            "new_examples": (run.summary or {}).get("new_examples"), "created_at": run.created_at,
            "finished_at": run.finished_at}


async def _with_orchestrator(cfg: Settings, community: str | None, work: Callable[[Orchestrator], Awaitable[T]]) -> T:
    from bot.retrain.dispatch import make_dispatcher
    from bot.retrain.orchestrator import Orchestrator

    async with open_store(cfg, community) as store, open_ollama(cfg, timeout_s=300) as client:
        orchestrator = Orchestrator(store, cfg, make_dispatcher(cfg), client)
        try:
            return await work(orchestrator)
        finally:
            await orchestrator.dispatcher.close()


@app.command()
def propose(as_json: bool = typer.Option(False, "--json"), community: Community = None) -> None:
    """Open a retrain proposal now; the bot posts it to the community's experts channel for approval."""
    from data.errors import StoreError

    cfg = settings()
    try:
        run = asyncio.run(_with_orchestrator(cfg, community, lambda o: o.propose(origin="command line")))
    except StoreError as exc:
        fail(str(exc))
    if as_json:
        return print_json(_run_line(run))
    console.print(f"retrain #{run.id} proposed with {run.summary['new_examples']} new examples; it starts when "
                  f"{cfg.retrain_quorum} experts approve it in Discord", highlight=False)


@app.command()
def status(as_json: bool = typer.Option(False, "--json"), limit: int = typer.Option(5),
           community: Community = None) -> None:
    """The community's latest retrain runs; a run waiting for a worker shows its place in the queue (the runs of
    every community waiting)."""
    from data import runs

    async def work() -> list[tuple[RetrainRun, int | None]]:
        async with open_store(cfg, community) as store:
            recent = await runs.list_runs(store, limit)
            return [(run, await runs.queue_position(store, run.id)) for run in recent]

    cfg = settings()
    listed = asyncio.run(work())
    if as_json:
        return print_json([_run_line(r, queued) for r, queued in listed])
    if not listed:
        console.print("no retrains yet")
    for run, queued in listed:
        stage = RunProgress.model_validate(run.progress or {}).stage
        extra = f" ({stage})" if stage and stage != run.state else ""
        if queued is not None:
            extra += f" (queue position {queued})"
        console.print(f"#{run.id} {run.state}{extra}" + (f": {run.reason}" if run.reason else ""), highlight=False)


@app.command()
def cancel(run_id: int = typer.Argument(None, help="Default: the open one."), community: Community = None) -> None:
    """Stop the open proposal or the running retrain; the active model is untouched."""
    from data import runs
    from data.errors import StoreError

    async def work(orchestrator: Orchestrator) -> RetrainRun:
        target = run_id
        if target is None:
            run = await runs.open_run(orchestrator.store)
            if run is None:
                raise StoreError("nothing to cancel: no retrain is open")
            target = run.id
        return await orchestrator.cancel(target, by=None)

    cfg = settings()
    try:
        run = asyncio.run(_with_orchestrator(cfg, community, work))
    except StoreError as exc:
        fail(str(exc))
    console.print(f"retrain #{run.id} {run.state}" + (f": {run.reason}" if run.reason else ""), highlight=False)


def worker(loglevel: str = typer.Option("INFO", help="Celery log level.")) -> None:
    """Serve retrain jobs from Redis on this (GPU) host, one at a time (the same as ``python -m worker``)."""
    from worker.celery_app import WorkerCannotStart, check_redis, require_job_secret, run_worker

    cfg = settings()
    try:
        require_job_secret(cfg)
        check_redis(cfg.redis_url)
    except WorkerCannotStart as exc:
        fail(str(exc))
    run_worker(cfg, loglevel)
