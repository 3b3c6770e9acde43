"""A candidate version in Ollama, and its verdict: what the GPU worker does for a retrain, with no database.

:func:`register_candidate`: adapter dir → the path chosen from the daemon's facts (adapter, gguf or merged) → the
files Ollama gets → only the missing blobs uploaded → the tag created from the clean base (never from a
fine-tuned tag: Ollama inherits adapters, they would stack) → a warm-up chat → Ollama's own rendering of a few
chats compared with training's. :func:`judge_candidate`: the gate (deploy/gate.py), the candidate against what
answers now.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.config import DeployConfig
from deploy.errors import DeployFailed
from deploy.gate import GateConfig, GateResult, eval_prompts, probe_prompts, run_gate
from deploy.modelfile import SERVED_CHECK_CHATS, ServingFormat, TrainedPrompts, serving_format_for, trained_format
from deploy.ollama import CreateProgress, ModelNotFound, OllamaClient, OllamaError
from deploy.options import option_type_error
from deploy.promotion import forget
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
from deploy.run_files import run_record

if TYPE_CHECKING:
    from deploy.merge import GgufBuild

WARM_UP = [{"role": "user", "content": "Hello"}]


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
    base_dir = base_dir or run_record(adapter_dir).base_dir
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
