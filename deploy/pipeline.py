"""Deploy a trained adapter: adapter dir → GGUF → Ollama blobs → candidate tag → warm-up → gate → switch.

Read top to bottom, :func:`deploy` is the whole story. The active model is a single pointer in the store,
switched atomically only after every check passed; any failure marks the version failed with its reason
and leaves the active model as it was. The candidate is always created ``from`` the clean base tag (never
from a fine-tuned tag: Ollama inherits adapters, they would stack).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data.models import ModelVersion
from data.snapshot import SnapshotError, read_snapshot
from data.store import Store, StoreError
from deploy.gate import GateResult, eval_prompts, probe_prompts, run_gate
from deploy.modelfile import ServingFormat, serving_format_for
from deploy.ollama import CreateProgress, ModelNotFound, OllamaClient, OllamaError
from trainer.config import DEFAULT_PROBES  # the trainer's probes: same questions in both tables

log = logging.getLogger(__name__)

WARM_UP = [{"role": "user", "content": "Hello"}]
# Statuses of a version whose deploy has not finished (a crash leaves them behind).
UNFINISHED = ("created", "registered", "evaluated")


class DeployFailed(Exception):
    """A deploy step failed; the version is marked failed with this message and the active model is unchanged."""


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """How a version is registered, judged and kept. One object, from settings."""

    model_name: str
    ollama_base: str  # the clean base tag in Ollama, e.g. qwen2.5:0.5b-instruct
    mode: Literal["adapter", "merged"] = "adapter"  # merged: hand Ollama merged safetensors (files=)
    quantize: str | None = None  # merged mode only, e.g. q4_K_M
    gate_margin: float = 0.02  # candidate may trail the active model by at most this ROUGE-L
    eval_limit: int = 32
    probes: tuple[str, ...] = DEFAULT_PROBES
    keep_versions: int = 3  # fine-tuned tags kept in Ollama (besides the active and rollback target)
    options: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0, "seed": 0, "num_predict": 128})
    outtype: str = "f16"
    # The system prompt the bot sends with every chat (None: it sends none). It must be the one training used,
    # else the served prompt differs from the trained one for every conversation without its own system prompt.
    chat_system_prompt: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> DeployConfig:
        """The deploy configuration from loraloop's settings (deploy_* fields where the settings have them)."""
        values: dict[str, Any] = {"model_name": settings.model_name, "ollama_base": settings.ollama_base,
                                  "chat_system_prompt": settings.system_prompt or None}
        for name in ("mode", "quantize", "gate_margin", "eval_limit", "keep_versions", "outtype"):
            if hasattr(settings, f"deploy_{name}"):
                values[name] = getattr(settings, f"deploy_{name}")
        return cls(**{**values, **overrides})


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


async def deploy(
    adapter_dir: Path,
    *,
    store: Store,
    client: OllamaClient,
    config: DeployConfig,
    base_dir: Path | None = None,
    snapshot_dir: Path | None = None,
    on_event: Event | None = None,
) -> DeployResult:
    """Register ``adapter_dir`` as the next version, judge it, and make it active if it passes.

    One deploy at a time (the retrain orchestration guarantees it): versions another deploy left unfinished
    are marked failed as interrupted when the next one starts.
    """
    await fail_interrupted(store, client, config.model_name)
    run = _read_run(adapter_dir)
    snapshot = snapshot_dir or run.get("snapshot")
    version = await store.create_model_version(
        name=config.model_name, base_model=str(run.get("base") or base_dir or ""), ollama_base=config.ollama_base,
        snapshot_sha256=run.get("snapshot_sha256"), snapshot_path=str(snapshot) if snapshot else None,
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
                                             base_dir=base_dir or _base_dir(run), emit=emit)
        result.bytes_uploaded = candidate.bytes_uploaded
        result.timings.update(candidate.timings)
        await store.update_model_version(tag, status="registered", in_ollama=True,
                                         artifacts={"adapter_dir": str(adapter_dir), **candidate.artifacts()})
        active = await store.active_model_version()
        gate = await judge_candidate(client, config, tag, active.tag if active else None,
                                     _eval_conversations(snapshot))
        result.gate = gate
        await emit("gated", passed=gate.passed, reason=gate.reason, scores=gate.scores)
        result.timings["to_gate_s"] = round(time.monotonic() - t0, 3)

        # ---- 7. switch (one transaction in the store) or reject ------------------------------------------
        if not gate.passed:
            await _forget(client, tag)
            await store.update_model_version(tag, status="rejected", evaluation=gate.to_dict(), metrics=gate.scores,
                                             failure_reason=gate.reason, in_ollama=False)
            result.status, result.reason = "rejected", gate.reason
            return result
        await store.update_model_version(tag, status="evaluated", evaluation=gate.to_dict(), metrics=gate.scores)
        await store.promote(tag)
        result.promoted, result.status, result.reason = True, "promoted", gate.reason
        result.timings["switched_s"] = round(time.monotonic() - t0, 3)
        await emit("switched", active=tag)
    except (DeployFailed, OllamaError, StoreError, SnapshotError, OSError, ValueError) as exc:
        reason = str(exc)
        removed = await _forget(client, tag)
        await store.update_model_version(tag, status="failed", failure_reason=reason,
                                         **({"in_ollama": False} if removed else {}))
        result.status, result.reason = "failed", reason
        await emit("failed", reason=reason)
        return result
    except Exception as exc:  # a bug, not a deploy condition: still never leave the version looking alive
        await _forget(client, tag)
        await store.update_model_version(tag, status="failed", failure_reason=f"unexpected error: {exc!r}")
        raise

    # ---- 8. retention (never fails the deploy) -------------------------------------------------------------
    try:
        deleted = await apply_retention(store, client, config.model_name, config.keep_versions)
        if deleted:
            await emit("retention", deleted=deleted)
    except (OllamaError, StoreError) as exc:
        log.warning("retention after %s failed: %s", tag, exc)
    return result


