"""The Celery side of dispatch: the app, the one task, and the worker loop behind ``loraloop worker`` and
``python -m worker`` (one GPU job at a time).

Reliability choices, each for a failure we test:

* ``acks_late`` + ``reject_on_worker_lost``: a job whose worker dies is not silently lost by the broker —
  but it is not blindly re-run either: the first thing a job does is claim ``started`` (SET NX); a redelivered
  job finds it taken and reports itself failed as interrupted, so the orchestrator stays the one who decides.
* heartbeats: a thread refreshes a short-lived key while the job runs; the orchestrator fails a started job
  whose heartbeat expired (kill -9, power loss, network split) instead of waiting for it forever.
* cancellation: a key the job polls between training steps and deploy steps; the training child is stopped.
* the solo pool: the job runs in the worker process itself, so killing the worker kills the job (its trainer
  child dies with it), and one worker runs exactly one job at a time, taking the next only when it is done
  (prefetch 1): jobs of every community wait in one queue, first come first served, and several workers (GPU
  hosts) on the same queue each take one.
* a job names its community, and its candidate tag must be of that community's lineage (validate_job): a job
  signed for one community can never create or delete another community's tags.
* trust nothing in Redis (it has no authentication in the documented deployment): a job must carry the bot's
  HMAC (worker/job.py :class:`SignedJob`, the shared ``worker_job_secret``), then pass the worker's own settings
  (:class:`WorkerPolicy`: base model allow-list, tag form, limits on every number, paths, its own Ollama), then
  name a candidate tag Ollama does not have. A refused job gets one log line and nothing else: no event on the
  run it names (whoever wrote it may not speak for that run), no claim, no directory, nothing in Ollama.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from pathlib import Path
from typing import Any

from data.errors import LoraloopError
from trainer.progress import CancelledEvent, FailedEvent, ProgressEvent
from worker.job import (
    JobRefused,
    JobSpec,
    WorkerPolicy,
    job_dir,
    open_signed_job,
    refuse_in_ollama,
    run_job,
    stamped,
    validate_job,
)
from worker.settings import WorkerSettings, redact_text, redact_url

TASK = "loraloop.retrain"
QUEUE = "loraloop"
KEEP_S = 7 * 86400
log = logging.getLogger("loraloop.worker")


def keys(run_id: int) -> dict[str, str]:
    prefix = f"loraloop:job:{run_id}:"
    return {name: prefix + name for name in ("events", "heartbeat", "started", "cancel")}


def make_celery(redis_url: str, *, policy: WorkerPolicy | None = None) -> Any:
    """The Celery app; ``policy`` (a worker's) is needed only by the side that runs jobs."""
    from celery import Celery

    app = Celery("loraloop", broker=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json", accept_content=["json"], task_default_queue=QUEUE, task_ignore_result=True,
        task_acks_late=True, task_reject_on_worker_lost=True,
        # One job at a time per worker, and none held back while it trains (prefetch 1 with late acks: the job
        # running is the one reserved): every community's jobs share the queue, first come first served, and a
        # second worker (another GPU host) takes the next one meanwhile.
        worker_prefetch_multiplier=1, worker_concurrency=1,
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        # A job may train for hours: Redis must not hand an unacknowledged one to another worker meanwhile.
        broker_transport_options={"visibility_timeout": 24 * 3600},
    )

    @app.task(name=TASK, bind=True, acks_late=True)  # type: ignore[untyped-decorator]  # celery has no types
    def retrain(task: Any, spec_json: Any = None, *args: Any, **kwargs: Any) -> None:
        import redis

        if policy is None:
            raise RuntimeError("this Celery app only sends jobs: make_celery(..., policy=...) runs them")
        if args or kwargs:
            log.error("job refused: the task takes exactly one argument, the signed job's JSON")
            return
        r = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
        try:
            accept_job(r, spec_json, str(task.request.id), policy)
        finally:
            r.close()

    return app


def accept_job(r: Any, signed_json: Any, task_id: str, policy: WorkerPolicy) -> None:
    """Verify and validate a job taken from Redis, then run it. A refused job touches nothing: one log line."""
    try:
        spec_json = open_signed_job(signed_json, policy.job_secret)
    except JobRefused as exc:
        log.error("job refused: %s", redact_text(str(exc)))  # unsigned: even its run id means nothing
        return
    try:
        spec = validate_job(spec_json, policy)
        workdir = job_dir(policy, spec.run_id, task_id)
        asyncio.run(_refuse_in_ollama(spec, policy.ollama_host))
    except JobRefused as exc:
        run_id = _run_id_of(spec_json)
        log.error("job %s refused: %s", run_id if run_id is not None else "(no valid run id)", redact_text(str(exc)))
        return
    run_job_here(r, spec, task_id, workdir, policy.ollama_host, policy.llama_cpp_dir)


async def _refuse_in_ollama(spec: JobSpec, ollama_host: str) -> None:
    from deploy.ollama import OllamaClient, OllamaError

    async with OllamaClient(ollama_host, timeout=30) as client:
        try:
            await refuse_in_ollama(client, spec)
        except OllamaError as exc:  # not a refusal: the job runs, and its own first check fails it with the reason
            log.warning("job %s: cannot ask Ollama about its tags before starting: %s", spec.run_id,
                        redact_text(str(exc)))


def _run_id_of(spec_json: str) -> int | None:
    try:
        run_id = json.loads(spec_json)["run_id"]
    except (ValueError, TypeError, KeyError):
        return None
    return run_id if type(run_id) is int and run_id > 0 else None


def _emit(r: Any, run_id: int, event: ProgressEvent) -> None:
    k = keys(run_id)
    r.rpush(k["events"], stamped(event))
    r.expire(k["events"], KEEP_S)


def run_job_here(r: Any, spec: JobSpec, task_id: str, workdir: Path, ollama_host: str,
                 llama_cpp_dir: Path | None = None) -> None:
    """Run a validated job in ``workdir`` (see :func:`accept_job`), with its heartbeat and claim in Redis."""
    k = keys(spec.run_id)

    def emit(event: ProgressEvent) -> None:
        _emit(r, spec.run_id, event)

    ttl = max(1, round(spec.heartbeat_ttl_s))
    # The heartbeat first: the orchestrator reads "started without a heartbeat" as a dead worker.
    r.set(k["heartbeat"], socket.gethostname(), ex=ttl)
    if not r.set(k["started"], task_id, nx=True, ex=KEEP_S):
        r.delete(k["heartbeat"])
        emit(FailedEvent(reason="the job was interrupted (its worker stopped) and is not re-run automatically; "
                                "propose a new retrain"))
        return
    if r.exists(k["cancel"]):
        emit(CancelledEvent(reason="cancelled before a worker picked it up"))
        r.delete(k["heartbeat"])
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                r.set(k["heartbeat"], socket.gethostname(), ex=ttl)
            except Exception as exc:  # Redis blips: the next beat retries; a long outage fails the job
                log.warning("heartbeat for run %s failed: %s", spec.run_id, redact_text(str(exc)))
            stop.wait(ttl / 4)

    heart = threading.Thread(target=beat, name=f"heartbeat-{spec.run_id}", daemon=True)
    heart.start()
    try:
        asyncio.run(run_job(spec, workdir, emit, lambda: bool(r.exists(k["cancel"])), ollama_host=ollama_host,
                            llama_cpp_dir=llama_cpp_dir))
    finally:
        stop.set()
        heart.join(timeout=5)
        r.delete(k["heartbeat"])


class WorkerCannotStart(LoraloopError):
    """The worker cannot serve jobs; the message is one line that says why."""


class RedisUnreachable(WorkerCannotStart):
    """The worker cannot reach its broker; the message (credentials redacted) says where and why."""


def require_job_secret(settings: WorkerSettings) -> None:
    """A worker without ``worker_job_secret`` could verify no job: it does not start."""
    if settings.worker_job_secret is None:
        raise WorkerCannotStart("LORALOOP_WORKER_JOB_SECRET is not set: a worker runs only jobs signed with the "
                                "secret its bot shares (the same value on both hosts, e.g. `openssl rand -hex 32`)")


def check_redis(redis_url: str) -> None:
    """Fail fast with one clear line instead of Celery's endless reconnect loop."""
    import redis

    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except (redis.RedisError, OSError) as exc:
        raise RedisUnreachable(f"cannot reach Redis at {redact_url(redis_url)}: {redact_text(str(exc))}") from None


def run_worker(settings: WorkerSettings, loglevel: str = "INFO") -> None:
    """Block serving jobs (``loraloop worker``, ``python -m worker``); :class:`WorkerCannotStart` without a job
    secret."""
    require_job_secret(settings)
    app = make_celery(settings.redis_url, policy=WorkerPolicy.for_worker(settings))
    app.worker_main(["worker", "--pool=solo", "--concurrency=1", f"--loglevel={loglevel}", "-Q", QUEUE,
                     "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "-n", f"loraloop@{socket.gethostname()}"])
