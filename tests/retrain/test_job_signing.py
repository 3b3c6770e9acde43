"""Only the bot's jobs run, and no job can replace a model: a job on Redis must carry the HMAC of the shared
``worker_job_secret`` (worker/job.py SignedJob), keep every number inside the worker's own limits (JobLimits), and
name a candidate tag Ollama does not have. Each refusal is one line in the worker's log and nothing else: no event
on the run it names, no claim, no directory, nothing created in Ollama."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.retrain.dispatch import CeleryDispatcher, DispatchError, LocalDispatcher
from tests.harness.retrain import JOB_SECRET, loop_settings, spec_for
from worker.celery_app import QUEUE, TASK, accept_job, keys, make_celery
from worker.job import JobSpec, SignedJob, WorkerPolicy, open_signed_job
from worker.settings import JobLimits, WorkerSettings

BASE_DIR = "/models/tiny-llama"  # never opened: no job here gets as far as training
ACTIVE = "loraloop-tiny:v1"
OTHER_SECRET = "not-the-secret-this-worker-shares"


@pytest.fixture
def served(ollama_server):
    """The Ollama-API test server with the active model (scripted: these jobs never chat)."""
    ollama_server.add_scripted_model(ACTIVE, "the active model's answer")
    return ollama_server


@pytest.fixture
def job(tmp_path) -> JobSpec:
    """A valid job as the bot writes it: candidate v2 against the active v1."""
    return spec_for(tmp_path, BASE_DIR, tag="loraloop-tiny:v2", active_tag=ACTIVE)


def sign(spec: JobSpec | dict, secret: str = JOB_SECRET, **kwargs) -> str:
    text = spec.to_json() if isinstance(spec, JobSpec) else json.dumps(spec)
    return SignedJob.sign(text, SecretStr(secret), **kwargs).to_json()


def edited(spec: JobSpec, **changes) -> dict:
    """The spec as JSON data with fields changed (dotted names reach into train and deploy)."""
    data = json.loads(spec.to_json())
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = data
        for p in parents:
            target = target[p]
        target[last] = value
    return data


def events_of(r, run_id: int) -> list[dict]:
    return [json.loads(e) for e in r.lrange(keys(run_id)["events"], 0, -1)]


class RealWorker:
    """``loraloop worker`` (tests/retrain/conftest.py) serving this module's jobs, and what its log says."""

    def __init__(self, tmp_path: Path, served, redis_url: str, start_worker) -> None:
        import redis

        self.settings = loop_settings(tmp_path, served.url, Path(BASE_DIR), dispatcher="celery",
                                      redis_url=redis_url)
        self.worker = start_worker(self.settings)
        self.app = make_celery(redis_url)
        self.redis = redis.Redis.from_url(redis_url)

    def send(self, run_id: int, body: str) -> None:
        self.app.send_task(TASK, args=[body], task_id=f"loraloop-run-{run_id}-abcd0000", queue=QUEUE, retry=False)

    def log(self) -> str:
        return self.worker.log.read_text(errors="replace")

    def refusals(self, n: int) -> list[str]:
        """The worker's first ``n`` refusal lines, once it has written them."""
        deadline = time.monotonic() + 60
        while len(lines := [ln for ln in self.log().splitlines() if " refused: " in ln]) < n:
            assert time.monotonic() < deadline, self.log()[-3000:]
            time.sleep(0.1)
        return lines

    def untouched(self, served, *run_ids: int) -> None:
        """Nothing on these runs, no run directory, and nothing created or uploaded in Ollama."""
        for run_id in run_ids:
            assert not self.redis.exists(*keys(run_id).values()), run_id
        assert not self.settings.worker_home.exists()
        assert not served.requests_to("POST", "/api/create") and not served.blob_uploads
        assert "Traceback" not in self.log() and JOB_SECRET not in self.log()
        assert self.worker.proc.poll() is None  # and it keeps serving


@pytest.fixture
def real_worker(tmp_path, served, redis_url, start_worker) -> RealWorker:
    return RealWorker(tmp_path, served, redis_url, start_worker)


