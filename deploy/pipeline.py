"""Deploy a trained adapter: register it as the next version, judge it, and make it active if it passes.

Read top to bottom, :func:`deploy` is the whole story: a version row in the store → the candidate registered in
Ollama (deploy/candidate.py ``register_candidate``) → the gate against what answers now (``judge_candidate``) →
:func:`conclude_candidate`, the one promotion path it shares with the retrain loop: the verdict stored, then the
candidate rejected (its tag deleted) or the active pointer switched and retention applied (deploy/promotion.py).
The switch happens only after every check passed; any failure marks the version failed with its reason and leaves
the active model as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from data.errors import LoraloopError
from data.snapshot import read_snapshot
from deploy.candidate import judge_candidate, register_candidate
from deploy.config import DeployConfig
from deploy.gate import GateResult, WithRetrieval
from deploy.ollama import OllamaClient
from deploy.promotion import fail_interrupted, forget, lineage, switch_to
from deploy.registration import PathMemory
from deploy.run_files import adapter_hyperparameters, run_record, trained_metrics, trained_retention

if TYPE_CHECKING:  # deploy/ imports no database stack at module level: the GPU host has none
    from data.store import Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DeployResult:
    """What happened to one deploy; ``status`` is the version's final status in the store."""

    version: int
    tag: str
    promoted: bool
    status: str
    reason: str
    gate: GateResult | None = None
    bytes_uploaded: int = 0
    timings: dict[str, float] = field(default_factory=dict)


Event = Callable[[str, dict[str, Any]], Awaitable[None] | None]
# An information-only measurement beside the gate's verdict (the bot's retrieval table): tag, gate → its record.
Inform = Callable[[str, GateResult], Awaitable[WithRetrieval]]


async def deploy(
    adapter_dir: Path,
    *,
    store: Store,
    client: OllamaClient,
    config: DeployConfig,
    base_dir: Path | None = None,
    snapshot_dir: Path | None = None,
    on_event: Event | None = None,
    memory: PathMemory | None = None,
    inform: Inform | None = None,
    llama_cpp_dir: Path | None = None,
) -> DeployResult:
    """Register ``adapter_dir`` as the next version, judge it, and make it active if it passes.

    One deploy at a time (the retrain orchestration guarantees it): versions another deploy left unfinished
    are marked failed as interrupted when the next one starts.
    """
    await fail_interrupted(store, client, config.model_name)
    run = run_record(adapter_dir)
    snapshot = snapshot_dir or run.snapshot
    version = await store.create_model_version(
        name=lineage(store, config.model_name), base_model=str(run.base or base_dir or ""),
        ollama_base=config.ollama_base,
        snapshot_sha256=run.snapshot_sha256, snapshot_path=str(snapshot) if snapshot else None,
        hyperparams=adapter_hyperparameters(adapter_dir),
        artifacts={"adapter_dir": str(adapter_dir), "mode": config.mode},
    )
    tag = version.tag
    result = DeployResult(version.version, tag, promoted=False, status=version.status, reason="")
    t0 = time.monotonic()

    async def emit(step: str, **info: Any) -> None:
        info = {"version": version.version, "tag": tag, **info}
        log.info("deploy %s: %s %s", tag, step, info)
        if on_event is not None:
            maybe = on_event(step, info)
            if asyncio.iscoroutine(maybe):
                await maybe

    try:
        candidate = await register_candidate(adapter_dir, client=client, config=config, tag=tag,
                                             base_dir=base_dir or run.base_dir, emit=emit, memory=memory,
                                             llama_cpp_dir=llama_cpp_dir)
        result.bytes_uploaded = candidate.bytes_uploaded
        result.timings.update(candidate.timings)
        await store.update_model_version(tag, status="registered", in_ollama=True,
                                         artifacts={"adapter_dir": str(adapter_dir), **candidate.artifacts()})
        active = await store.active_model_version()
        gate = await judge_candidate(client, config, tag, active.tag if active else None,
                                     _eval_conversations(snapshot), retention=trained_retention(adapter_dir))
        result.gate = gate
        await emit("gated", passed=gate.passed, reason=gate.reason, scores=gate.scores)
        result.timings["to_gate_s"] = round(time.monotonic() - t0, 3)

        # ---- 7. reject, or switch (one transaction in the store) and apply retention ---------------------
        done = await conclude_candidate(store, client, tag, gate, model_name=config.model_name,
                                        keep_versions=config.keep_versions,
                                        train_metrics=trained_metrics(adapter_dir), inform=inform)
    except (LoraloopError, OSError, ValueError) as exc:  # ValueError: a run file pydantic or json refused
        reason = str(exc)
        removed = await forget(client, tag)
        await store.update_model_version(tag, status="failed", failure_reason=reason,
                                         in_ollama=False if removed else None)
        result.status, result.reason = "failed", reason
        await emit("failed", reason=reason)
        return result
    except Exception as exc:  # a bug, not a deploy condition: still never leave the version looking alive
        await forget(client, tag)
        await store.update_model_version(tag, status="failed", failure_reason=f"unexpected error: {exc!r}")
        raise

    # Told after the try: a listener's error must not mark a version that now answers as failed.
    result.status, result.reason, result.promoted = done.status, done.reason, done.status == "promoted"
    if result.promoted:
        result.timings["switched_s"] = round(time.monotonic() - t0, 3)
        await emit("switched", active=tag)
        if done.deleted:
            await emit("retention", deleted=done.deleted)
    return result