@dataclass(slots=True)
class Candidate:
    """A tag registered in Ollama and answering (warm-up passed), not yet judged or switched to."""

    tag: str
    fmt: ServingFormat
    mode: str
    blobs: dict[str, str]
    bytes_uploaded: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def artifacts(self) -> dict[str, Any]:
        return {"mode": self.mode, "blobs": self.blobs, "template": self.fmt.template, "system": self.fmt.system,
                "parameters": self.fmt.parameters()}


async def register_candidate(adapter_dir: Path, *, client: OllamaClient, config: DeployConfig, tag: str,
                             base_dir: Path | None = None, emit: Callable[..., Awaitable[None]] | None = None
                             ) -> Candidate:
    """Adapter dir → files for Ollama → only the missing blobs uploaded → ``tag`` created from the clean base →
    warm-up chat. Needs no database (the GPU worker runs it). ``base_dir`` defaults to the one the training
    run recorded. On any failure the tag is deleted again and DeployFailed / OllamaError / OSError /
    ValueError propagates."""
    async def note(step: str, **info: Any) -> None:
        if emit is not None:
            await emit(step, **info)

    t0 = time.monotonic()
    created = False
    try:
        base_dir = base_dir or _base_dir(_read_run(adapter_dir))
        # ---- 1. what Ollama must render, checked against the chat template the run trained with -----
        fmt = serving_format_for(adapter_dir, base_dir, config.options)
        if config.chat_system_prompt is not None and config.chat_system_prompt != fmt.system:
            raise DeployFailed(
                f"the bot sends the system prompt {config.chat_system_prompt!r} but this adapter was trained with "
                f"{fmt.system or 'no system prompt'!r} for conversations without one; train with the same "
                "system_prompt the bot uses"
            )
        await _check_base(client, config.ollama_base, fmt)

        # ---- 2. files for Ollama: one adapter GGUF, or the merged model's safetensors -----------------
        await note("converting", mode=config.mode)
        files = await asyncio.to_thread(_artifacts, adapter_dir, base_dir, config)
        candidate = Candidate(tag, fmt, config.mode, {})
        candidate.timings["prepare_s"] = round(time.monotonic() - t0, 3)  # format checks + conversion

        # ---- 3. upload only what Ollama lacks -----------------------------------------------------------
        for name, path in files.items():
            upload = await client.ensure_blob(path)
            candidate.blobs[name] = upload.digest
            candidate.bytes_uploaded += upload.bytes_sent
            await note("uploaded", file=name, digest=upload.digest, bytes=upload.bytes_sent, size=upload.size)
        candidate.timings["upload_s"] = round(time.monotonic() - t0 - candidate.timings["prepare_s"], 3)

        # ---- 4. create the candidate from the clean base --------------------------------------------------
        async def progress(p: CreateProgress) -> None:
            await note("create", status=p.status, completed=p.completed, total=p.total)

        create_args: dict[str, Any] = {"template": fmt.template, "system": fmt.system or None,
                                       "parameters": fmt.parameters(), "on_progress": progress}
        created = True  # from here on a failure may leave a half-made tag behind
        if config.mode == "adapter":
            await client.create(tag, from_=config.ollama_base, adapters=candidate.blobs, **create_args)
        else:
            await client.create(tag, files=candidate.blobs, quantize=config.quantize, **create_args)
        await _check_created(client, tag, fmt)

        # ---- 5. warm-up: a base/adapter mismatch only shows when Ollama loads the model ------------------
        try:
            hello = await client.chat(tag, WARM_UP, {**config.options, "num_predict": 8})
        except OllamaError as exc:
            raise DeployFailed(f"warm-up chat failed (does the adapter match the base {config.ollama_base}?): "
                               f"{exc}") from exc
        await note("warmed_up", reply=hello)
        return candidate
    except BaseException:
        if created:
            await _forget(client, tag)
        raise