def test_a_worker_runs_only_jobs_signed_with_its_secret(job, served, real_worker):
    active_before = served.get(ACTIVE).manifest_digest()
    # The forgery: the active tag as the candidate, "no active model", so the gate compares with the base.
    takeover = edited(job, run_id=23, tag=ACTIVE, active_tag=None)
    altered = json.loads(sign(job.model_copy(update={"run_id": 23})))
    altered["job"] = json.dumps(takeover)  # a signed job, edited after signing
    real_worker.send(21, job.model_copy(update={"run_id": 21}).to_json())  # unsigned: as the bot sent jobs before
    real_worker.send(22, sign(job.model_copy(update={"run_id": 22}), OTHER_SECRET))
    real_worker.send(23, json.dumps(altered))
    real_worker.send(25, sign(job.model_copy(update={"run_id": 25}), now=time.time() - 8 * 86400))  # a replay
    # The normal signed path: accepted, claimed and run (cancelled before it trains: this test needs no training).
    real_worker.redis.set(keys(24)["cancel"], "1")
    real_worker.send(24, sign(job.model_copy(update={"run_id": 24})))

    lines = real_worker.refusals(4)
    assert "job refused: the job is not signed" in lines[0]
    assert "job refused: the job's signature does not match" in lines[1]
    assert "job refused: the job's signature does not match" in lines[2]
    assert "job refused: the job was signed 8.0 days ago" in lines[3]
    deadline = time.monotonic() + 60
    while not (accepted := events_of(real_worker.redis, 24)):
        assert time.monotonic() < deadline, real_worker.log()[-3000:]
        time.sleep(0.1)
    assert [e["event"] for e in accepted] == ["cancelled"]
    assert len([ln for ln in real_worker.log().splitlines() if " refused: " in ln]) == 4
    real_worker.untouched(served, 21, 22, 23, 25)
    # Ollama was asked only for its tags, once: by the accepted job, before it claimed its run.
    assert [(m, p) for m, p, _ in served.requests] == [("GET", "/api/tags")]
    assert served.get(ACTIVE).manifest_digest() == active_before


def test_a_signed_job_never_creates_over_an_existing_model(job, served, real_worker):
    served.add_scripted_model("loraloop-tiny:v3", "a candidate kept for rollback")
    before = {name: served.get(name).manifest_digest() for name in served.names()}
    # Signed with the bot's secret (a leaked secret, a bug in the bot): the worker's own invariants still hold.
    real_worker.send(31, sign(edited(job, run_id=31, tag=ACTIVE, active_tag=None)))
    real_worker.send(32, sign(edited(job, run_id=32, tag="loraloop-tiny:v3")))
    real_worker.send(33, sign(edited(job, run_id=33, active_tag="loraloop-tiny:v9")))

    lines = real_worker.refusals(3)
    assert f"job 31 refused: tag '{ACTIVE}' already exists in Ollama" in lines[0]
    assert "job 32 refused: tag 'loraloop-tiny:v3' already exists in Ollama" in lines[1]
    assert "job 33 refused: active_tag 'loraloop-tiny:v9' is not in Ollama" in lines[2]
    real_worker.untouched(served, 31, 32, 33)
    assert {name: served.get(name).manifest_digest() for name in served.names()} == before


def test_a_real_worker_refuses_a_signed_job_outside_its_limits(job, served, real_worker):
    real_worker.send(41, sign(edited(job, run_id=41, train__max_steps=10_000_000)))
    real_worker.send(42, sign(edited(job, run_id=42, deploy__gate_margin=1.0)))  # every candidate would pass
    real_worker.send(43, sign(edited(job, run_id=43, deploy__serve_options={"num_ctx": 10_000_000})))
    real_worker.send(2**40, sign(edited(job, run_id=2**40)))

    lines = real_worker.refusals(4)
    assert "job 41 refused: train.max_steps 10000000 is over this worker's limit of 100000" in lines[0]
    assert "job 42 refused: deploy.gate_margin 1 is over this worker's limit of 0.2" in lines[1]
    assert "job 43 refused: deploy.serve_options.num_ctx 10000000 is over this worker's limit of 131072" in lines[2]
    assert f"job {2**40} refused: run_id {2**40} is over this worker's limit of 2147483647" in lines[3]
    real_worker.untouched(served, 41, 42, 43, 2**40)
    assert served.requests == []


# ---- every limit, through the worker's entry point --------------------------------------------------------------

