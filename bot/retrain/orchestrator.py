"""The retrain loop as the bot runs it: propose → expert votes → snapshot → dispatch → follow the job → switch.

Every decision is a state change of one RetrainRun row (data/runs.py); this object only sequences them and
tells a :class:`Notifier` (the Discord cog, or nothing on the command line) what happened. Failures end the
run with a reason and never touch the active model: the bot keeps answering with what it has.

An orchestrator works for one community: its store is scoped to it (data/communities.py), so it proposes from
that community's approved examples, names its versions in that community's lineage and switches that community's
active model only. The bot holds one per community (:func:`orchestrators`), all handing jobs to one dispatcher,
whose queue is first come, first served across communities.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from bot.retrain.dispatch import TERMINAL_EVENTS, Dispatcher, DispatchError
from bot.retrieval import Retriever, gate_with_retrieval
from bot.settings import Settings, redact_text
from data import quality, runs
from data.errors import LoraloopError, NotFound, RunStateError, StoreError
from data.models import RUN_DISPATCHED, RetrainRun, VersionStatus, utcnow
from data.runs import VoteOutcome
from data.snapshot import MANIFEST_FILE, parse_manifest
from data.store import Store
from deploy.config import DeployConfig
from deploy.gate import GateResult
from deploy.ollama import OllamaClient
from deploy.pipeline import conclude_candidate
from deploy.promotion import fail_interrupted, forget, lineage, switch_to
from trainer.config import TrainConfig
from trainer.progress import (
    CancelledEvent,
    EvalEvent,
    FailedEvent,
    JobStage,
    ResultEvent,
    RunProgress,
    StageEvent,
    StartedEvent,
    StepEvent,
    UploadEvent,
    parse_event,
)
from worker.job import JobSpec

log = logging.getLogger("loraloop.retrain")

# The run state (data/models.py RUN_STATES) a job's reported stage moves its run to.
RUN_STATE_OF_STAGE: dict[JobStage, str] = {"training": "training", "converting": "converting",
                                           "registering": "registering", "evaluating": "evaluating"}


class NothingToTrain(StoreError):
    """Not enough new approved examples for a retrain."""


class Notifier(Protocol):
    async def proposed(self, run: RetrainRun) -> None: ...
    async def reminder(self, run: RetrainRun) -> None: ...
    async def progress(self, run: RetrainRun) -> None: ...
    async def finished(self, run: RetrainRun, loss_png: bytes | None) -> None: ...


class NullNotifier:
    async def proposed(self, run: RetrainRun) -> None: ...
    async def reminder(self, run: RetrainRun) -> None: ...
    async def progress(self, run: RetrainRun) -> None: ...
    async def finished(self, run: RetrainRun, loss_png: bytes | None) -> None: ...


class Orchestrator:
    def __init__(self, store: Store, settings: Settings, dispatcher: Dispatcher, client: OllamaClient,
                 notifier: Notifier | None = None, *, poll_s: float = 0.5, progress_every_s: float = 1.0,
                 retriever: Retriever | None = None) -> None:
        self.store, self.settings, self.dispatcher, self.client = store, settings, dispatcher, client
        self.retriever = retriever  # the bot's index, reused for the gate's with-retrieval table
        self.notifier: Notifier = notifier or NullNotifier()
        self.poll_s, self.progress_every_s = poll_s, progress_every_s
        self._tasks: dict[int, asyncio.Task[None]] = {}

    @property
    def community(self) -> str:
        return self.store.community or ""

    # ---- proposals ----------------------------------------------------------------------------------------

    async def summary(self) -> dict[str, Any]:
        """The numbers experts see on a proposal."""
        stats = await self.store.dataset_stats()
        active = await self.store.active_model_version()
        return {
            "new_examples": stats.new_approved_since_active,
            "approved_total": stats.by_status.get("approved", 0),
            "sources": {k: v for k, v in stats.approved_by_source.items() if v},
            "agreement": stats.agreement,
            "ratings": stats.ratings,
            "base_model": self.settings.base_model,
            "ollama_base": self.settings.ollama_base,
            "active": active.tag if active else None,
            "hyperparameters": self.plan(),
        }

    def plan(self) -> dict[str, Any]:
        """The trainer settings a run will use (the trainer picks epochs from the data size when unset)."""
        cfg = TrainConfig(**self.settings.retrain_train)
        keys = ("learning_rate", "epochs", "max_steps", "batch_size", "grad_accum", "lora_r", "lora_alpha",
                "max_length", "qlora")
        return {k: getattr(cfg, k) for k in keys}

    async def propose(self, *, by: int | None = None, guild_id: int | None = None, channel_id: int | None = None,
                      min_new: int = 1, origin: str = "discord") -> RetrainRun:
        """Open a proposal (raises NothingToTrain, or RunInProgress when one is open) and announce it.
        ``origin`` (discord, scheduler, command line) is shown when there is no proposing user."""
        summary = {**await self.summary(), "origin": origin}
        if summary["new_examples"] < min_new:
            raise NothingToTrain(f"{summary['new_examples']} new approved examples since the active model; "
                                 f"a retrain needs at least {min_new}")
        if guild_id is None and channel_id is None:
            guild_id, channel_id = self._default_channel()
        expires = utcnow() + timedelta(hours=self.settings.retrain_expiry_h)
        run = await runs.propose_run(self.store, summary=summary, proposed_by=by, guild_id=guild_id,
                                     channel_id=channel_id, expires_at=expires)
        log.info("retrain #%d proposed (%d new examples)", run.id, summary["new_examples"])
        await self._notify("proposed", run)
        return await runs.get_run(self.store, run.id)

    async def maybe_propose(self) -> RetrainRun | None:
        """The scheduled check: propose when enough new approved data has gathered in this community (its own
        threshold, settings.retrain_schedule) and nothing is open."""
        if await runs.open_run(self.store) is not None:
            return None
        _cron, min_new = self.settings.retrain_schedule(self.community)
        try:
            return await self.propose(min_new=min_new, origin="scheduler")
        except LoraloopError as exc:
            log.info("no retrain proposed in %s: %s", self.community, exc)
            return None

    async def vote(self, run_id: int, user_id: int, approve: bool) -> tuple[VoteOutcome, bool]:
        """An expert's vote on a proposal; returns the tally and whether this vote started the run."""
        outcome = await runs.vote_run(self.store, run_id, user_id, approve=approve)
        if not approve:
            run = await runs.transition(self.store, run_id, "rejected", expect="proposed",
                                        reason=f"rejected by expert {user_id}")
            await self._notify("finished", run, None)
            return VoteOutcome(run, outcome.approvals, outcome.rejections), False
        if len(outcome.approvals) < self.settings.retrain_quorum:
            return outcome, False
        try:  # the database decides which of two simultaneous quorum votes starts the run
            run = await runs.transition(self.store, run_id, "approved", expect="proposed")
        except RunStateError:
            return outcome, False
        self.start(run.id)
        return VoteOutcome(run, outcome.approvals, outcome.rejections), True

    async def expire_due(self) -> None:
        """Housekeeping: expire stale proposals, remind experts of those about to expire."""
        expired, remind = await runs.proposals_due(self.store, utcnow(),
                                                   timedelta(hours=self.settings.retrain_reminder_h))
        for run in await runs.runs_in(self.store, ("proposed",)):
            if run.message_id is None and run.channel_id is not None and run not in expired:
                await self._notify("proposed", run)  # proposed from the command line: announce it here
        for run in expired:
            with contextlib.suppress(RunStateError):
                run = await runs.transition(self.store, run.id, "expired", expect="proposed", reason=(
                    f"no quorum of {self.settings.retrain_quorum} approvals within "
                    f"{self.settings.retrain_expiry_h:g} h"))
                await self._notify("finished", run, None)
        for run in remind:
            run = await runs.set_run(self.store, run.id, reminded_at=utcnow())
            await self._notify("reminder", run)

    # ---- runs ---------------------------------------------------------------------------------------------

    def start(self, run_id: int) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._execute(run_id), name=f"retrain-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(run_id, None) if self._tasks.get(run_id) is _t else None)
        return task

    async def wait(self, run_id: int, limit_s: float | None = None) -> RetrainRun:
        """Until the run's job has ended (for the command line and tests)."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), limit_s)
        return await runs.get_run(self.store, run_id)

    async def _execute(self, run_id: int) -> None:
        try:
            ref = await self._dispatch(run_id)
            await self._follow(run_id, ref)
        except asyncio.CancelledError:
            raise
        except DispatchError as exc:
            await self._fail(run_id, f"{exc}. The approved data is kept: propose again once this is fixed.")
        except Exception as exc:
            log.exception("retrain #%d crashed", run_id)
            await self._fail(run_id, f"unexpected error in the orchestrator: {exc!r}")

    async def _dispatch(self, run_id: int) -> str:
        s = self.settings
        await fail_interrupted(self.store, self.client, s.model_name)
        out = Path(s.home) / "snapshots" / f"run-{run_id}-{int(time.time())}"
        path = str((await self.store.create_snapshot(out, s.eval_fraction)).path)
        files = await asyncio.to_thread(_read_files, Path(path))
        manifest = parse_manifest(files[MANIFEST_FILE])  # as the job will read it
        if not manifest.counts.train:
            raise DispatchError("the snapshot has no training examples (every approved example fell in eval)")
        active = await self.store.active_model_version()
        config = self.deploy_config()
        train = {**s.retrain_train}
        train.setdefault("system_prompt", s.system_prompt or None)  # must match what the bot serves
        if s.general_prompts_file is not None and "general_prompts" not in train:
            # The worker may not read files named by a job: the retention set travels inside it.
            from data.general_prompts import load_general_prompts  # torch-free

            try:
                train["general_prompts"] = list(load_general_prompts(s.general_prompts_file).prompts)
            except ValueError as exc:
                raise DispatchError(f"general_prompts_file: {exc}") from None
        version = await self.store.create_model_version(
            name=lineage(self.store, s.model_name), base_model=s.base_model, ollama_base=s.ollama_base,
            snapshot_sha256=manifest.sha256, snapshot_path=path, hyperparams=self.plan())
        await runs.transition(self.store, run_id, "snapshotted", expect="approved", snapshot_sha256=manifest.sha256,
                              snapshot_path=path, model_version_id=version.id)
        spec = JobSpec(run_id=run_id, community=self.community, tag=version.tag, base_model=s.base_model,
                       ollama_host=s.ollama_host, deploy=config, snapshot_sha256=manifest.sha256, snapshot_files=files,
                       train=TrainConfig.model_validate(train), active_tag=active.tag if active else None,
                       time_limit_s=s.worker_time_limit_s, heartbeat_ttl_s=s.worker_heartbeat_timeout_s)
        ref = await self.dispatcher.submit(spec)
        run = await runs.set_run(self.store, run_id, dispatcher=self.dispatcher.name, job_ref=ref,
                                 progress=RunProgress(stage="queued", tag=version.tag).stored())
        log.info("retrain #%d of %s dispatched to %s as %s", run_id, self.community, self.dispatcher.name, ref)
        await self._notify("progress", run)
        return ref

    def deploy_config(self) -> DeployConfig:
        return self.settings.deploy_config()

    async def _follow(self, run_id: int, ref: str, start: int = 0) -> None:
        """Poll the job's events until it ends; a job that dies without a word fails the run."""
        index, last_write, lost_since = start, 0.0, None
        progress = RunProgress.model_validate((await runs.get_run(self.store, run_id)).progress or {})
        patience = max(30.0, self.settings.worker_heartbeat_timeout_s)
        while True:
            try:
                events = await self.dispatcher.events(run_id, ref, index)
                lost_since = None
            except Exception as exc:  # Redis restarting, a full disk…: the job may well be fine; wait a while
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > patience:
                    await self._fail(run_id, f"lost contact with the {self.dispatcher.name} dispatcher for "
                                             f"{patience:g} s: {exc}")
                    return
                log.warning("retrain #%d: reading the job's events failed (%s); retrying", run_id,
                            redact_text(str(exc)))
                await asyncio.sleep(max(self.poll_s, 1.0))
                continue
            for raw in events:
                index += 1
                try:
                    event = parse_event(raw)
                except ValidationError as exc:  # a worker of another version, or a forged event: stop the job
                    with contextlib.suppress(Exception):
                        await self.dispatcher.cancel(run_id, ref)
                    await self._fail(run_id, f"the job sent an event this bot cannot read ({_first_error(exc)}); "
                                             "are the worker and the bot the same loraloop version?")
                    return
                if isinstance(event, ResultEvent | FailedEvent | CancelledEvent):
                    await self._conclude(run_id, raw)
                    return
                if isinstance(event, StageEvent):
                    progress = RunProgress(stage=event.stage, tag=progress.tag)
                    with contextlib.suppress(RunStateError):
                        await runs.transition(self.store, run_id, RUN_STATE_OF_STAGE[event.stage])
                    last_write = 0.0  # a stage change is always shown
                elif isinstance(event, StepEvent):
                    progress = _updated(progress, step=event.step, total=event.total, epoch=event.epoch,
                                        loss=event.loss, eta_s=event.eta_s)
                elif isinstance(event, EvalEvent):
                    progress = _updated(progress, step=event.step, total=event.total, epoch=event.epoch,
                                        eval_loss=event.eval_loss)
                elif isinstance(event, UploadEvent):
                    progress = progress.model_copy(update={"uploaded": event.sent, "upload_total": event.total})
                elif isinstance(event, StartedEvent):
                    progress = progress.model_copy(update={"host": event.host})
                if time.monotonic() - last_write >= self.progress_every_s:
                    run = await runs.set_run(self.store, run_id, progress=progress.stored())
                    last_write = time.monotonic()
                    await self._notify("progress", run)
            if not events:
                if await self.dispatcher.alive(run_id, ref) is False:
                    if await self.dispatcher.events(run_id, ref, index):
                        continue  # it finished between the two reads
                    await self.dispatcher.cancel(run_id, ref)
                    await self._fail(run_id, "the training job stopped without reporting back (the worker was "
                                             "killed or crashed); the previous model keeps answering")
                    return
                await asyncio.sleep(self.poll_s)

    async def _conclude(self, run_id: int, event: dict[str, Any]) -> None:
        """The job's last event (checked by :meth:`_follow`): a failure, a cancellation, or the judged candidate."""
        ended = parse_event(event)
        if isinstance(ended, FailedEvent):
            return await self._fail(run_id, ended.reason or "the job failed")
        if isinstance(ended, CancelledEvent):
            await self._end(run_id, "cancelled", ended.reason or "cancelled", version_status="failed")
            return
        assert isinstance(ended, ResultEvent)
        run = await runs.get_run(self.store, run_id)
        gate = GateResult.from_dict(ended.gate)
        gate.reason = redact_text(gate.reason)  # stored and shown in Discord: a job's texts may carry a password
        png = base64.b64decode(ended.loss_png) if ended.loss_png else None
        if png:
            (Path(self.settings.home) / "runs").mkdir(parents=True, exist_ok=True)
            (Path(self.settings.home) / "runs" / f"run-{run_id}-loss.png").write_bytes(png)
        result: dict[str, Any] = {"table": ended.table, "metrics": ended.metrics, "probes": ended.probes,
                                  "loss_curve": ended.loss_curve, "bytes_uploaded": ended.bytes_uploaded}
        result.update(passed=gate.passed, reason=gate.reason, scores=gate.scores)
        version = await self.store.update_model_version(_version_id(run), status="registered", in_ollama=True,
                                                        artifacts=ended.artifacts)
        await runs.set_run(self.store, run_id, result=result)
        # The job registered and judged the candidate; the rest is deploy/pipeline.py's one promotion path.
        config = self.deploy_config()
        try:
            done = await conclude_candidate(self.store, self.client, version.tag, gate, model_name=config.model_name,
                                            keep_versions=config.keep_versions, train_metrics=ended.metrics,
                                            manual=self.settings.retrain_promotion == "manual",
                                            inform=gate_with_retrieval(self.settings, self.store, self.client,
                                                                       self.retriever))
        except LoraloopError as exc:
            return await self._fail(run_id, f"could not switch to {version.tag}: {exc}")
        if gate.with_retrieval:  # the job's table (its DPO lines too) gains the with-retrieval lines measured now
            table = "\n".join([ended.table or "", *gate.retrieval_lines()]).strip("\n")
            await runs.set_run(self.store, run_id, result={**result, "table": table})
        if done.status == "rejected":
            run = await runs.transition(self.store, run_id, "rejected",
                                        reason=f"the evaluation gate refused {version.tag}: {gate.reason}")
        elif done.status == "evaluated":
            run = await runs.transition(self.store, run_id, "evaluated")
        else:
            run = await runs.transition(self.store, run_id, "promoted", reason=None)
            log.info("retrain #%d: now answering with %s", run_id, version.tag)
        await self._notify("finished", run, png)

    async def _promote(self, run_id: int) -> RetrainRun:
        """An expert's Promote on an evaluated candidate: the switch and retention of the one promotion path."""
        run = await runs.get_run(self.store, run_id)
        version = await self.store.get_model_version(_version_id(run))
        config = self.deploy_config()
        try:
            await switch_to(self.store, self.client, version.tag, model_name=config.model_name,
                            keep_versions=config.keep_versions)
        except LoraloopError as exc:
            await self._fail(run_id, f"could not switch to {version.tag}: {exc}")
            return await runs.get_run(self.store, run_id)
        run = await runs.transition(self.store, run_id, "promoted", reason=None)
        log.info("retrain #%d: now answering with %s", run_id, version.tag)
        await self._notify("finished", run, None)
        return run

    async def decide_promotion(self, run_id: int, user_id: int, approve: bool) -> RetrainRun:
        """Manual promotion: an expert promotes or discards an evaluated candidate."""
        if approve and (why := await quality.promotion_refusal(self.store, run_id, self.settings.retrain_quorum)):
            raise RunStateError(f"Not promoted: {why}.")  # no path promotes past the experts' comparison
        await runs.vote_run(self.store, run_id, user_id, approve=approve, stage="promotion")
        if approve:
            return await self._promote(run_id)
        return await self._end(run_id, "rejected", f"discarded by expert {user_id} after the evaluation",
                               version_status="rejected", expect="evaluated")

    async def cancel(self, run_id: int, by: int | None = None) -> RetrainRun:
        """Stop a proposal or a run (admins). The job is asked to stop; the active model is untouched."""
        run = await runs.get_run(self.store, run_id)
        reason = f"cancelled by {by}" if by else "cancelled"
        if run.job_ref and run.state in RUN_DISPATCHED:
            with contextlib.suppress(Exception):
                await self.dispatcher.cancel(run_id, run.job_ref)
        task = self._tasks.pop(run_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return await self._end(run_id, "cancelled", reason, version_status="failed")

    async def recover(self) -> None:
        """After a restart: reattach to jobs still running, fail runs whose job is gone (never leave one hanging)."""
        for run in await runs.runs_in(self.store, ("approved", *RUN_DISPATCHED)):
            if run.id in self._tasks:
                continue
            if run.job_ref and run.dispatcher == self.dispatcher.name:
                alive = await self.dispatcher.alive(run.id, run.job_ref)
                events = await self.dispatcher.events(run.id, run.job_ref, 0)
                if alive is not False or any(e.get("event") in TERMINAL_EVENTS for e in events):
                    log.info("retrain #%d: reattaching to %s", run.id, run.job_ref)
                    task = asyncio.get_running_loop().create_task(self._follow_safely(run.id, run.job_ref))
                    self._tasks[run.id] = task
                    continue
                reason = "interrupted: its job stopped while the bot was down"
            else:
                reason = "interrupted: the bot stopped before the job was handed to a worker"
            await self._fail(run.id, reason)

    async def _follow_safely(self, run_id: int, ref: str) -> None:
        try:
            await self._follow(run_id, ref)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("retrain #%d crashed", run_id)
            await self._fail(run_id, f"unexpected error in the orchestrator: {exc!r}")

    async def close(self, *, release_dispatcher: bool = True) -> None:
        """Stop following jobs (they keep running; ``recover`` reattaches) and release the dispatcher (unless
        other communities' orchestrators still share it)."""
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if release_dispatcher:
            await self.dispatcher.close()

    # ---- endings ---------------------------------------------------------------------------------------------

    async def _fail(self, run_id: int, reason: str) -> None:
        await self._end(run_id, "failed", reason, version_status="failed")

    async def _end(self, run_id: int, state: str, reason: str, *, version_status: VersionStatus,
                   expect: str | None = None) -> RetrainRun:
        # Every ending's reason is stored, logged and shown in Discord: exception texts (a job's, a driver's)
        # may carry a connection URL with its password.
        reason = redact_text(reason)
        try:
            run = await runs.transition(self.store, run_id, state, reason=reason, expect=expect)
        except RunStateError:
            return await runs.get_run(self.store, run_id)  # it had ended already
        log.warning("retrain #%d %s: %s", run_id, state, reason)
        if run.model_version_id is not None:
            version = await self.store.get_model_version(run.model_version_id)
            active = await self.store.active_model_version()
            if active is None or active.id != version.id:
                removed = await forget(self.client, version.tag)  # the job may have created it before dying
                await self.store.update_model_version(version.id, status=version_status, failure_reason=reason,
                                                      in_ollama=version.in_ollama and not removed)
        await self._notify("finished", run, None)
        return run

    async def _notify(self, what: str, run: RetrainRun, *args: Any) -> None:
        """Tell the notifier; a Discord hiccup must never break the run."""
        try:
            await getattr(self.notifier, what)(run, *args)
        except Exception:
            log.exception("retrain #%d: notifying %s failed", run.id, what)

    def _default_channel(self) -> tuple[int | None, int | None]:
        """This community's experts channel (settings.experts_channel_of) and its guild."""
        channel = self.settings.experts_channel_of(self.community)
        guild = next((g for g in self.settings.guilds_of(self.community)
                      if self.settings.guilds[g].experts_channel_id == channel), None)
        return (guild, channel) if channel else (None, None)


def orchestrators(store: Store, settings: Settings, dispatcher: Dispatcher, client: OllamaClient,
                  notifier: Notifier | None = None, **options: Any) -> dict[str, Orchestrator]:
    """One orchestrator per configured community (settings.community_names), each on the store scoped to it, all
    sharing ``dispatcher`` (close them with ``release_dispatcher=False``, then the dispatcher once)."""
    return {name: Orchestrator(store.scoped(name), settings, dispatcher, client, notifier, **options)
            for name in settings.community_names()}


def _version_id(run: RetrainRun) -> int:
    """The candidate version a run recorded when it was snapshotted; NotFound for a run without one (never
    snapshotted, or its version deleted since)."""
    if run.model_version_id is None:
        raise NotFound(f"retrain run #{run.id} has no model version")
    return run.model_version_id


def _read_files(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.iterdir()) if p.is_file()}


def _updated(progress: RunProgress, **numbers: float | None) -> RunProgress:
    """``progress`` with the numbers an event reported (one it left out keeps its last value)."""
    return progress.model_copy(update={k: v for k, v in numbers.items() if v is not None})


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(map(str, error['loc'])) or 'event'}: {error['msg']}"
