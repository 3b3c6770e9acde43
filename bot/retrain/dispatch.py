"""Where a retrain job runs. One interface, two implementations:

* :class:`LocalDispatcher` — a child process on this machine (the embedded default; needs the ``ml`` extra
  here), one at a time in the order the jobs were submitted, whichever community they belong to. Events go
  through a file in the job's directory; liveness is the process itself.
* :class:`CeleryDispatcher` — a ``loraloop worker`` on a GPU host, over Redis. The snapshot travels inside
  the task message, signed with the shared ``worker_job_secret`` (worker/job.py SignedJob: a worker runs no
  job without it); events come back on a Redis list; the worker refreshes a heartbeat key while it works. Every
  community's jobs go to the one queue, and each worker takes one job at a time from it (worker/celery_app.py).

Either way the queue is first come, first served across communities; each community has at most one open run
(data/runs.py), so one community's backlog never holds another's approved run back by more than one job per
community ahead of it.

The orchestrator only polls: ``events(start)`` returns what happened since, ``alive()`` says whether the job
can still report (True), has not started yet (None: queued), or is gone (False).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from bot.settings import Settings, redact_text, redact_url
from data.errors import LoraloopError
from trainer.progress import FailedEvent
from worker.job import JobSpec, SignedJob, WorkerPolicy, stamped

TERMINAL_EVENTS = ("result", "failed", "cancelled")


class DispatchError(LoraloopError):
    """The job could not be handed over; the message says why (nothing was started)."""


class Dispatcher(Protocol):
    name: str

    async def submit(self, spec: JobSpec) -> str:
        """Start (or queue) the job; returns a reference stored on the run. Raises DispatchError."""

    async def events(self, run_id: int, ref: str, start: int) -> list[dict[str, Any]]:
        """Events from index ``start`` on."""

    async def alive(self, run_id: int, ref: str) -> bool | None:
        """True: running; None: queued, not started; False: gone."""

    async def cancel(self, run_id: int, ref: str) -> None:
        """Ask the job to stop (it reports ``cancelled``); a queued job is dropped when it is picked up."""

    async def close(self) -> None: ...


# ---- local ------------------------------------------------------------------------------------------------


class LocalDispatcher:
    """Each job is ``python -m worker.job DIR`` with DIR under ``home``; the reference is DIR. Jobs run one at a
    time (one GPU), first submitted first; a queued job's DIR has no ``pid`` file yet.

    The child checks its spec as a worker does, against DIR/policy.json: ``policy`` when given (from the
    settings, see :func:`make_dispatcher`), else one that allows exactly what the spec asks for (this process
    wrote the spec; the check then still covers types, paths, the snapshot and the tag)."""

    name = "local"

    def __init__(self, home: Path, policy: WorkerPolicy | None = None, *, poll_s: float = 0.5) -> None:
        self.home = Path(home)
        self.policy = policy
        self.poll_s = poll_s
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._queue: list[str] = []  # workdirs waiting, in submission order
        self._runner: asyncio.Task[None] | None = None

    def _policy_for(self, spec: JobSpec) -> WorkerPolicy:
        if self.policy is not None:
            return self.policy
        return WorkerPolicy(home=self.home.resolve(), model_name=spec.deploy.model_name,
                            base_models=(spec.base_model,), ollama_host=spec.ollama_host,
                            max_time_limit_s=spec.time_limit_s)

    async def submit(self, spec: JobSpec) -> str:
        workdir = (self.home / f"run-{spec.run_id}-{uuid.uuid4().hex[:8]}").resolve()
        try:
            workdir.mkdir(parents=True)
            (workdir / "spec.json").write_text(spec.to_json(), encoding="utf-8")
            (workdir / "policy.json").write_text(self._policy_for(spec).to_json(), encoding="utf-8")
            (workdir / "events.jsonl").touch()
        except OSError as exc:
            raise DispatchError(redact_text(f"cannot prepare the local training job in {workdir}: {exc}")) from exc
        self._enqueue(str(workdir))
        return str(workdir)

    def _enqueue(self, ref: str) -> None:
        if ref not in self._queue:
            self._queue.append(ref)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run_queue(), name="local-jobs")

    async def _run_queue(self) -> None:
        """Start the queued jobs one after the other, each once the previous one (or one a bot before a restart
        started, still running) has exited."""
        while self._queue:
            ref = self._queue[0]
            while True:  # polled: a job a bot before a restart started is no child of this process
                if not await asyncio.to_thread(self._running):
                    break
                await asyncio.sleep(self.poll_s)
            if ref in self._queue and not (Path(ref) / "cancel").exists():
                try:
                    child = await self._start(Path(ref))
                except OSError as exc:
                    _append_event(Path(ref), FailedEvent(reason=redact_text(
                        f"cannot start the local training process in {ref}: {exc}")))
                else:
                    await child.wait()
            with contextlib.suppress(ValueError):
                self._queue.remove(ref)

    def _running(self) -> bool:
        """Is a job of this home running (started here, or by a bot before a restart)?"""
        if any(child.returncode is None for child in self._children.values()):
            return True
        return any(_pid_runs_job(d) for d in self.home.glob("run-*") if (d / "pid").is_file())

    async def _start(self, workdir: Path) -> asyncio.subprocess.Process:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.job", str(workdir), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=open(workdir / "stderr.log", "wb"),  # noqa: SIM115, ASYNC230
            start_new_session=True)  # survives a bot restart; reattached through its directory
        (workdir / "pid").write_text(str(child.pid), encoding="utf-8")
        self._children[str(workdir)] = child
        return child

    async def events(self, run_id: int, ref: str, start: int) -> list[dict[str, Any]]:
        path = Path(ref) / "events.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines[start:]:
            try:
                out.append(json.loads(line))
            except ValueError:
                break  # a line being written: read it next time
        return out

    async def alive(self, run_id: int, ref: str) -> bool | None:
        child = self._children.get(ref)
        if child is not None:
            return child.returncode is None
        if ref in self._queue:
            return None
        workdir = Path(ref)
        if (workdir / "spec.json").is_file() and not (workdir / "pid").exists() and not (workdir / "cancel").exists():
            self._enqueue(ref)  # queued when the bot stopped: it waits its turn again
            return None
        return _pid_runs_job(workdir)

    async def cancel(self, run_id: int, ref: str) -> None:
        workdir = Path(ref)
        with contextlib.suppress(OSError):
            (workdir / "cancel").touch()
        with contextlib.suppress(ValueError):
            if self._queue.index(ref) > 0:  # not started: dropped (the head may be starting right now)
                self._queue.remove(ref)
        child = self._children.get(ref)
        pid = child.pid if child is not None else _read_pid(workdir)
        if pid and (child is not None or _pid_runs_job(workdir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    async def close(self) -> None:
        if self._runner is not None:  # queued jobs stay queued on disk; the next start picks them up
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for child in self._children.values():  # reap; running jobs keep running (their own session)
            if child.returncode is not None:
                await child.wait()


def _append_event(workdir: Path, event: FailedEvent) -> None:
    with contextlib.suppress(OSError), (workdir / "events.jsonl").open("a", encoding="utf-8") as f:
        f.write(stamped(event) + "\n")


def _read_pid(workdir: Path) -> int | None:
    try:
        return int((workdir / "pid").read_text())
    except (OSError, ValueError):
        return None


def _pid_runs_job(workdir: Path) -> bool:
    """After a restart: is the recorded pid still this job's process (not a reused pid, not a zombie)?"""
    pid = _read_pid(workdir)
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and str(workdir).encode() in cmdline