OUT_OF_BOUNDS = {
    "run id": ({"run_id": 2**31}, "run_id 2147483648 is over"),
    "heartbeat of a day": ({"heartbeat_ttl_s": 86400}, "heartbeat_ttl_s 86400 is over"),
    "heartbeat too short": ({"heartbeat_ttl_s": 0.01}, "heartbeat_ttl_s 0.01 is under"),
    "steps": ({"train__max_steps": 100_001}, "train.max_steps 100001 is over"),
    "epochs": ({"train__epochs": 101}, "train.epochs 101 is over"),
    "lora rank": ({"train__lora_r": 4096}, "train.lora_r 4096 is over"),
    "sequence length": ({"train__max_length": 1_000_000}, "train.max_length 1000000 is over"),
    "batch": ({"train__batch_size": 100_000}, "train.batch_size 100000 is over"),
    "accumulation": ({"train__grad_accum": 100_000}, "train.grad_accum 100000 is over"),
    "answer length": ({"train__max_new_tokens": 100_000}, "train.max_new_tokens 100000 is over"),
    "eval answers": ({"train__eval_generate": 100_000}, "train.eval_generate 100000 is over"),
    "probe count": ({"train__probes": ["q?"] * 65}, "train.probes 65 is over"),
    "retention prompts": ({"train__retention_prompts": 100_000}, "train.retention_prompts 100000 is over"),
    "dpo epochs": ({"train__dpo": {"enabled": True, "epochs": 1000}}, "train.dpo.epochs 1000 is over"),
    "dpo steps": ({"train__dpo": {"max_steps": 10_000_000}}, "train.dpo.max_steps 10000000 is over"),
    "learning rate infinite": ({"train__learning_rate": float("inf")}, "train.learning_rate must be a finite"),
    "eval limit": ({"deploy__eval_limit": 100_000}, "deploy.eval_limit 100000 is over"),
    "gate margin": ({"deploy__gate_margin": 0.5}, "deploy.gate_margin 0.5 is over"),
    # The deploy: settings' own bound, which DeployConfig shares: refused by the model, before the limits.
    "gate margin negative": ({"deploy__gate_margin": -1.0},
                             "deploy: gate_margin: Input should be greater than or equal to 0"),
    "gate margin infinite": ({"deploy__gate_margin": float("inf")}, "deploy.gate_margin must be a finite"),
    "retention drop": ({"deploy__max_retention_drop": 50.0}, "deploy.max_retention_drop 50 is over"),
    "paraphrases": ({"deploy__paraphrases": 1000}, "deploy.paraphrases 1000 is over"),
    "consistency": ({"deploy__consistency_n": 1000}, "deploy.consistency_n 1000 is over"),
    "gate probes": ({"deploy__probes": ["q?"] * 65}, "deploy.probes 65 is over"),
    "context": ({"deploy__serve_options": {"num_ctx": 10_000_000}}, "deploy.serve_options.num_ctx 10000000 is over"),
    "gate answer length": ({"deploy__gate_options": {"num_predict": 10_000_000}},
                           "deploy.gate_options.num_predict 10000000 is over"),
}


@pytest.fixture
def policy(tmp_path, ollama_server) -> WorkerPolicy:
    return WorkerPolicy(home=tmp_path / "worker", model_name="tiny", base_models=(BASE_DIR,),
                        ollama_host=ollama_server.url, max_time_limit_s=600, job_secret=JOB_SECRET)


