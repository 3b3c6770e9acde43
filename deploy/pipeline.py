"""Deploy a trained adapter: adapter dir → GGUF → Ollama blobs → candidate tag → warm-up → gate → switch.

Read top to bottom, :func:`deploy` is the whole story. The active model is a single pointer in the store,
switched atomically only after every check passed; any failure marks the version failed with its reason
and leaves the active model as it was. The candidate is always created ``from`` the clean base tag (never
from a fine-tuned tag: Ollama inherits adapters, they would stack).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import ConfigDict

from data.community_names import lineage_name
from data.errors import LoraloopError, StoreError
from data.snapshot import read_snapshot
from deploy.gate import MIN_EVAL, GateConfig, GateResult, eval_prompts, probe_prompts, run_gate
from deploy.modelfile import SERVED_CHECK_CHATS, ServingFormat, TrainedPrompts, serving_format_for, trained_format
from deploy.ollama import CreateProgress, ModelNotFound, OllamaClient, OllamaError
from deploy.options import SERVE_OPTIONS, ServeSettings, check_options, option_type_error, serve_options_from
from deploy.registration import (
    PROCESS_MEMORY,
    DaemonFacts,
    PathChoice,
    PathMemory,
    PathUnavailable,
    choose_path,
    is_adapter_refusal,
    quantize_type,
)
from trainer.config import DEFAULT_PROBES  # the trainer's probes: same questions in both tables
from trainer.metrics import read_metrics
from trainer.record import RunRecord, read_run

if TYPE_CHECKING:  # the GPU worker imports this module and has no database stack
    from data.models import ModelVersion
    from data.store import Store
    from deploy.merge import GgufBuild

log = logging.getLogger(__name__)

WARM_UP = [{"role": "user", "content": "Hello"}]
# Statuses of a version whose deploy has not finished (a crash leaves them behind).
UNFINISHED = ("created", "registered", "evaluated")


class DeployFailed(LoraloopError):
    """A deploy step failed; the version is marked failed with this message and the active model is unchanged."""


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """How a version is registered, judged and kept. One object, from settings; it travels inside a retrain job
    (worker/job.py JobSpec), where pydantic validates it from JSON and writes it back, unknown fields refused."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    model_name: str
    ollama_base: str  # the clean base tag in Ollama, e.g. qwen2.5:0.5b-instruct
    # auto: the adapter path where the daemon may create and load adapter models for the base, else (or when it
    # refuses one) gguf (see deploy/registration.py); adapter / gguf / merged: that path only, failing with the
    # reason where it cannot work.
    mode: Literal["auto", "adapter", "gguf", "merged"] = "auto"
    # The merged model's type, e.g. q4_K_M: quantized here by llama.cpp on the gguf path (f16/bf16/f32: the
    # converter's own output), by Ollama on create on the merged path; the adapter path ignores it. None: outtype.
    quantize: str | None = None
    gate_margin: float = 0.02  # candidate may trail the active model by at most this key-fact recall
    eval_limit: int = 32
    # The gate's other dimensions (deploy/gate.py). Retention: the largest rise in NLL (nats/token) of the base's
    # general answers a candidate may show. Set on SmolLM2-135M-Instruct (its own answers at 1.00 nats/token): runs
    # that learned the taught facts with replay rose 0.26-0.39, the same without replay 0.71, over-trained ones
    # 1.5-4.0 (README "What the gate checks"); tiny random test models rise 0.05-0.20 normally. Another base
    # family: re-measure with bench/bench_quality.py. Paraphrases and consistency cost extra chats per deploy: off
    # here unless asked for, on in the bot's settings (gate_paraphrases, gate_consistency_n).
    max_retention_drop: float = 0.4
    # Fewer eval prompts than this: the scores are shown, not compared (deploy/gate.py MIN_EVAL).
    min_eval: int = MIN_EVAL
    paraphrases: int = 0  # eval questions reworded by the base tag and answered again by both models
    consistency_n: int = 0  # answers per probe at the served options (2 or more to measure)
    probes: tuple[str, ...] = DEFAULT_PROBES
    keep_versions: int = 3  # fine-tuned tags kept in Ollama (besides the active and rollback target)
    # The gate's decoding, sent with each of its requests and never written into a model: deterministic and
    # short, so that two models are compared on the same footing run after run.
    gate_options: dict[str, Any] = field(default_factory=lambda: dict(GATE_OPTIONS))
    # What users get: written into every fine-tune as its PARAMETERs (with the stop tokens), and sent with each
    # chat while the bot answers with the base, whose own parameters are not ours (see bot/chat.py).
    serve_options: dict[str, Any] = field(default_factory=lambda: dict(SERVE_OPTIONS))
    outtype: str = "f16"
    # The system prompt the bot sends with every chat (None: it sends none). It must be the one training used,
    # else the served prompt differs from the trained one for every conversation without its own system prompt.
    chat_system_prompt: str | None = None

    def __post_init__(self) -> None:
        check_options(self.serve_options, "serve_options")
        check_options(self.gate_options, "gate_options")

    @classmethod
    def from_settings(cls, settings: DeploySettings, **overrides: Any) -> DeployConfig:
        """The deploy configuration from loraloop's settings (bot/settings.py)."""
        values: dict[str, Any] = {
            "model_name": settings.model_name, "ollama_base": settings.ollama_base,
            "chat_system_prompt": settings.system_prompt or None, "mode": settings.deploy_mode,
            "quantize": settings.deploy_quantize, "gate_margin": settings.deploy_gate_margin,
            "eval_limit": settings.deploy_eval_limit, "keep_versions": settings.deploy_keep_versions,
            "outtype": settings.deploy_outtype, "max_retention_drop": settings.gate_max_retention_drop,
            "paraphrases": settings.gate_paraphrases, "consistency_n": settings.gate_consistency_n,
            "min_eval": settings.gate_min_eval,
            "serve_options": serve_options_from(settings),
        }
        return cls(**{**values, **overrides})