async def judge_candidate(client: OllamaClient, config: DeployConfig, tag: str, active_tag: str | None,
                          eval_conversations: list[Any]) -> GateResult:
    """The gate: the candidate against the active model on the snapshot's eval split and the probes."""
    if active_tag and not await client.has_model(active_tag):
        raise DeployFailed(f"the active model {active_tag} is not in Ollama; cannot compare (restore it or "
                           "promote another version first)")
    prompts = eval_prompts(eval_conversations, config.eval_limit)
    return await run_gate(client, tag, active_tag, prompts, probe_prompts(config.probes), config.gate_margin,
                          config.options)


async def forget(client: OllamaClient, tag: str) -> bool:
    """Delete a candidate that will not serve; True when it is gone from Ollama."""
    return await _forget(client, tag)


async def fail_interrupted(store: Store, client: OllamaClient, model_name: str) -> list[str]:
    """Mark failed the versions a crashed deploy left half-way (never the active one) and drop their tags."""
    active = await store.active_model_version()
    marked = []
    for v in await store.list_model_versions():
        if v.name == model_name and v.status in UNFINISHED and (active is None or v.id != active.id):
            removed = await _forget(client, v.tag)
            await store.update_model_version(v.tag, status="failed", in_ollama=not removed and v.in_ollama,
                                             failure_reason="interrupted: the deploy process stopped before finishing")
            marked.append(v.tag)
    return marked


async def apply_retention(store: Store, client: OllamaClient, model_name: str, keep: int) -> list[str]:
    """Delete fine-tuned tags beyond the newest ``keep`` in Ollama, never the active one or the rollback target."""
    deleted = []
    for v in await store.retention_candidates(keep):
        if v.name != model_name:
            continue
        try:
            await client.delete(v.tag)
        except ModelNotFound:
            pass  # already gone: the store catches up
        await store.update_model_version(v.tag, in_ollama=False)
        deleted.append(v.tag)
    return deleted


async def promote(store: Store, client: OllamaClient, tag: str) -> ModelVersion:
    """Make an existing version active, after checking Ollama still has it."""
    version = await store.get_model_version(tag)
    if not await client.has_model(tag):
        if version.in_ollama:
            await store.update_model_version(tag, in_ollama=False)
        raise DeployFailed(f"{tag} is not in Ollama any more (deleted by retention?); deploy it again instead")
    return await store.promote(tag)


class AlreadyActive(Exception):
    """A rollback to the version that already answers: nothing was changed (a retried request, typically)."""

    def __init__(self, version: ModelVersion) -> None:
        super().__init__(f"{version.tag} is already the active model; nothing was rolled back")
        self.version = version


_ROLLBACK_LOCKS: weakref.WeakKeyDictionary[Store, asyncio.Lock] = weakref.WeakKeyDictionary()


async def rollback(store: Store, client: OllamaClient, to: int | str | None = None) -> ModelVersion:
    """Switch back to the previous good version (checked to be in Ollama first).

    ``to`` (a version id or tag) names the version the caller saw as the target, so a retried request cannot
    roll back twice: if ``to`` already answers, AlreadyActive is raised and nothing changes."""
    # One rollback at a time per store in this process: a retry that arrives while the first one waits on
    # Ollama then sees the switched pointer instead of computing "one back" from the old one.
    async with _ROLLBACK_LOCKS.setdefault(store, asyncio.Lock()):
        target = await store.rollback_target() if to is None else await _named_rollback_target(store, to)
        if target is None:
            raise DeployFailed("there is no earlier good model version to roll back to")
        if not await client.has_model(target.tag):
            await store.update_model_version(target.tag, in_ollama=False)
            raise DeployFailed(f"the rollback target {target.tag} is not in Ollama any more; "
                               "promote a version that is")
        switched = await store.rollback()
    if switched.id != target.id:  # another process rolled back between the check and the switch
        log.warning("rollback to %s switched to %s instead (a concurrent rollback)", target.tag, switched.tag)
    return switched


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