class Recorder:
    """Stands in for Redis: what ``accept_job`` would write (a refused job writes nothing)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.calls.append(name)


@pytest.mark.parametrize("name", OUT_OF_BOUNDS)
def test_each_number_outside_the_workers_limits_is_refused(job, policy, ollama_server, caplog, name):
    changes, why = OUT_OF_BOUNDS[name]
    r = Recorder()
    with caplog.at_level(logging.INFO, logger="loraloop"):
        accept_job(r, sign(edited(job, **changes)), "loraloop-run-1-abcd1234", policy)
    ours = [rec.getMessage() for rec in caplog.records if rec.name.startswith("loraloop")]
    assert len(ours) == 1 and " refused: " in ours[0] and why in ours[0], ours
    assert r.calls == [] and not policy.home.exists() and ollama_server.requests == []


def test_the_limits_are_the_workers_own_settings(job, tmp_path, ollama_server, monkeypatch, caplog):
    monkeypatch.setenv("LORALOOP_WORKER_LIMITS__MAX_STEPS", "100")
    monkeypatch.setenv("LORALOOP_WORKER_JOB_SECRET", JOB_SECRET)
    monkeypatch.chdir(tmp_path)  # no .env
    settings = WorkerSettings(worker_home=tmp_path / "worker", model_name="tiny", base_model=BASE_DIR,
                              ollama_host=ollama_server.url)
    policy = WorkerPolicy.for_worker(settings)
    assert policy.limits == JobLimits(max_steps=100) and policy.job_secret.get_secret_value() == JOB_SECRET
    assert JOB_SECRET not in repr(settings) + str(settings) + policy.to_json()  # redacted, never written out
    with caplog.at_level(logging.INFO, logger="loraloop"):
        accept_job(Recorder(), sign(edited(job, train__max_steps=101)), "loraloop-run-1-abcd1234", policy)
    assert "train.max_steps 101 is over this worker's limit of 100 (LORALOOP_WORKER_LIMITS__MAX_STEPS)" in caplog.text


# ---- starting without the secret, and the bot's side -----------------------------------------------------------


@pytest.mark.parametrize(("command", "secret"), [
    (["-m", "bot.cli", "worker"], None), (["-m", "worker"], None), (["-m", "worker", "--check"], ""),
    (["-m", "bot.cli", "worker"], "short"), (["-m", "worker"], "short"),
])
def test_a_worker_without_a_job_secret_does_not_start(tmp_path, command, secret):
    env = {k: v for k, v in os.environ.items() if k != "LORALOOP_WORKER_JOB_SECRET"}
    env["LORALOOP_REDIS_URL"] = "redis://127.0.0.1:9/0"  # never reached: the secret is checked first
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    if secret is not None:
        env["LORALOOP_WORKER_JOB_SECRET"] = secret
    done = subprocess.run([sys.executable, *command], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-2000:]
    if secret == "short":
        assert "worker_job_secret" in lines[0] and "at least 16 characters" in lines[0]
    else:
        assert lines[0].startswith("error: LORALOOP_WORKER_JOB_SECRET is not set"), lines[0]


async def test_the_bot_signs_its_jobs_and_sends_none_without_the_secret(job, redis_url):
    import redis

    r = redis.Redis.from_url(redis_url)
    dispatcher = CeleryDispatcher(redis_url, None)
    try:
        with pytest.raises(DispatchError, match="LORALOOP_WORKER_JOB_SECRET is not set"):
            await dispatcher.submit(job)
        assert r.llen(QUEUE) == 0
    finally:
        await dispatcher.close()
    settings = WorkerSettings(worker_job_secret=JOB_SECRET)
    dispatcher = CeleryDispatcher(redis_url, settings.worker_job_secret)
    try:
        await dispatcher.submit(job)
    finally:
        await dispatcher.close()
    (message,) = r.lrange(QUEUE, 0, -1)
    args, kwargs, _ = json.loads(base64.b64decode(json.loads(message)["body"]))
    assert kwargs == {} and JOB_SECRET not in args[0]
    assert JobSpec.from_json(open_signed_job(args[0], settings.worker_job_secret)) == job  # what a worker opens
    with pytest.raises(ValueError, match="signature does not match"):
        open_signed_job(args[0], WorkerSettings(worker_job_secret=OTHER_SECRET).worker_job_secret)
    r.close()


async def test_the_local_job_never_creates_over_an_existing_model_either(tmp_path, job, served):
    """The local child reads its job from a file the bot wrote (no signature), but the Ollama check is the job's
    own: it fails before training, and the existing model is left as it was."""
    home = tmp_path / "jobs"
    policy = WorkerPolicy(home=home.resolve(), model_name="tiny", base_models=(BASE_DIR,), ollama_host=served.url,
                          max_time_limit_s=600)
    before = served.get(ACTIVE).manifest_digest()
    dispatcher = LocalDispatcher(home, policy)
    try:
        ref = await dispatcher.submit(job.model_copy(update={"tag": ACTIVE, "active_tag": None}))
        await dispatcher._runner  # the queue ran its one job to the end
        events = await dispatcher.events(job.run_id, ref, 0)
    finally:
        await dispatcher.close()
    assert [e["event"] for e in events] == ["started", "failed"]
    assert f"tag '{ACTIVE}' already exists in Ollama" in events[-1]["reason"]
    assert sorted(os.listdir(ref)) == ["events.jsonl", "job.log", "pid", "policy.json", "spec.json",
                                       "stderr.log"]  # no snapshot, no run: it never trained
    assert not served.requests_to("POST", "/api/create") and served.get(ACTIVE).manifest_digest() == before