@dataclass(frozen=True, slots=True)
class Conclusion:
    """What :func:`conclude_candidate` did; ``status`` is the version's status in the store now."""

    tag: str
    status: Literal["rejected", "evaluated", "promoted"]
    reason: str  # the gate's
    deleted: tuple[str, ...] = ()  # the older tags retention removed from Ollama after the switch


async def conclude_candidate(store: Store, client: OllamaClient, tag: str, gate: GateResult, *, model_name: str,
                             keep_versions: int, manual: bool = False,
                             train_metrics: dict[str, Any] | None = None,
                             inform: Inform | None = None) -> Conclusion:
    """After the gate, the one promotion path (``loraloop deploy run`` and the retrain loop): store the
    judgement, then reject (the tag deleted from Ollama) or promote and apply retention. ``manual``: a passing
    candidate stops at evaluated, for an expert to :func:`switch_to` it.

    Raises DeployFailed / OllamaError / StoreError when the switch fails: the version stays evaluated and the
    active model unchanged; the caller marks the version failed.

    ``inform`` measures something for information beside the verdict (stored as the gate's ``with_retrieval``),
    while the candidate is still in Ollama; its failure is recorded there and changes nothing else."""
    if inform is not None:
        gate.with_retrieval = await _informed(inform, tag, gate)
    evaluation, metrics = gate.to_dict(), version_metrics(gate, train_metrics)
    if not gate.passed:
        await forget(client, tag)
        await store.update_model_version(tag, status="rejected", failure_reason=gate.reason, in_ollama=False,
                                         evaluation=evaluation, metrics=metrics)
        return Conclusion(tag, "rejected", gate.reason)
    await store.update_model_version(tag, status="evaluated", evaluation=evaluation, metrics=metrics)
    if manual:
        return Conclusion(tag, "evaluated", gate.reason)
    deleted = await switch_to(store, client, tag, model_name=model_name, keep_versions=keep_versions)
    return Conclusion(tag, "promoted", gate.reason, tuple(deleted))


async def _informed(inform: Inform, tag: str, gate: GateResult) -> WithRetrieval:
    try:
        return await inform(tag, gate)
    except Exception as exc:  # information only: whatever failed, the verdict and the switch go on
        log.warning("the with-retrieval table for %s failed: %s", tag, exc, exc_info=True)
        return {"error": str(exc) or type(exc).__name__}


def version_metrics(gate: GateResult, train_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a version stores as ``metrics``: the gate's scores per role, and the trainer's numbers under "train"."""
    return {**gate.scores, "train": dict(train_metrics or {})}


def _eval_conversations(snapshot: Any) -> list[Any]:
    if not snapshot:
        return []
    return list(read_snapshot(Path(snapshot)).eval)