async def _check_base(client: OllamaClient, base: str, fmt: ServingFormat) -> None:
    if base.startswith("loraloop-"):
        raise DeployFailed(f"ollama_base {base} is a fine-tuned tag; candidates must be created from the clean base")
    try:
        shown = await client.show(base)
    except ModelNotFound as exc:
        raise DeployFailed(f"the base model {base} is not in Ollama: run `ollama pull {base}` on the Ollama host"
                           ) from exc
    if "ADAPTER" in str(shown.get("modelfile", "")).split():
        raise DeployFailed(f"the base model {base} already carries an adapter; use a clean base tag")
    if not fmt.system and shown.get("system"):
        raise DeployFailed(
            f"the base {base} has SYSTEM {shown['system']!r}, which the training data did not have and an empty "
            "SYSTEM cannot remove; set system_prompt for training and serving"
        )


async def _check_created(client: OllamaClient, tag: str, fmt: ServingFormat) -> None:
    shown = await client.show(tag)
    if shown.get("template") != fmt.template or (shown.get("system") or "") != fmt.system:
        raise DeployFailed(f"Ollama registered {tag} with a different TEMPLATE/SYSTEM than requested")


async def _forget(client: OllamaClient, tag: str) -> bool:
    """Delete a candidate that will not serve; True when it is gone from Ollama."""
    try:
        await client.delete(tag)
    except ModelNotFound:
        return True
    except OllamaError:
        return False
    return True


def _read_run(adapter_dir: Path) -> dict[str, Any]:
    if not (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "adapter.gguf").is_file():
        raise DeployFailed(f"{adapter_dir} is not an adapter directory (no adapter_config.json)")
    run = adapter_dir / "run.json"
    return json.loads(run.read_text(encoding="utf-8")) if run.is_file() else {}


def _hyperparameters(adapter_dir: Path) -> dict[str, Any]:
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.is_file():
        return {}
    data = json.loads(cfg.read_text(encoding="utf-8"))
    return {k: data.get(k) for k in ("r", "lora_alpha", "target_modules", "base_model_name_or_path") if k in data}


def _base_dir(run: dict[str, Any]) -> Path | None:
    return Path(run["base_dir"]) if run.get("base_dir") else None


def _artifacts(adapter_dir: Path, base_dir: Path | None, config: DeployConfig) -> dict[str, Path]:
    """The files Ollama gets, by the name it sees them under."""
    if config.mode == "adapter":
        existing = adapter_dir / "adapter.gguf"
        weights = adapter_dir / "adapter_model.safetensors"
        if existing.is_file() and (not weights.is_file() or existing.stat().st_mtime >= weights.stat().st_mtime):
            return {"adapter.gguf": existing}  # converted before (e.g. by `loraloop deploy convert`)
        if base_dir is None:
            raise DeployFailed("converting the adapter needs the base model directory (base_dir)")
        from deploy import gguf

        out = adapter_dir / "adapter.gguf"
        try:
            gguf.convert_adapter(adapter_dir, base_dir, out, outtype=config.outtype)
        except gguf.ConversionError as exc:
            raise DeployFailed(f"converting the adapter to GGUF failed: {exc}") from exc
        return {"adapter.gguf": out}
    if base_dir is None:
        raise DeployFailed("merging needs the base model directory (base_dir)")
    from deploy import merge

    merged = adapter_dir / "merged"
    if not (merged / "config.json").is_file():
        try:
            merge.merge_adapter(adapter_dir, base_dir, merged)
        except merge.MergeError as exc:
            raise DeployFailed(f"merging the adapter into the base failed: {exc}") from exc
    return {p.relative_to(merged).as_posix(): p for p in sorted(merged.rglob("*")) if p.is_file()}


def _eval_conversations(snapshot: Any) -> list[Any]:
    if not snapshot:
        return []
    return list(read_snapshot(Path(snapshot)).eval)