class DeploySettings(ServeSettings, Protocol):
    """The settings a deploy reads (bot/settings.py Settings; deploy/ does not import the bot)."""

    @property
    def model_name(self) -> str: ...
    @property
    def ollama_base(self) -> str: ...
    @property
    def system_prompt(self) -> str: ...
    @property
    def deploy_mode(self) -> str: ...
    @property
    def deploy_quantize(self) -> str | None: ...
    @property
    def deploy_gate_margin(self) -> float: ...
    @property
    def deploy_eval_limit(self) -> int: ...
    @property
    def deploy_keep_versions(self) -> int: ...
    @property
    def deploy_outtype(self) -> str: ...
    @property
    def gate_max_retention_drop(self) -> float: ...
    @property
    def gate_paraphrases(self) -> int: ...
    @property
    def gate_consistency_n(self) -> int: ...
    @property
    def gate_min_eval(self) -> int: ...


# The gate's decoding (DeployConfig.gate_options): deterministic and short.
GATE_OPTIONS: dict[str, Any] = {"temperature": 0.0, "seed": 0, "num_predict": 128}


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
Inform = Callable[[str, GateResult], Awaitable[dict[str, Any]]]


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
    run = _read_run(adapter_dir)
    snapshot = snapshot_dir or run.snapshot
    version = await store.create_model_version(
        name=lineage(store, config.model_name), base_model=str(run.base or base_dir or ""),
        ollama_base=config.ollama_base,
        snapshot_sha256=run.snapshot_sha256, snapshot_path=str(snapshot) if snapshot else None,
        hyperparams=_hyperparameters(adapter_dir), artifacts={"adapter_dir": str(adapter_dir), "mode": config.mode},
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


async def _informed(inform: Inform, tag: str, gate: GateResult) -> dict[str, Any]:
    try:
        return await inform(tag, gate)
    except Exception as exc:  # information only: whatever failed, the verdict and the switch go on
        log.warning("the with-retrieval table for %s failed: %s", tag, exc, exc_info=True)
        return {"error": str(exc) or type(exc).__name__}


async def switch_to(store: Store, client: OllamaClient, tag: str, *, model_name: str,
                    keep_versions: int) -> list[str]:
    """Promote an evaluated version (checked to be in Ollama) and apply retention; the tags retention deleted.

    Retention is housekeeping and never fails a switch that happened: its errors are logged."""
    await promote(store, client, tag)
    try:
        return await apply_retention(store, client, model_name, keep_versions)
    except (OllamaError, StoreError) as exc:
        log.warning("retention after %s failed: %s", tag, exc)
    except Exception:  # a bug here must not have the caller mark the version that now answers as failed
        log.exception("retention after %s crashed", tag)
    return []


def version_metrics(gate: GateResult, train_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a version stores as ``metrics``: the gate's scores per role, and the trainer's numbers under "train"."""
    return {**gate.scores, "train": dict(train_metrics or {})}


@dataclass(slots=True)
class Candidate:
    """A tag registered in Ollama and answering (warm-up passed), not yet judged or switched to."""

    tag: str
    fmt: ServingFormat
    mode: str  # the path it took: adapter, gguf or merged
    blobs: dict[str, str]
    bytes_uploaded: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # How it was registered and why: path, reason, Ollama version, fallback, how the served prompt was checked.
    registration: dict[str, Any] = field(default_factory=dict)

    def artifacts(self) -> dict[str, Any]:
        return {"mode": self.mode, "blobs": self.blobs, "template": self.fmt.template, "system": self.fmt.system,
                "parameters": self.fmt.parameters(), "registration": self.registration}


class _AdapterRefused(Exception):
    """The daemon refused the adapter model itself (at create or at load); auto mode falls back to gguf."""


async def register_candidate(adapter_dir: Path, *, client: OllamaClient, config: DeployConfig, tag: str,
                             base_dir: Path | None = None, emit: Callable[..., Awaitable[None]] | None = None,
                             memory: PathMemory | None = None, llama_cpp_dir: Path | None = None) -> Candidate:
    """Adapter dir → path chosen from the daemon's facts → files for Ollama → only the missing blobs uploaded →
    ``tag`` created → warm-up chat → Ollama's own rendering of a few chats compared with training's. Needs no
    database (the GPU worker runs it). ``base_dir`` defaults to the one the training run recorded; ``memory``
    keeps the daemons' adapter refusals (default: this process's); ``llama_cpp_dir`` is where the gguf path
    finds llama.cpp's converter (the llama_cpp_dir setting; default: the cached llama-cpp-python sdist). On any
    failure the tag is deleted again and DeployFailed / OllamaError / OSError / ValueError propagates."""
    async def note(step: str, **info: Any) -> None:
        if emit is not None:
            await emit(step, **info)

    memory = PROCESS_MEMORY if memory is None else memory
    t0 = time.monotonic()
    base_dir = base_dir or _read_run(adapter_dir).base_dir
    # ---- 1. what Ollama must render, checked against the chat template the run trained with -----------
    fmt = serving_format_for(adapter_dir, base_dir, config.serve_options)
    if config.chat_system_prompt is not None and config.chat_system_prompt != fmt.system:
        raise DeployFailed(
            f"the bot sends the system prompt {config.chat_system_prompt!r} but this adapter was trained with "
            f"{fmt.system or 'no system prompt'!r} for conversations without one; train with the same "
            "system_prompt the bot uses"
        )
    if error := option_type_error(fmt.parameters()):  # Ollama would create it, then fail (or cut) every chat
        raise DeployFailed(f"the served parameters are not what Ollama takes: {error}")
    quantize = quantize_type(config.quantize) if config.quantize else None

    # ---- 2. the path: what this daemon can do with this base (and what it refused before) -------------
    facts, shown = await _check_base(client, config.ollama_base)
    try:
        choice = choose_path(config.mode, facts, memory)
    except PathUnavailable as exc:
        raise DeployFailed(str(exc)) from exc
    if choice.path == "adapter" and not fmt.system and shown.get("system"):  # a merged model inherits nothing
        raise DeployFailed(
            f"the base {config.ollama_base} has SYSTEM {shown['system']!r}, which the training data did not have "
            "and an empty SYSTEM cannot remove; set system_prompt for training and serving (or deploy gguf)"
        )
    record: dict[str, Any] = {"path": choice.path, "mode": choice.mode, "reason": choice.reason,
                              "ollama_version": facts.version, "base": facts.summary()}
    register = functools.partial(_register, adapter_dir=adapter_dir, base_dir=base_dir, client=client,
                                 config=config, tag=tag, fmt=fmt, facts=facts, quantize=quantize, note=note,
                                 llama_cpp_dir=llama_cpp_dir)
    try:
        candidate = await register(choice)
    except _AdapterRefused as exc:
        if choice.mode != "auto":
            raise DeployFailed(f"Ollama {facts.version} refused the adapter model: {exc} (deploy_mode is adapter, "
                               "which never falls back: set deploy_mode to auto or gguf)") from exc
        # Once per daemon version and base: the next deploy goes to gguf directly.
        memory.remember(facts, str(exc))
        await note("fallback", path="gguf", reason=str(exc))
        candidate = await register(PathChoice("gguf", "auto", f"the adapter was refused: {exc}"))
        record.update(path="gguf", fallback=f"predicted adapter ({choice.reason}), but Ollama refused it: {exc}")
    candidate.registration = {**record, **candidate.registration}
    candidate.timings["registered_s"] = round(time.monotonic() - t0, 3)
    return candidate


async def _register(choice: PathChoice, *, adapter_dir: Path, base_dir: Path | None, client: OllamaClient,
                    config: DeployConfig, tag: str, fmt: ServingFormat, facts: DaemonFacts, quantize: str | None,
                    note: Callable[..., Awaitable[None]], llama_cpp_dir: Path | None) -> Candidate:
    """One path's files → upload → create → warm-up → served-prompt check; the tag is deleted on any failure."""
    t0 = time.monotonic()
    created = False
    try:
        # ---- files for Ollama: one adapter GGUF, one merged GGUF, or the merged model's safetensors ------
        await note("converting", mode=choice.path, reason=choice.reason)
        files, built = await asyncio.to_thread(_artifacts, adapter_dir, base_dir, config, choice.path, llama_cpp_dir)
        candidate = Candidate(tag, fmt, choice.path, {})
        if built is not None:
            candidate.timings.update(built.seconds)
            candidate.registration["gguf"] = {"file_type": built.file_type, "bytes": built.path.stat().st_size,
                                              "peak_disk": built.peak_disk}
        candidate.timings["prepare_s"] = round(time.monotonic() - t0, 3)  # format checks + conversion

        # ---- upload only what Ollama lacks (content-addressed: HEAD first, unchanged files are not sent) ---
        total = sum(p.stat().st_size for p in files.values())
        done = 0
        for name, path in files.items():
            async def sent(n: int, size: int, name: str = name, before: int = done) -> None:
                await note("uploading", file=name, sent=n, size=size, total_sent=before + n, total=total)

            upload = await client.ensure_blob(path, on_progress=sent)
            done += upload.size
            candidate.blobs[name] = upload.digest
            candidate.bytes_uploaded += upload.bytes_sent
            await note("uploaded", file=name, digest=upload.digest, bytes=upload.bytes_sent, size=upload.size)
        candidate.timings["upload_s"] = round(time.monotonic() - t0 - candidate.timings["prepare_s"], 3)

        # ---- create: from the clean base with the adapter, or from the merged file(s) ----------------------
        async def progress(p: CreateProgress) -> None:
            await note("create", status=p.status, completed=p.completed, total=p.total)

        create_args: dict[str, Any] = {"template": fmt.template, "system": fmt.system or None,
                                       "parameters": fmt.parameters(), "on_progress": progress}
        created = True  # from here on a failure may leave a half-made tag behind
        if choice.path == "adapter":
            try:
                await client.create(tag, from_=config.ollama_base, adapters=candidate.blobs, **create_args)
            except OllamaError as exc:
                if is_adapter_refusal(exc.message):
                    raise _AdapterRefused(exc.message) from exc
                raise
        elif choice.path == "gguf":  # quantized already: Ollama only imports the GGUF file
            await client.create(tag, files=candidate.blobs, **create_args)
        else:
            await client.create(tag, files=candidate.blobs, quantize=quantize, **create_args)
        await _check_created(client, tag, fmt)

        # ---- warm-up: a base/adapter mismatch only shows when Ollama loads the model -----------------------
        try:
            hello = await client.chat(tag, WARM_UP, {**config.gate_options, "num_predict": 8})
        except OllamaError as exc:
            if choice.path == "adapter" and is_adapter_refusal(exc.message):
                raise _AdapterRefused(exc.message) from exc
            raise DeployFailed(f"warm-up chat failed (does the adapter match the base {config.ollama_base}?): "
                               f"{exc}") from exc
        await note("warmed_up", reply=hello)

        # ---- Ollama judges the prompt: its own rendering of real chats against training's, token by token ----
        checked = await _check_served_prompt(client, tag, adapter_dir, base_dir, fmt, facts)
        candidate.registration["served_prompt"] = checked
        await note("served_prompt", result=checked)
        candidate.timings["create_to_checked_s"] = round(
            time.monotonic() - t0 - candidate.timings["prepare_s"] - candidate.timings["upload_s"], 3)
        return candidate
    except BaseException:
        if created:
            await forget(client, tag)
        raise


async def _check_served_prompt(client: OllamaClient, tag: str, adapter_dir: Path, base_dir: Path | None,
                               fmt: ServingFormat, facts: DaemonFacts) -> str:
    """What Ollama renders for a few chats equals what training rendered, or DeployFailed with the difference.

    Daemons without ``_debug_render_only`` keep today's check (loraloop's Go-template interpreter, done when the
    serving format was built); the returned text says which check ran."""
    interpreter = "checked with loraloop's template interpreter only (serving_format)"
    if not facts.renders_debug:
        return f"Ollama {facts.version} has no _debug_render_only: {interpreter}"
    trained = await asyncio.to_thread(TrainedPrompts, trained_format(adapter_dir, base_dir), fmt)
    for chat in SERVED_CHECK_CHATS:
        served = await client.render_prompt(tag, chat)
        if served is None:
            return f"Ollama {facts.version} ignored _debug_render_only: {interpreter}"
        diff = await asyncio.to_thread(trained.difference, chat, served)
        if diff:
            roles = "/".join(m["role"] for m in chat)
            raise DeployFailed(f"Ollama renders a different prompt for {tag} than training used ({roles} chat): "
                               f"{diff}")
    unit = "token for token with the base's tokenizer" if trained.by_tokens else "character for character"
    return (f"Ollama {facts.version} rendered {len(SERVED_CHECK_CHATS)} chats (_debug_render_only) exactly as "
            f"training did, {unit}")


async def judge_candidate(client: OllamaClient, config: DeployConfig, tag: str, active_tag: str | None,
                          eval_conversations: list[Any], retention: dict[str, Any] | None = None) -> GateResult:
    """The gate: the candidate against what answers now on the snapshot's eval split and the probes.

    With no fine-tuned version active the bot answers with the base tag, so that is what the candidate must
    not be worse than: the first version is judged like every later one."""
    opponent = active_tag or config.ollama_base
    if not await client.has_model(opponent):
        if active_tag:
            raise DeployFailed(f"the active model {active_tag} is not in Ollama; cannot compare (restore it or "
                               "promote another version first)")
        raise DeployFailed(f"the base model {opponent} is not in Ollama; cannot compare: run `ollama pull "
                           f"{opponent}` on the Ollama host")
    prompts = eval_prompts(eval_conversations, config.eval_limit)
    # The base rewords the eval questions: the same rewordings for every version, comparable run to run.
    paraphraser = opponent
    if config.paraphrases and active_tag and await client.has_model(config.ollama_base):
        paraphraser = config.ollama_base
    # Repeated answers as users get them, cut to the gate's length (the served num_predict is a whole chat's).
    sampling = {**config.serve_options, "num_predict": config.gate_options.get("num_predict", 128)}
    judging = GateConfig(margin=config.gate_margin, options=config.gate_options, paraphrases=config.paraphrases,
                         paraphraser=paraphraser, consistency_n=config.consistency_n, sampling=sampling,
                         max_retention_drop=config.max_retention_drop, min_eval=config.min_eval)
    return await run_gate(client, tag, opponent, prompts, probe_prompts(config.probes), judging,
                          opponent_is_base=active_tag is None, retention=retention)


def trained_retention(run_dir: Path) -> dict[str, Any] | None:
    """The trainer's retention record (metrics.json in the run or adapter directory), None when not measured."""
    return _run_metrics(run_dir).get("retention")


# The trainer's numbers a version keeps under metrics["train"] (the full metrics.json stays with the run).
TRAIN_METRICS = ("epochs", "steps", "device", "batching", "examples", "eval_loss_before", "eval_loss_after",
                 "train_loss", "train_runtime_s", "tokens_per_s", "answers", "token_accuracy_before",
                 "token_accuracy_after", "dpo", "retention")


def trained_metrics(run_dir: Path) -> dict[str, Any]:
    """The trainer's numbers (:data:`TRAIN_METRICS`) from metrics.json in the run or adapter directory; {} when
    there is none (an adapter trained elsewhere)."""
    metrics = _run_metrics(run_dir)
    return {k: metrics.get(k) for k in TRAIN_METRICS} if metrics else {}


def _run_metrics(run_dir: Path) -> dict[str, Any]:
    metrics = read_metrics(run_dir)  # a malformed file is a ValueError naming it: the deploy fails with that reason
    return metrics.to_dict() if metrics else {}


async def forget(client: OllamaClient, tag: str) -> bool:
    """Delete a candidate that will not serve; True when it is gone from Ollama."""
    try:
        await client.delete(tag)
    except ModelNotFound:
        return True
    except OllamaError:
        return False
    return True


def lineage(store: Store, model_name: str) -> str:
    """The ModelVersion name of the store's community's fine-tunes (data.community_names.lineage_name): tags are
    global in Ollama, so each community's are its own (``loraloop-<model>-<community>:vN``)."""
    return lineage_name(model_name, store.community or "")


def _ours(store: Store, model_name: str) -> tuple[str, ...]:
    """The names of versions a community's housekeeping may touch: its lineage, and ``model_name`` itself, which
    versions from before communities carry in the community they were assigned to (data.communities)."""
    return (lineage(store, model_name), model_name)


async def fail_interrupted(store: Store, client: OllamaClient, model_name: str) -> list[str]:
    """Mark failed the versions a crashed deploy left half-way in the store's community (never the active one)
    and drop their tags."""
    active = await store.active_model_version()
    names = _ours(store, model_name)
    marked = []
    for v in await store.list_model_versions():
        if v.name in names and v.status in UNFINISHED and (active is None or v.id != active.id):
            removed = await forget(client, v.tag)
            await store.update_model_version(v.tag, status="failed", in_ollama=not removed and v.in_ollama,
                                             failure_reason="interrupted: the deploy process stopped before finishing")
            marked.append(v.tag)
    return marked


async def apply_retention(store: Store, client: OllamaClient, model_name: str, keep: int) -> list[str]:
    """Delete the store's community's fine-tuned tags beyond its newest ``keep`` in Ollama, never its active one
    or its rollback target."""
    names = _ours(store, model_name)
    deleted = []
    for v in await store.retention_candidates(keep):
        if v.name not in names:
            continue
        try:
            await client.delete(v.tag)
        except ModelNotFound:
            pass  # already gone: the store catches up
        await store.update_model_version(v.tag, in_ollama=False)
        deleted.append(v.tag)
    return deleted


@dataclass(frozen=True, slots=True)
class Answering:
    """What answers after a switch: a fine-tuned version, or the clean base model (``version`` None)."""

    tag: str
    version: ModelVersion | None = None

    def __str__(self) -> str:
        return self.tag if self.version is not None else f"{self.tag} (the base model)"


async def promote(store: Store, client: OllamaClient, tag: str, *, base: str | None = None) -> Answering:
    """Make an existing version active, after checking Ollama still has it; ``tag`` equal to ``base`` (the
    settings' ollama_base) switches back to the clean base model."""
    if base is not None and tag == base:
        return await _to_base(store, client)
    version = await store.get_model_version(tag)
    if not await client.has_model(tag):
        if version.in_ollama:
            await store.update_model_version(tag, in_ollama=False)
        raise DeployFailed(f"{tag} is not in Ollama any more (deleted by retention?); deploy it again instead")
    return Answering(tag, await store.promote(tag))


async def _to_base(store: Store, client: OllamaClient) -> Answering:
    """Answer with the clean base the active version was built on (checked to be in Ollama first)."""
    active = await store.active_model_version()
    if active is None:
        raise AlreadyActive(None)
    if not await client.has_model(active.ollama_base):
        raise DeployFailed(f"the base model {active.ollama_base} is not in Ollama: run `ollama pull "
                           f"{active.ollama_base}` on the Ollama host first")
    await store.rollback_to_base()
    return Answering(active.ollama_base)


class AlreadyActive(LoraloopError):
    """A rollback to the version that already answers: nothing was changed (a retried request, typically).
    ``version`` None: the base model already answers."""

    def __init__(self, version: ModelVersion | None) -> None:
        what = version.tag if version is not None else "the base model"
        super().__init__(f"{what} is already the active model; nothing was rolled back")
        self.version = version


# Per database (its engine: every scoped copy of a store shares it) and community.
_ROLLBACK_LOCKS: weakref.WeakKeyDictionary[Any, dict[str | None, asyncio.Lock]] = weakref.WeakKeyDictionary()


async def rollback(store: Store, client: OllamaClient, to: int | str | None = None) -> Answering:
    """Switch back to the previous good version (checked to be in Ollama first); without one, while a fine-tune
    answers, back to the clean base model. Only the store's community changes.

    ``to`` (a version id or tag) names the version the caller saw as the target, so a retried request cannot
    roll back twice: if ``to`` already answers, AlreadyActive is raised and nothing changes."""
    # One rollback at a time per community in this process: a retry that arrives while the first one waits on
    # Ollama then sees the switched pointer instead of computing "one back" from the old one.
    async with _ROLLBACK_LOCKS.setdefault(store.engine, {}).setdefault(store.community, asyncio.Lock()):
        target = await store.rollback_target() if to is None else await _named_rollback_target(store, to)
        if target is None:
            if await store.active_model_version() is None:
                raise DeployFailed("the base model already answers: there is nothing to roll back to")
            return await _to_base(store, client)
        if not await client.has_model(target.tag):
            await store.update_model_version(target.tag, in_ollama=False)
            raise DeployFailed(f"the rollback target {target.tag} is not in Ollama any more; "
                               "promote a version that is")
        switched = await store.rollback()
    if switched.id != target.id:  # another process rolled back between the check and the switch
        log.warning("rollback to %s switched to %s instead (a concurrent rollback)", target.tag, switched.tag)
    return Answering(switched.tag, switched)


async def _named_rollback_target(store: Store, to: int | str) -> ModelVersion:
    wanted = await store.get_model_version(to)
    active = await store.active_model_version()
    if active is not None and active.id == wanted.id:
        raise AlreadyActive(wanted)
    target = await store.rollback_target()
    if target is None:
        raise DeployFailed("there is no earlier good model version to roll back to")
    if target.id != wanted.id:
        raise DeployFailed(f"{wanted.tag} is not the previous good version (that is {target.tag}); "
                           f"`loraloop models promote {wanted.tag}` switches to any registered version")
    return target


# ---- helpers ----------------------------------------------------------------------------------------------


async def _check_base(client: OllamaClient, base: str) -> tuple[DaemonFacts, dict[str, Any]]:
    """The daemon's facts about the clean base (and /api/show's answer); DeployFailed when it is not a clean base."""
    if base.startswith("loraloop-"):
        raise DeployFailed(f"ollama_base {base} is a fine-tuned tag; candidates must be created from the clean base")
    try:
        shown = await client.show(base)
    except ModelNotFound as exc:
        raise DeployFailed(f"the base model {base} is not in Ollama: run `ollama pull {base}` on the Ollama host"
                           ) from exc
    if "ADAPTER" in str(shown.get("modelfile", "")).split():
        raise DeployFailed(f"the base model {base} already carries an adapter; use a clean base tag")
    return DaemonFacts.from_show(client.host, await client.version(), base, shown), shown


async def _check_created(client: OllamaClient, tag: str, fmt: ServingFormat) -> None:
    shown = await client.show(tag)
    if shown.get("template") != fmt.template or (shown.get("system") or "") != fmt.system:
        raise DeployFailed(f"Ollama registered {tag} with a different TEMPLATE/SYSTEM than requested")


def _read_run(adapter_dir: Path) -> RunRecord:
    """The training run's record (trainer/record.py, checked); an empty one for an adapter trained elsewhere."""
    if not (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "adapter.gguf").is_file():
        raise DeployFailed(f"{adapter_dir} is not an adapter directory (no adapter_config.json)")
    try:
        return read_run(adapter_dir) or RunRecord()
    except ValueError as exc:  # a malformed run.json: named, not a traceback
        raise DeployFailed(str(exc)) from None


def _hyperparameters(adapter_dir: Path) -> dict[str, Any]:
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.is_file():
        return {}
    data = json.loads(cfg.read_text(encoding="utf-8"))
    return {k: data.get(k) for k in ("r", "lora_alpha", "target_modules", "base_model_name_or_path") if k in data}


def _artifacts(adapter_dir: Path, base_dir: Path | None, config: DeployConfig, path: str,
               llama_cpp_dir: Path | None = None) -> tuple[dict[str, Path], GgufBuild | None]:
    """The files Ollama gets on this path, by the name it sees them under (and, on the gguf path, what building
    the file cost; None when it was built before)."""
    if path == "adapter":
        existing = adapter_dir / "adapter.gguf"
        weights = adapter_dir / "adapter_model.safetensors"
        if existing.is_file() and (not weights.is_file() or existing.stat().st_mtime >= weights.stat().st_mtime):
            return {"adapter.gguf": existing}, None  # converted before (e.g. by `loraloop deploy convert`)
        if base_dir is None:
            raise DeployFailed("converting the adapter needs the base model directory (base_dir)")
        from deploy import gguf

        out = adapter_dir / "adapter.gguf"
        try:
            gguf.convert_adapter(adapter_dir, base_dir, out, outtype=config.outtype)
        except gguf.ConversionError as exc:
            raise DeployFailed(f"converting the adapter to GGUF failed: {exc}") from exc
        return {"adapter.gguf": out}, None
    if base_dir is None:
        raise DeployFailed("merging needs the base model directory (base_dir)")
    from deploy import merge

    if path == "gguf":
        return _merged_gguf(adapter_dir, base_dir, config, llama_cpp_dir)
    merged = adapter_dir / "merged"
    if not (merged / "config.json").is_file():
        try:
            merge.merge_adapter(adapter_dir, base_dir, merged)
        except merge.MergeError as exc:
            raise DeployFailed(f"merging the adapter into the base failed: {exc}") from exc
    return {p.relative_to(merged).as_posix(): p for p in sorted(merged.rglob("*")) if p.is_file()}, None


def _merged_gguf(adapter_dir: Path, base_dir: Path, config: DeployConfig,
                 llama_cpp_dir: Path | None) -> tuple[dict[str, Path], GgufBuild | None]:
    """The adapter merged into the base as one GGUF file of the configured type (made once per adapter)."""
    from deploy import gguf, merge

    file_type = quantize_type(config.quantize) if config.quantize else config.outtype
    out = adapter_dir / f"merged-{file_type}.gguf"
    weights = adapter_dir / "adapter_model.safetensors"
    if out.is_file() and (not weights.is_file() or out.stat().st_mtime >= weights.stat().st_mtime):
        return {"model.gguf": out}, None
    try:
        built = merge.merge_to_gguf(adapter_dir, base_dir, out, file_type, gguf.llama_cpp_sources(llama_cpp_dir))
    except (gguf.ConversionError, merge.MergeError) as exc:
        raise DeployFailed(f"building the merged GGUF failed: {exc}") from exc
    return {"model.gguf": out}, built


def _eval_conversations(snapshot: Any) -> list[Any]:
    if not snapshot:
        return []
    return list(read_snapshot(Path(snapshot)).eval)