# ---- celery over redis --------------------------------------------------------------------------------------


class CeleryDispatcher:
    """Jobs for ``loraloop worker`` processes; the reference is the Celery task id."""

    name = "celery"

    def __init__(self, redis_url: str, job_secret: SecretStr | None) -> None:
        import redis.asyncio as aioredis

        self.redis_url = redis_url
        self.job_secret = job_secret
        self.redis = aioredis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
        self._app: Any = None

    def _celery(self) -> Any:
        if self._app is None:
            from worker.celery_app import make_celery

            self._app = make_celery(self.redis_url)
        return self._app

    async def ping(self) -> None:
        import redis.exceptions

        try:
            await self.redis.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise DispatchError(f"cannot reach Redis at {redact_url(self.redis_url)}: "
                                f"{redact_text(str(exc))}") from None

    async def submit(self, spec: JobSpec) -> str:
        if self.job_secret is None:
            raise DispatchError("LORALOOP_WORKER_JOB_SECRET is not set: workers run only jobs signed with it (set "
                                "the same value for the bot and its workers, e.g. `openssl rand -hex 32`)")
        await self.ping()
        from worker import celery_app as worker

        task_id = f"loraloop-run-{spec.run_id}-{uuid.uuid4().hex[:8]}"
        signed = SignedJob.sign(spec, self.job_secret).to_json()
        await self.redis.delete(*worker.keys(spec.run_id).values())
        try:
            await asyncio.to_thread(self._celery().send_task, worker.TASK, args=[signed], task_id=task_id,
                                    queue=worker.QUEUE, retry=False)
        except Exception as exc:  # kombu raises its own and OS errors; all mean "not handed over"
            raise DispatchError(f"cannot queue the job on Redis at {redact_url(self.redis_url)}: "
                                f"{redact_text(str(exc))}") from None
        return task_id

    async def events(self, run_id: int, ref: str, start: int) -> list[dict[str, Any]]:
        from worker import celery_app as worker

        raw = await self.redis.lrange(worker.keys(run_id)["events"], start, -1)
        return [json.loads(r) for r in raw]

    async def alive(self, run_id: int, ref: str) -> bool | None:
        from worker import celery_app as worker

        keys = worker.keys(run_id)
        if await self.redis.exists(keys["heartbeat"]):
            return True
        if not await self.redis.exists(keys["started"]):
            return None  # still queued: waiting for a worker
        return False

    async def cancel(self, run_id: int, ref: str) -> None:
        from worker import celery_app as worker

        await self.redis.set(worker.keys(run_id)["cancel"], "1", ex=7 * 86400)

    async def close(self) -> None:
        await self.redis.aclose()


def make_dispatcher(settings: Settings) -> Dispatcher:
    if settings.dispatcher == "celery":
        return CeleryDispatcher(settings.redis_url, settings.worker_job_secret)
    return LocalDispatcher(Path(settings.home) / "jobs", WorkerPolicy.for_local(settings))
