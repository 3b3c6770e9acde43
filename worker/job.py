"""One retrain job, on whichever machine trains: snapshot → ``python -m trainer train`` (a child process) → GGUF →
Ollama blobs + create → warm-up → gate against the active model.

It needs no database and no shared filesystem: everything comes in the :class:`JobSpec`, everything goes
back as events through ``emit`` (trainer/progress.py ProgressEvent): started, stage (training, converting,
registering, evaluating), the trainer's step and eval, upload, and one of result, failed or cancelled.

The bot's orchestrator turns them into state changes; the candidate tag stays in Ollama after a result
(the orchestrator promotes it or deletes it) and is deleted here after a failure or cancellation.

Run as ``python -m worker.job DIR``: the local dispatcher's child process (spec in DIR/spec.json, what it
agrees to do in DIR/policy.json, events appended to DIR/events.jsonl, cancelled by a DIR/cancel file or SIGTERM).

A job is data from elsewhere (on a worker: whatever sits in Redis), so :func:`validate_job` reads it through the
:class:`JobSpec` model (types, unknown and missing fields) and checks it against the training host's own
:class:`WorkerPolicy` (including its :class:`JobLimits` for every number) before anything is created or
contacted; both the worker and the local child call it. On Redis a job travels as a :class:`SignedJob`, which a
worker opens (:func:`open_signed_job`) before reading anything in it; and whatever a job says, a worker never
creates a model over one that exists (:func:`refuse_in_ollama`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import hashlib
import hmac
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import ErrorDetails

from data.community_names import NAME, lineage_name
from data.errors import LoraloopError
from data.snapshot import (
    EXAMPLES_FILE,
    FORMAT,
    MANIFEST_FILE,
    PREFERENCES_FILE,
    Snapshot,
    SnapshotError,
    parse_manifest,
    read_snapshot,
)
from deploy.config import DeployConfig
from deploy.ollama import OllamaClient
from trainer.config import TrainConfig
from trainer.progress import (
    CancelledEvent,
    EvalEvent,
    FailedEvent,
    ProgressEvent,
    ResultEvent,
    StageEvent,
    StartedEvent,
    StepEvent,
    UploadEvent,
    parse_event,
)
from worker.settings import JobLimits, WorkerSettings, redact_text

log = logging.getLogger("loraloop.job")

Emit = Callable[[ProgressEvent], None]


class JobSpec(BaseModel):
    """Everything one job needs: the bot writes it (:meth:`to_json`), the training host reads it
    (:func:`validate_job`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: int
    # The community whose run this is (data/communities.py): the candidate tag must be of its lineage.
    community: str
    tag: str  # the candidate's Ollama tag, allocated by the bot: loraloop-<lineage of model and community>:v<N>
    base_model: str  # HF id or a directory on the training host
    ollama_host: str
    deploy: DeployConfig
    snapshot_sha256: str
    snapshot_files: dict[str, str]  # file name → text (examples.jsonl, manifest.json, optionally preferences.jsonl)
    train: TrainConfig = Field(default_factory=TrainConfig)
    active_tag: str | None = None  # a worker checks that it exists in Ollama (refuse_in_ollama)
    time_limit_s: float = 6 * 3600
    heartbeat_ttl_s: float = 60.0

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        """The spec as written by :meth:`to_json`, types checked; :func:`validate_job` adds the host's policy."""
        return cls.model_validate_json(text, strict=True)


class JobStopped(LoraloopError):
    """Cancelled, or over its time limit: the reason is the message."""


class TrainingFailed(LoraloopError):
    """The training subprocess exited non-zero; the message holds its last error line."""


class JobRefused(LoraloopError, ValueError):
    """A job that failed validation; the message names the field and why. Nothing was created or contacted."""


class WorkerPolicy(BaseModel):
    """What a training host agrees to do, from its own settings: never from the job it is asked to run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path  # every job directory lies inside it
    model_name: str  # candidate tags are loraloop-<model_name>[-<community>]:v<N> (lineage)
    base_models: tuple[str, ...]  # HF ids or local directories it agrees to train on
    ollama_host: str  # the only Ollama it talks to
    max_time_limit_s: float  # a job asking for longer gets this
    limits: JobLimits = Field(default_factory=JobLimits)  # a job with a number outside them is refused
    llama_cpp_dir: Path | None = None  # llama.cpp's converter for the gguf deploy path (settings.llama_cpp_dir)
    # Jobs from Redis must be signed with it (open_signed_job). Never written out (policy.json): the local child
    # reads its job from a file the bot wrote, not from Redis.
    job_secret: SecretStr | None = Field(default=None, exclude=True)

    @classmethod
    def for_worker(cls, settings: WorkerSettings) -> WorkerPolicy:
        """A ``loraloop worker``: its base model plus ``worker_allowed_base_models``, its own Ollama."""
        return cls(home=Path(settings.worker_home).resolve(), model_name=settings.model_name,
                   base_models=tuple(dict.fromkeys([settings.base_model, *settings.worker_allowed_base_models])),
                   ollama_host=settings.worker_ollama_host or settings.ollama_host,
                   max_time_limit_s=float(settings.worker_time_limit_s), limits=settings.worker_limits,
                   job_secret=settings.worker_job_secret, llama_cpp_dir=settings.llama_cpp_dir)

    @classmethod
    def for_local(cls, settings: WorkerSettings) -> WorkerPolicy:
        """Training on the bot's host (the local dispatcher): the same allow-list, the bot's own Ollama."""
        return cls(home=(Path(settings.home) / "jobs").resolve(), model_name=settings.model_name,
                   base_models=tuple(dict.fromkeys([settings.base_model, *settings.worker_allowed_base_models])),
                   ollama_host=settings.ollama_host, max_time_limit_s=float(settings.worker_time_limit_s),
                   limits=settings.worker_limits, llama_cpp_dir=settings.llama_cpp_dir)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerPolicy:
        return cls.model_validate_json(text)


# ---- signed jobs ---------------------------------------------------------------------------------------------
#
# Redis has no authentication in the documented deployment, so a job must prove it comes from the bot. HMAC-SHA256
# with a secret both hosts share (worker_job_secret), not Celery's message signing (task_serializer "auth"): that
# needs an X.509 key, certificate and certificate store on each host and the cryptography package, signs only the
# message body under a Celery-wide serializer switch, and would still leave the job's own checks to do here. The
# MAC covers the exact JobSpec text the bot wrote (JobSpec.to_json, pydantic's deterministic dump), so the worker
# verifies bytes before it parses them: no canonical form to get wrong, and nothing in an unsigned job (its run
# id included) is believed. The signing time is covered too: a copy replayed after the run's claim in Redis has
# expired (a week, worker/celery_app.py KEEP_S) is refused as too old.

JOB_SIGNATURE = "loraloop-job/1"  # what the MAC is for: a MAC made for anything else with this secret never fits
MAX_JOB_AGE_S = 7 * 86400
MAX_CLOCK_SKEW_S = 3600


class SignedJob(BaseModel):
    """A job as it crosses Redis: the JobSpec's JSON text, when it was signed, and its HMAC-SHA256 (hex)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: str
    signed_at: int  # Unix seconds
    hmac: str

    @classmethod
    def sign(cls, job: JobSpec | str, secret: SecretStr, now: float | None = None) -> SignedJob:
        """The bot's side: the job (a spec, or JSON text as is) signed with the shared ``worker_job_secret``."""
        text, signed_at = job.to_json() if isinstance(job, JobSpec) else job, int(time.time() if now is None else now)
        return cls(job=text, signed_at=signed_at, hmac=_job_mac(secret, text, signed_at))

    def to_json(self) -> str:
        return self.model_dump_json()


def _job_mac(secret: SecretStr, job: str, signed_at: int) -> str:
    message = f"{JOB_SIGNATURE}\n{signed_at}\n{job}".encode()
    return hmac.new(secret.get_secret_value().encode(), message, hashlib.sha256).hexdigest()


def open_signed_job(raw: Any, secret: SecretStr | None, now: float | None = None) -> str:
    """The JobSpec text inside ``raw`` (a :class:`SignedJob`'s JSON) if its HMAC matches ``secret`` and it was
    signed within a week, else :class:`JobRefused`. Nothing inside the job is read before that."""
    if secret is None:
        raise JobRefused("this worker has no worker_job_secret, so it can verify no job")
    try:
        if not isinstance(raw, str | bytes):
            raise ValueError(type(raw).__name__)
        signed = SignedJob.model_validate_json(raw, strict=True)
    except ValueError:  # pydantic's ValidationError too
        raise JobRefused("the job is not signed (not a {job, signed_at, hmac} object): only a bot that shares "
                         "this worker's LORALOOP_WORKER_JOB_SECRET can send jobs") from None
    if not hmac.compare_digest(signed.hmac.encode(), _job_mac(secret, signed.job, signed.signed_at).encode()):
        raise JobRefused("the job's signature does not match this worker's LORALOOP_WORKER_JOB_SECRET (forged, "
                         "altered after signing, or signed with another secret)")
    age = (time.time() if now is None else now) - signed.signed_at
    if age > MAX_JOB_AGE_S:
        raise JobRefused(f"the job was signed {age / 86400:.1f} days ago, over {MAX_JOB_AGE_S // 86400}: an old "
                         "job is not run again")
    if age < -MAX_CLOCK_SKEW_S:
        raise JobRefused(f"the job was signed {-age:.0f} s in the future: check the clocks of the bot and worker")
    return signed.job


async def refuse_in_ollama(client: OllamaClient, spec: JobSpec) -> None:
    """:class:`JobRefused` unless the candidate's tag is new to Ollama and the active tag (when the job names one)
    is there. The first keeps a worker from ever creating a model over an existing one, the active model
    included, whatever a job says; the second means the gate compares against a model that answers, not a name.
    Raises OllamaError when Ollama cannot be asked."""
    names = {m.name.lower() for m in await client.list_models()}  # Ollama's names are case-insensitive
    if spec.tag.lower() in names:
        raise JobRefused(f"tag {spec.tag!r} already exists in Ollama: a worker never creates a model over an "
                         "existing one")
    if spec.active_tag is not None and spec.active_tag.lower() not in names:
        raise JobRefused(f"active_tag {spec.active_tag!r} is not in Ollama: the gate has nothing to compare with")


# The store's own naming rules (data/community_names.py, no database stack): the same functions on both hosts.
_COMMUNITY = NAME
lineage = lineage_name


_ANY_TAG = re.compile(r"^loraloop-[A-Za-z0-9][A-Za-z0-9_.\-]*:v[1-9][0-9]*$")
_OLLAMA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*(:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_SNAPSHOT_FILES = (f"snapshot_files must be exactly {EXAMPLES_FILE} and {MANIFEST_FILE} (and optionally "
                   f"{PREFERENCES_FILE}) as text")


def validate_job(raw: Any, policy: WorkerPolicy) -> JobSpec:
    """The job in ``raw`` (its JSON text) as a :class:`JobSpec` this host may run, or :class:`JobRefused`.

    :class:`JobSpec` checks the types (strictly: no "3" for 3) and refuses unknown and missing fields; then the
    snapshot (file names, manifest, sha256 of the payload, before anything is written), the candidate tag
    (``loraloop-<our model_name's lineage in the job's community>:v<N>``, never the active tag), every number
    against the policy's limits, the base model (the policy's allow-list) and the trainer settings (no file
    paths) are checked. The job's Ollama
    host is not used: the returned spec carries the policy's, and its time limit is capped by the policy's.
    """
    if not isinstance(raw, bytes | str):  # a decoded job (a Celery argument): read as the JSON it came as
        try:
            raw = json.dumps(raw)
        except (TypeError, ValueError):
            raise JobRefused(f"the job must be a JSON object, not {type(raw).__name__}") from None
    try:
        spec = JobSpec.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise _refusal(exc.errors(), raw) from None
    if spec.run_id < 1:
        raise JobRefused(f"run_id must be positive, not {spec.run_id}")
    active = spec.active_tag
    if active is not None and not _ANY_TAG.match(active):
        raise JobRefused(f"active_tag {active!r} is not a loraloop model tag")
    for name in ("time_limit_s", "heartbeat_ttl_s"):
        value = getattr(spec, name)
        if not (math.isfinite(value) and value > 0):
            raise JobRefused(f"{name} must be a positive number of seconds, not {value!r}")
    _check_bounds(spec, policy.limits)

    if not _COMMUNITY.fullmatch(spec.community):
        raise JobRefused(f"community {spec.community!r} is not a community name")
    # The tag is checked against the job's own (signed) community: a job of one community never names, and so
    # never creates or deletes, a tag of another's lineage.
    tag, name = spec.tag, lineage(policy.model_name, spec.community)
    if not re.fullmatch(rf"loraloop-{re.escape(name)}:v[1-9][0-9]*", tag):
        raise JobRefused(f"tag {tag!r} is not a candidate tag of community {spec.community!r} for this worker's "
                         f"model (loraloop-{name}:v<N>)")
    if tag == active:
        raise JobRefused(f"tag {tag!r} is the active model's tag: a job never overwrites the active model")
    if spec.base_model not in policy.base_models:
        raise JobRefused(f"base model {spec.base_model!r} is not one this worker trains "
                         f"({', '.join(policy.base_models)}; see worker_allowed_base_models)")
    _check_snapshot(spec.snapshot_files, spec.snapshot_sha256)
    _check_deploy(spec.deploy, policy)
    _check_train(spec.train)
    return spec.model_copy(update={"ollama_host": policy.ollama_host,
                                   "time_limit_s": min(spec.time_limit_s, policy.max_time_limit_s)})


def job_dir(policy: WorkerPolicy, run_id: int, task_id: str) -> Path:
    """The job's directory, inside the policy's home (refused: a task id that could point elsewhere)."""
    if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
        raise JobRefused(f"task id {task_id!r} may only hold letters, digits, '-' and '_'")
    home = policy.home.resolve()
    workdir = (home / f"run-{run_id}-{task_id[-8:]}").resolve()
    if workdir.parent != home:
        raise JobRefused(f"the job directory {workdir} is not inside the worker's home {home}")
    return workdir


# What a JobSpec field's type error says it must be (JSON types, as a forger sees them).
_KINDS = {"int_type": "int", "string_type": "str", "float_type": "int or float", "dict_type": "dict",
          "model_type": "dict", "dataclass_type": "dict", "bool_type": "bool"}


def _refusal(errors: list[ErrorDetails], raw: str | bytes) -> JobRefused:
    """One JobRefused for JobSpec's validation errors: the first field at fault, named as the job names it."""
    top = [e for e in errors if len(e["loc"]) == 1]
    unknown = sorted(str(e["loc"][0]) for e in top if e["type"] == "extra_forbidden")
    missing = sorted(str(e["loc"][0]) for e in top if e["type"] == "missing")
    if unknown or missing:
        return JobRefused("the job " + "; ".join(
            ([f"has unknown fields {', '.join(unknown)}"] if unknown else [])
            + ([f"lacks {', '.join(missing)}"] if missing else [])))
    first = errors[0]
    if not first["loc"]:  # the job as a whole
        if first["type"] == "json_invalid":
            return JobRefused(f"the job is not valid JSON ({first['msg']})")
        return JobRefused(f"the job must be a JSON object, not {type(json.loads(raw)).__name__}")
    name = str(first["loc"][0])
    if name == "snapshot_files":
        return JobRefused(f"{_SNAPSHOT_FILES}, not {_shown_files(raw)}")
    if len(first["loc"]) == 1 and first["type"] in _KINDS:
        return JobRefused(f"{name} must be {_KINDS[first['type']]}, not {type(first['input']).__name__}")
    inside = [e for e in errors if e["loc"][:1] == (name,)]
    extra = sorted(str(e["loc"][1]) for e in inside if e["type"] == "extra_forbidden" and len(e["loc"]) == 2)
    if extra:
        return JobRefused(f"{name} has unknown fields {', '.join(extra)}")
    return JobRefused(f"{name}: " + _errors(inside))


def _shown_files(raw: str | bytes) -> list[str]:
    try:
        return sorted(map(str, json.loads(raw)["snapshot_files"]))
    except (ValueError, TypeError, KeyError):
        return []


def _check_snapshot(files: dict[str, str], sha256: str) -> None:
    if not _SHA256.match(sha256):
        raise JobRefused("snapshot_sha256 must be 64 lowercase hex digits")
    names = set(files) - {PREFERENCES_FILE}  # preference records travel in their own, optional file
    if names != {EXAMPLES_FILE, MANIFEST_FILE}:
        raise JobRefused(f"{_SNAPSHOT_FILES}, not {sorted(files)}")
    try:
        manifest = parse_manifest(files[MANIFEST_FILE])
    except SnapshotError:
        try:
            json.loads(files[MANIFEST_FILE])
        except ValueError:
            raise JobRefused(f"the snapshot's {MANIFEST_FILE} is not valid JSON") from None
        raise JobRefused(f"the snapshot's {MANIFEST_FILE} is not a {FORMAT} manifest for {EXAMPLES_FILE}") from None
    actual = hashlib.sha256(files[EXAMPLES_FILE].encode("utf-8")).hexdigest()
    if not actual == manifest.sha256 == sha256:
        raise JobRefused(f"the snapshot does not match its hash: {EXAMPLES_FILE} is {actual[:12]}…, its manifest "
                         f"says {manifest.sha256[:12]}…, the job says {sha256[:12]}…")
    listed = manifest.preferences
    if (listed is None) != (PREFERENCES_FILE not in files):
        raise JobRefused(f"the snapshot's manifest and files disagree on {PREFERENCES_FILE}")
    if listed is not None and listed.sha256 != hashlib.sha256(files[PREFERENCES_FILE].encode("utf-8")).hexdigest():
        raise JobRefused(f"the snapshot's {PREFERENCES_FILE} does not match the sha256 its manifest lists")


def _check_deploy(config: DeployConfig, policy: WorkerPolicy) -> None:
    if config.model_name != policy.model_name:
        raise JobRefused(f"deploy.model_name {config.model_name!r} is not this worker's model "
                         f"{policy.model_name!r}")
    if not _OLLAMA_NAME.match(config.ollama_base):
        raise JobRefused(f"deploy.ollama_base {config.ollama_base!r} is not an Ollama model name")


def _check_bounds(spec: JobSpec, limits: JobLimits) -> None:
    """Every number in the job within this worker's limits (and every float finite): a job may not make a run
    take weeks, nor switch the gate off with a huge margin."""
    t, d, dpo = spec.train, spec.deploy, spec.train.dpo
    options = {"deploy.serve_options": d.serve_options, "deploy.gate_options": d.gate_options}
    # (the job's field, its value, the smallest value allowed, the JobLimits field that is the largest)
    bounds: list[tuple[str, float | None, float, str]] = [
        ("run_id", spec.run_id, 1, "max_run_id"),
        ("heartbeat_ttl_s", spec.heartbeat_ttl_s, limits.min_heartbeat_ttl_s, "max_heartbeat_ttl_s"),
        ("train.max_steps", t.max_steps, 1, "max_steps"),
        ("train.epochs", t.epochs, 1, "max_epochs"),
        ("train.lora_r", t.lora_r, 1, "max_lora_r"),
        ("train.max_length", t.max_length, 8, "max_length"),
        ("train.batch_size", t.batch_size, 1, "max_batch_size"),
        ("train.grad_accum", t.grad_accum, 1, "max_grad_accum"),
        ("train.max_new_tokens", t.max_new_tokens, 1, "max_new_tokens"),
        ("train.retention_max_new_tokens", t.retention_max_new_tokens, 1, "max_new_tokens"),
        ("train.eval_generate", t.eval_generate, 0, "max_eval_generate"),
        ("train.probes", len(t.probes), 0, "max_probes"),
        ("train.probe_eval_samples", t.probe_eval_samples, 0, "max_probes"),
        ("train.retention_prompts", t.retention_prompts, 0, "max_retention_prompts"),
        ("train.dpo.epochs", dpo.epochs, 1, "max_epochs"),
        ("train.dpo.max_steps", dpo.max_steps, 1, "max_steps"),
        ("train.dpo.batch_size", dpo.batch_size, 1, "max_batch_size"),
        ("train.dpo.grad_accum", dpo.grad_accum, 1, "max_grad_accum"),
        ("deploy.eval_limit", d.eval_limit, 0, "max_eval_limit"),
        ("deploy.gate_margin", d.gate_margin, 0, "max_gate_margin"),
        ("deploy.max_retention_drop", d.max_retention_drop, 0, "max_retention_drop"),
        ("deploy.paraphrases", d.paraphrases, 0, "max_paraphrases"),
        ("deploy.consistency_n", d.consistency_n, 0, "max_consistency_n"),
        ("deploy.probes", len(d.probes), 0, "max_probes"),
        *((f"{name}.{key}", opts.get(key), 1, f"max_{key}") for name, opts in options.items()
          for key in ("num_ctx", "num_predict")),
    ]
    for name, value, low, limit in bounds:
        high = getattr(limits, limit)
        if value is None:
            continue
        if not math.isfinite(value):
            raise JobRefused(f"{name} must be a finite number, not {value!r}")
        if value > high:
            raise JobRefused(f"{name} {_shown(value)} is over this worker's limit of {_shown(high)} "
                             f"(LORALOOP_WORKER_LIMITS__{limit.upper()})")
        if value < low:
            raise JobRefused(f"{name} {_shown(value)} is under the least this worker accepts, {_shown(low)}")
    floats = [(f"train.{k}", v) for k, v in t.model_dump().items() if isinstance(v, float)]
    floats += [(f"train.dpo.{k}", v) for k, v in dpo.model_dump().items() if isinstance(v, float)]
    floats += [(f"{name}.{k}", v) for name, opts in options.items() for k, v in opts.items() if isinstance(v, float)]
    for name, value in floats:
        if not math.isfinite(value):
            raise JobRefused(f"{name} must be a finite number, not {value!r}")


def _shown(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_train(config: TrainConfig) -> None:
    if config.chat_template is not None and "{" not in config.chat_template:
        # TrainConfig reads a template *file* when given a path: a job may not name files on this host.
        raise JobRefused("train.chat_template must be template text, not a path on the worker")
    if config.general_prompts_file is not None:  # the same: the bot sends the prompts themselves (general_prompts)
        raise JobRefused("train.general_prompts_file names a file on the worker; send train.general_prompts instead")


def _errors(errors: list[ErrorDetails]) -> str:
    def message(e: ErrorDetails) -> str:
        # A model's own check (DeployConfig's option check): its message, without pydantic's "Value error, ".
        error = (e.get("ctx") or {}).get("error")
        return str(error) if e["type"] == "value_error" and error is not None else e["msg"]

    return "; ".join(": ".join(filter(None, (".".join(map(str, e["loc"][1:])), message(e)))) for e in errors[:3])


async def run_job(spec: JobSpec, workdir: Path, emit: Emit, cancelled: Callable[[], bool] = lambda: False,
                  ollama_host: str | None = None, llama_cpp_dir: Path | None = None) -> ResultEvent | None:
    """Do the job; every outcome is reported through ``emit`` (it never raises for a job condition).
    Returns the result event, or None when the job failed or was cancelled."""
    from deploy.candidate import judge_candidate, register_candidate
    from deploy.ollama import OllamaError
    from deploy.promotion import forget
    from deploy.registration import PathMemory
    from deploy.run_files import trained_retention

    deadline = time.monotonic() + spec.time_limit_s
    config = spec.deploy
    emit(StartedEvent(pid=os.getpid(), host=os.uname().nodename))
    client = OllamaClient(ollama_host or spec.ollama_host, timeout=300)
    registered = False
    try:
        try:  # the local child's job too, before hours of training
            await refuse_in_ollama(client, spec)
        except OllamaError as exc:  # down now: it may be back by the end; the check before registering holds
            log.warning("job %s: cannot ask Ollama about its tags before training: %s", spec.run_id,
                        redact_text(str(exc)))
        snapshot = await asyncio.to_thread(_write_snapshot, spec, workdir / "snapshot")
        emit(StageEvent(stage="training"))
        run_dir = workdir / "run"
        await _train(spec, snapshot.path, run_dir, emit, cancelled, deadline)
        _check(cancelled, deadline, spec)

        emit(StageEvent(stage="converting"))  # includes checking the base in Ollama
        registering = False

        async def on_deploy(step: str, **info: Any) -> None:
            nonlocal registering
            if step in ("uploading", "uploaded", "create") and not registering:
                registering = True
                emit(StageEvent(stage="registering"))
            if step == "uploading":  # a merged model is gigabytes: the status message shows the upload
                emit(UploadEvent(sent=info.get("total_sent"), total=info.get("total")))
            _check(cancelled, deadline, spec)

        # Beside the job folders: a fallback to merged that one job learned holds for the next job too.
        memory = PathMemory(workdir.parent / "ollama-paths.json")
        await refuse_in_ollama(client, spec)  # again: the tag may have been created while this job trained
        candidate = await register_candidate(run_dir, client=client, config=config, tag=spec.tag,
                                             emit=on_deploy, memory=memory, llama_cpp_dir=llama_cpp_dir)
        registered = True
        emit(StageEvent(stage="evaluating"))
        gate = await judge_candidate(client, config, spec.tag, spec.active_tag, list(snapshot.eval),
                                     retention=trained_retention(run_dir))
        _check(cancelled, deadline, spec)
        outputs = _run_outputs(run_dir)
        result = ResultEvent(gate=gate.to_dict(), table=gate.table() + _dpo_lines(outputs["metrics"].get("dpo")),
                             artifacts=candidate.artifacts(), bytes_uploaded=candidate.bytes_uploaded, **outputs)
        emit(result)
        return result
    except JobStopped as exc:
        if registered:
            await forget(client, spec.tag)
        emit(CancelledEvent(reason=str(exc)) if cancelled() else FailedEvent(reason=str(exc)))
    except (LoraloopError, OSError, ValueError) as exc:  # ValueError: a run file pydantic or json refused
        if registered:
            await forget(client, spec.tag)
        emit(FailedEvent(reason=redact_text(str(exc)) or exc.__class__.__name__))
    except Exception as exc:  # a bug: still report it, never leave the run hanging
        log.exception("job %s crashed", spec.run_id)
        if registered:
            await forget(client, spec.tag)
        emit(FailedEvent(reason=redact_text(f"unexpected error in the job: {exc!r}")))
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


def _resume_or_start_over(out: Path) -> bool:
    """Whether the trainer resumes the run in ``out``: --resume continues from a saved checkpoint and refuses a run
    without one, so a run stopped before its first (the trainer creates checkpoints/ long before) is removed."""
    if any((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        return True
    if out.exists():
        import shutil

        shutil.rmtree(out)
    return False


async def _train(spec: JobSpec, snapshot: Path, out: Path, emit: Emit, cancelled: Callable[[], bool],
                 deadline: float) -> None:
    """``python -m trainer train`` in a child process (a crash or OOM there cannot take this process down); its JSON
    progress lines become step events. It dies with this process (PR_SET_PDEATHSIG)."""
    config = out.parent / "train.yaml"  # the snapshot step created out.parent
    config.write_text(spec.train.to_yaml(), encoding="utf-8")
    resume = _resume_or_start_over(out)
    # The trainer's own entry point: the child loads neither the bot's CLI nor its settings, only the job's config.
    args = [sys.executable, "-m", "trainer", "train", "--snapshot", str(snapshot), "--base", spec.base_model,
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
        raise TrainingFailed(f"training failed (exit {code}): {_last_error(stderr_path)}")


def _forward(line: bytes, emit: Emit) -> None:
    """The trainer's step and eval events go on to the bot; its other lines stay here."""
    try:
        event = parse_event(line)
    except ValueError:  # pydantic's ValidationError too: not an event of this version's trainer
        return
    if isinstance(event, StepEvent | EvalEvent):
        emit(event)


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


def _dpo_lines(dpo: dict[str, Any] | None) -> str:
    """The DPO stage's lines under the gate's table (the Discord summary): what it did, or why it was skipped."""
    if not dpo:
        return ""
    if not dpo.get("ran"):
        return f"\nDPO skipped: {dpo.get('reason')}"
    before, after = dpo.get("before") or {}, dpo.get("after") or {}
    lines = [f"\nDPO on {dpo['pairs']['train']} preference pairs (β {dpo['beta']:g}, {dpo['steps']} steps), "
             f"held-out {dpo['pairs']['eval']}:"]
    for key, label in (("reward_accuracy", "reward accuracy"), ("reward_margin", "reward margin"),
                       ("logp_margin", "log-prob margin"), ("loss", "DPO loss")):
        if before.get(key) is not None and after.get(key) is not None:
            lines.append(f"  {label:<16} {before[key]:>8.3f} → {after[key]:.3f}")
    return "\n".join(lines)


def _run_outputs(run_dir: Path) -> dict[str, Any]:
    from deploy.run_files import TRAIN_METRICS  # what is carried back; the full metrics.json stays on the worker
    from trainer.metrics import METRICS_FILE, read_metrics

    record = read_metrics(run_dir)  # a malformed file is a ValueError naming it: the job fails with that reason
    if record is None:
        raise FileNotFoundError(f"{run_dir / METRICS_FILE}: the trainer finished without writing its metrics")
    metrics = record.to_dict()
    probes_path = run_dir / "probes.json"
    png = run_dir / "loss.png"
    return {
        "metrics": {k: metrics.get(k) for k in TRAIN_METRICS},
        "loss_curve": metrics.get("train_loss_curve", []),
        "probes": json.loads(probes_path.read_text(encoding="utf-8")) if probes_path.is_file() else [],
        "loss_png": base64.b64encode(png.read_bytes()).decode() if png.is_file() else None,
    }


# ---- the local dispatcher's child process ------------------------------------------------------------------


def file_emitter(path: Path) -> Emit:
    """Append one JSON line per event, stamped with the time (flushed, so a reader never sees half an event)."""
    def emit(event: ProgressEvent) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(stamped(event) + "\n")
    return emit


def stamped(event: ProgressEvent) -> str:
    """The event's JSON text with the time it was sent (``t``)."""
    return event.model_copy(update={"t": round(time.time(), 3)}).to_json()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    workdir = Path(argv[0])
    logging.basicConfig(level=logging.INFO, filename=workdir / "job.log",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    emit = file_emitter(workdir / "events.jsonl")
    try:
        policy = WorkerPolicy.from_json((workdir / "policy.json").read_text(encoding="utf-8"))
        spec = validate_job((workdir / "spec.json").read_text(encoding="utf-8"), policy)
        if workdir.resolve().parent != policy.home.resolve():
            raise JobRefused(f"the job directory {workdir} is not inside {policy.home}")
    except (JobRefused, OSError, ValueError, KeyError, TypeError) as exc:
        reason = redact_text(f"the job was refused: {exc}")
        log.error("%s", reason)
        emit(FailedEvent(reason=reason))
        return 1
    stop = {"term": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(term=True))
    cancel_file = workdir / "cancel"
    result = asyncio.run(run_job(spec, workdir, emit, lambda: stop["term"] or cancel_file.exists(),
                                 llama_cpp_dir=policy.llama_cpp_dir))
    return 0 if result is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
