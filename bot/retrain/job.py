"""One retrain job, on whichever machine trains: snapshot → ``loraloop train`` (a child process) → GGUF →
Ollama blobs + create → warm-up → gate against the active model.

It needs no database and no shared filesystem: everything comes in the :class:`JobSpec`, everything goes
back as events through ``emit`` (JSON-able dicts)::

    {"event": "started"}                                 the job began (on a worker: it picked the job up)
    {"event": "stage", "stage": "training"|"converting"|"registering"|"evaluating"}
    {"event": "step", "step", "total", "loss", "eta_s", "epoch"}      training progress
    {"event": "result", "gate": {...}, "metrics": {...}, "artifacts": {...}, "loss_png": base64|None, ...}
    {"event": "failed", "reason": "..."}  |  {"event": "cancelled", "reason": "..."}

The bot's orchestrator turns them into state changes; the candidate tag stays in Ollama after a result
(the orchestrator promotes it or deletes it) and is deleted here after a failure or cancellation.

Run as ``python -m bot.retrain.job DIR``: the local dispatcher's child process (spec in DIR/spec.json, events
appended to DIR/events.jsonl, cancelled by a DIR/cancel file or SIGTERM).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.snapshot import Snapshot, SnapshotError, read_snapshot

log = logging.getLogger("loraloop.job")

Emit = Callable[[dict[str, Any]], None]
STAGES = ("training", "converting", "registering", "evaluating")
# Metrics worth carrying back (the full metrics.json stays on the worker).
_METRICS = ("epochs", "steps", "device", "batching", "examples", "eval_loss_before", "eval_loss_after",
            "train_loss", "train_runtime_s", "tokens_per_s", "answers", "token_accuracy_before",
            "token_accuracy_after")


@dataclass
class JobSpec:
    """Everything one job needs, as plain JSON."""

    run_id: int
    tag: str  # the candidate's Ollama tag, allocated by the bot
    base_model: str  # HF id or a directory on the training host
    ollama_host: str
    deploy: dict[str, Any]  # deploy.pipeline.DeployConfig fields
    snapshot_sha256: str
    snapshot_files: dict[str, str]  # file name → text (examples.jsonl, manifest.json)
    train: dict[str, Any] = field(default_factory=dict)  # trainer.config.TrainConfig fields
    active_tag: str | None = None
    time_limit_s: float = 6 * 3600
    heartbeat_ttl_s: float = 60.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        return cls(**json.loads(text))


class JobStopped(Exception):
    """Cancelled, or over its time limit: the reason is the message."""


async def run_job(spec: JobSpec, workdir: Path, emit: Emit, cancelled: Callable[[], bool] = lambda: False,
                  ollama_host: str | None = None) -> dict[str, Any] | None:
    """Do the job; every outcome is reported through ``emit`` (it never raises for a job condition).
    Returns the result event, or None when the job failed or was cancelled."""
    from deploy.ollama import OllamaClient, OllamaError
    from deploy.pipeline import DeployConfig, DeployFailed, forget, judge_candidate, register_candidate

    deadline = time.monotonic() + spec.time_limit_s
    config = DeployConfig(**{k: tuple(v) if k == "probes" else v for k, v in spec.deploy.items()})
    emit({"event": "started", "pid": os.getpid(), "host": os.uname().nodename})
    client = OllamaClient(ollama_host or spec.ollama_host, timeout=300)
    registered = False
    try:
        snapshot = await asyncio.to_thread(_write_snapshot, spec, workdir / "snapshot")
        emit({"event": "stage", "stage": "training"})
        run_dir = workdir / "run"
        await _train(spec, snapshot.path, run_dir, emit, cancelled, deadline)
        _check(cancelled, deadline, spec)

        stage = {"uploaded": "registering", "create": "registering"}
        seen: set[str] = set()
        emit({"event": "stage", "stage": "converting"})  # includes checking the base in Ollama

        async def on_deploy(step: str, **info: Any) -> None:
            if step in stage and stage[step] not in seen:
                seen.add(stage[step])
                emit({"event": "stage", "stage": stage[step]})
            _check(cancelled, deadline, spec)

        candidate = await register_candidate(run_dir, client=client, config=config, tag=spec.tag,
                                             emit=on_deploy)
        registered = True
        emit({"event": "stage", "stage": "evaluating"})
        gate = await judge_candidate(client, config, spec.tag, spec.active_tag, list(snapshot.eval))
        _check(cancelled, deadline, spec)
        result = {"event": "result", "gate": gate.to_dict(), "table": gate.table(),
                  "artifacts": candidate.artifacts(), "bytes_uploaded": candidate.bytes_uploaded,
                  **_run_outputs(run_dir)}
        emit(result)
        return result
    except JobStopped as exc:
        if registered:
            await forget(client, spec.tag)
        emit({"event": "cancelled" if cancelled() else "failed", "reason": str(exc)})
    except (DeployFailed, OllamaError, SnapshotError, OSError, ValueError) as exc:
        if registered:
            await forget(client, spec.tag)
        emit({"event": "failed", "reason": str(exc) or exc.__class__.__name__})
    except Exception as exc:  # a bug: still report it, never leave the run hanging
        log.exception("job %s crashed", spec.run_id)
        if registered:
            await forget(client, spec.tag)
        emit({"event": "failed", "reason": f"unexpected error in the job: {exc!r}"})
    finally:
        await client.close()
    return None


def _check(cancelled: Callable[[], bool], deadline: float, spec: JobSpec) -> None:
    if cancelled():
        raise JobStopped("cancelled")
    if time.monotonic() > deadline:
        raise JobStopped(f"the job ran past its time limit of {spec.time_limit_s:g} s")


def _write_snapshot(spec: JobSpec, out: Path) -> Snapshot:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in spec.snapshot_files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad snapshot file name {name!r}")
        (out / name).write_text(text, encoding="utf-8")
    snapshot = read_snapshot(out)  # checks the payload against its manifest's sha256
    if snapshot.sha256 != spec.snapshot_sha256:
        raise ValueError(f"the snapshot arrived as {snapshot.sha256[:12]}…, expected {spec.snapshot_sha256[:12]}…")
    return snapshot


async def _train(spec: JobSpec, snapshot: Path, out: Path, emit: Emit, cancelled: Callable[[], bool],
                 deadline: float) -> None:
    """``loraloop train`` in a child process (a crash or OOM there cannot take this process down); its JSON
    progress lines become step events. It dies with this process (PR_SET_PDEATHSIG)."""
    config = out.parent / "train.yaml"  # the snapshot step created out.parent
    config.write_text(yaml.safe_dump(spec.train), encoding="utf-8")
    resume = (out / "checkpoints").is_dir()
    args = [sys.executable, "-m", "bot.cli", "train", "--snapshot", str(snapshot), "--base", spec.base_model,
            "--out", str(out), "--config", str(config), "--json-progress", *(["--resume"] if resume else [])]
    stderr_path = out.parent / "train.stderr"
    with open(stderr_path, "wb") as stderr:  # noqa: ASYNC230 (opening a log file; the child writes it)
        child = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                                                     preexec_fn=_die_with_parent, limit=1 << 20)
        assert child.stdout is not None
        try:
            while True:
                try:
                    line = await asyncio.wait_for(child.stdout.readline(), timeout=0.5)
                except TimeoutError:
                    _check(cancelled, deadline, spec)
                    continue
                if not line:
                    break
                _forward(line, emit)
                _check(cancelled, deadline, spec)
            code = await child.wait()
        except BaseException:
            await _stop(child)
            raise
    if code != 0:
        raise ValueError(f"training failed (exit {code}): {_last_error(stderr_path)}")


def _forward(line: bytes, emit: Emit) -> None:
    try:
        record = json.loads(line)
    except ValueError:
        return
    if record.get("event") in ("step", "eval"):
        emit({k: record.get(k) for k in ("event", "step", "total", "epoch", "loss", "eta_s", "eval_loss")
              if record.get(k) is not None})


async def _stop(child: asyncio.subprocess.Process) -> None:
    if child.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        await asyncio.wait_for(child.wait(), timeout=10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux), so a killed worker leaves no orphan."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _last_error(stderr_path: Path) -> str:
    lines = [ln.strip() for ln in stderr_path.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "traceback")) or "Error" in ln]
    return (errors or lines or ["no output"])[-1][:500]


def _run_outputs(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    probes_path = run_dir / "probes.json"
    png = run_dir / "loss.png"
    return {
        "metrics": {k: metrics.get(k) for k in _METRICS},
        "loss_curve": metrics.get("train_loss_curve", []),
        "probes": json.loads(probes_path.read_text(encoding="utf-8")) if probes_path.is_file() else [],
        "loss_png": base64.b64encode(png.read_bytes()).decode() if png.is_file() else None,
    }


# ---- the local dispatcher's child process ------------------------------------------------------------------


def file_emitter(path: Path) -> Emit:
    """Append one JSON line per event (flushed, so a reader never sees half an event)."""
    def emit(event: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**event, "t": round(time.time(), 3)}, ensure_ascii=False) + "\n")
    return emit


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    workdir = Path(argv[0])
    logging.basicConfig(level=logging.INFO, filename=workdir / "job.log",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = JobSpec.from_json((workdir / "spec.json").read_text(encoding="utf-8"))
    stop = {"term": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(term=True))
    cancel_file = workdir / "cancel"
    result = asyncio.run(run_job(spec, workdir, file_emitter(workdir / "events.jsonl"),
                                 lambda: stop["term"] or cancel_file.exists()))
    return 0 if result is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
