"""The GPU worker trusts nothing it takes from Redis: every forged field of a job, even one signed with the bot's
secret, is refused before anything is created or contacted, with one log line and nothing else (no event on the
run it names). Unsigned and mis-signed jobs, and the job limits: test_job_signing.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pydantic import SecretStr

from bot.retrain.dispatch import LocalDispatcher
from tests.harness.retrain import JOB_SECRET, REDIS_URL, spec_for
from worker.celery_app import QUEUE, TASK, accept_job, keys, make_celery
from worker.job import JobRefused, JobSpec, SignedJob, WorkerPolicy, job_dir, validate_job

BASE_DIR = "/models/tiny-llama"  # never opened: every job here is refused before training
EVIL_HOST = "http://attacker.example.invalid:11434"


@pytest.fixture
def policy(tmp_path, ollama_server) -> WorkerPolicy:
    return WorkerPolicy(home=tmp_path / "worker", model_name="tiny", base_models=(BASE_DIR, "Qwen/Qwen2.5-0.5B"),
                        ollama_host=ollama_server.url, max_time_limit_s=600, job_secret=JOB_SECRET)


@pytest.fixture
def job(tmp_path) -> dict:
    """A valid job as the bot sends it, as plain JSON data (what a forger edits)."""
    spec = spec_for(tmp_path, BASE_DIR, active_tag="loraloop-tiny:v1", tag="loraloop-tiny:v2")
    return json.loads(spec.to_json())


def _set(path: str, value):
    """A forgery: set ``a.b`` (``None`` as value deletes it) in a copy of the job."""
    def forge(job: dict) -> dict:
        forged = json.loads(json.dumps(job))
        *parents, last = path.split(".")
        target = forged
        for p in parents:
            target = target[p]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
        return forged
    return forge


_DELETE = object()


def _of(community: str, *, tag: str):
    """A forgery: the job said to be ``community``'s, naming ``tag``."""
    def forge(job: dict) -> dict:
        return {**json.loads(json.dumps(job)), "community": community, "tag": tag, "active_tag": None}
    return forge


def signed(job: dict | str) -> str:
    """The job as the bot's secret signs it: these tests forge fields past the signature (a leaked secret, a bug)."""
    return SignedJob.sign(job if isinstance(job, str) else json.dumps(job), SecretStr(JOB_SECRET)).to_json()


def _with_examples(extra: str):
    def forge(job: dict) -> dict:
        forged = json.loads(json.dumps(job))
        forged["snapshot_files"]["examples.jsonl"] += extra
        return forged
    return forge


def _files(name: str, value, drop: str | None = None):
    def forge(job: dict) -> dict:
        forged = json.loads(json.dumps(job))
        forged["snapshot_files"][name] = value
        if drop:
            del forged["snapshot_files"][drop]
        return forged
    return forge


def _manifest(**changes):
    def forge(job: dict) -> dict:
        forged = json.loads(json.dumps(job))
        manifest = json.loads(forged["snapshot_files"]["manifest.json"])
        manifest.update(changes)
        forged["snapshot_files"]["manifest.json"] = json.dumps(manifest)
        return forged
    return forge


FORGERIES = {
    "run id as text": (_set("run_id", "1"), "run_id must be int"),
    "run id as bool": (_set("run_id", True), "run_id must be int"),
    "negative run id": (_set("run_id", -3), "run_id must be positive"),
    "tag of another model": (_set("tag", "loraloop-other:v2"), "not a candidate tag of community 'default'"),
    # A job of one community naming another's tag: it would create (or, failing, delete) that community's model.
    "tag of another community": (_of("acme", tag="loraloop-tiny-globex:v2"),
                                 "tag 'loraloop-tiny-globex:v2' is not a candidate tag of community 'acme' for "
                                 "this worker's model (loraloop-tiny-acme:v<N>)"),
    "default's tag for a community": (_of("acme", tag="loraloop-tiny:v2"), "not a candidate tag of community 'acme'"),
    "a community's tag for default": (_of("default", tag="loraloop-tiny-acme:v2"),
                                      "not a candidate tag of community 'default'"),
    "community not a name": (_of("Acme Corp", tag="loraloop-tiny-Acme Corp:v2"), "is not a community name"),
    "community as a path": (_of("../globex", tag="loraloop-tiny-../globex:v2"), "is not a community name"),
    "missing community": (_set("community", _DELETE), "lacks community"),
    "tag with a path": (_set("tag", "loraloop-tiny:v2/../../x"), "not a candidate tag"),
    "tag not a string": (_set("tag", ["loraloop-tiny:v2"]), "tag must be str"),
    "tag is the active tag": (_set("tag", "loraloop-tiny:v1"), "is the active model's tag"),
    "active tag not a tag": (_set("active_tag", "qwen2.5:0.5b; rm -rf"), "active_tag"),
    "base model not allowed": (_set("base_model", "/etc"), "is not one this worker trains"),
    "base model from the hub": (_set("base_model", "evil/backdoored-model"), "is not one this worker trains"),
    "snapshot file with a path": (_files("../../.bashrc", "echo pwned"), "snapshot_files must be"),
    "snapshot file renamed": (_files("../examples.jsonl", "", drop="examples.jsonl"), "snapshot_files must be"),
    "snapshot payload edited": (_with_examples('{"id": "x"}\n'), "does not match its hash"),
    "snapshot hash malformed": (_set("snapshot_sha256", "abc"), "64 lowercase hex"),
    "manifest points elsewhere": (_manifest(file="../../../etc/passwd"), "is not a loraloop-snapshot/1 manifest"),
    "snapshot files not text": (_files("examples.jsonl", 7), "snapshot_files must be"),
    "deploy not an object": (_set("deploy", ["adapter"]), "deploy must be dict"),
    "deploy of another model": (_set("deploy.model_name", "other"), "deploy.model_name"),
    "deploy mode unknown": (_set("deploy.mode", "sideways"), "deploy: mode"),
    "deploy extra field": (_set("deploy.ollama_host", EVIL_HOST), "deploy has unknown fields ollama_host"),
    "deploy base not a name": (_set("deploy.ollama_base", "x y\n"), "is not an Ollama model name"),
    "deploy margin as text": (_set("deploy.gate_margin", "0.5"), "deploy: gate_margin"),
    "train template from a file": (_set("train.chat_template", "/etc/shadow"), "not a path on the worker"),
    "train prompts from a file": (_set("train.general_prompts_file", "/etc/shadow"), "names a file on the worker"),
    "train unknown setting": (_set("train.output_dir", "/"), "train has unknown fields output_dir"),
    "train steps as text": (_set("train.max_steps", "400"), "train: max_steps"),
    "time limit negative": (_set("time_limit_s", -1), "time_limit_s must be a positive number"),
    "time limit as text": (_set("time_limit_s", "forever"), "time_limit_s must be int or float"),
    "heartbeat of a day": (_set("heartbeat_ttl_s", 86400), "heartbeat_ttl_s 86400 is over"),
    "unknown field": (_set("workdir", "/tmp/elsewhere"), "unknown fields workdir"),
    "missing snapshot": (_set("snapshot_files", _DELETE), "lacks snapshot_files"),
}


def test_a_valid_job_passes_and_uses_the_workers_own_ollama_and_time_limit(job, policy):
    job["ollama_host"] = EVIL_HOST  # the job's host is never used, whatever it says
    job["time_limit_s"] = 10 * 86400
    spec = validate_job(json.dumps(job), policy)
    assert isinstance(spec, JobSpec) and spec.tag == "loraloop-tiny:v2" and spec.base_model == BASE_DIR
    assert spec.ollama_host == policy.ollama_host
    assert spec.time_limit_s == 600
    assert validate_job(json.dumps({**job, "active_tag": None}), policy).active_tag is None


def test_a_communitys_job_names_a_tag_of_its_own_lineage(job, policy):
    mine = {**job, "community": "acme", "tag": "loraloop-tiny-acme:v7", "active_tag": "loraloop-tiny-acme:v6"}
    spec = validate_job(json.dumps(mine), policy)
    assert (spec.community, spec.tag) == ("acme", "loraloop-tiny-acme:v7")


@pytest.mark.parametrize("community", ["default", "acme", "guild-800000000000000001", "a_b-c", "x" * 40])
def test_the_workers_lineage_is_the_stores(community):
    """worker/job.py keeps its own copy of data.communities' rule (the GPU host has no database stack)."""
    from data.communities import check_name, lineage_name
    from worker.job import _COMMUNITY, lineage

    assert lineage("tiny", community) == lineage_name("tiny", community)
    assert check_name(community) and _COMMUNITY.fullmatch(community)
    assert not _COMMUNITY.fullmatch("x" * 41) and not _COMMUNITY.fullmatch("Acme")


@pytest.mark.parametrize("name", FORGERIES)
def test_each_forged_field_is_refused(job, policy, name):
    forge, why = FORGERIES[name]
    with pytest.raises(JobRefused, match=re.escape(why)):
        validate_job(json.dumps(forge(job)), policy)


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", "null", b"\xff\xfe", 42])
def test_a_job_that_is_not_an_object_is_refused(policy, raw):
    with pytest.raises(JobRefused):
        validate_job(raw, policy)


@pytest.mark.parametrize("task_id", ["../../../../tmp/x", "a/b", "..", "", "x" * 200, "id with spaces"])
def test_a_task_id_cannot_place_the_job_outside_the_home(policy, task_id):
    with pytest.raises(JobRefused, match="task id"):
        job_dir(policy, 1, task_id)
    assert job_dir(policy, 1, "loraloop-run-1-abcd1234").parent == policy.home.resolve()


# ---- through the worker's entry point, on real Redis ------------------------------------------------------


def own_db(url: str) -> str:
    """``url`` with a database of this module's own: the given one + 8 (of Redis' 16), so runs pointed at
    different databases get different ones here too, and the given one (which other modules flush) is never used."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 8) % 16}"))


@pytest.fixture
def redis_client():
    """The Redis of LORALOOP_TEST_REDIS_URL, in a database of this module's own (the others flush theirs)."""
    if not REDIS_URL:
        pytest.skip("needs LORALOOP_TEST_REDIS_URL (make test sets it when Redis runs)")
    import redis

    url = own_db(REDIS_URL)
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.url = url
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def events_of(r, run_id: int) -> list[dict]:
    return [json.loads(e) for e in r.lrange(keys(run_id)["events"], 0, -1)]


@pytest.mark.parametrize("name", FORGERIES)
def test_the_worker_refuses_a_forged_job_and_touches_nothing(job, policy, redis_client, ollama_server, caplog,
                                                             name):
    forge, why = FORGERIES[name]
    forged = forge(job)
    with caplog.at_level(logging.INFO, logger="loraloop"):
        accept_job(redis_client, signed(forged), "loraloop-run-2-abcd1234", policy)
    ours = [r for r in caplog.records if r.name.startswith("loraloop")]
    assert len(ours) == 1 and ours[0].levelno == logging.ERROR and why in ours[0].getMessage()
    run_id = forged["run_id"] if type(forged.get("run_id")) is int and forged["run_id"] > 0 else None
    if run_id is None:
        assert "(no valid run id)" in ours[0].getMessage()
    assert redis_client.keys("*") == []  # no event on any run, never claimed, no heartbeat
    assert not policy.home.exists()  # no run directory, not even the home
    assert ollama_server.requests == []  # and Ollama never heard of it


def test_a_forged_task_id_is_refused_by_the_worker(job, policy, redis_client, ollama_server, caplog):
    with caplog.at_level(logging.INFO, logger="loraloop"):
        accept_job(redis_client, signed(job), "../../../../tmp/escape", policy)
    assert [r.getMessage() for r in caplog.records if " refused: " in r.getMessage() and "task id" in r.getMessage()]
    assert redis_client.keys("*") == [] and not policy.home.exists() and ollama_server.requests == []


def test_a_real_worker_refuses_forged_jobs_from_the_queue(tmp_path, job, redis_client, ollama_server):
    """`loraloop worker` as a process, jobs sent over Celery as the bot sends them (plus forged task ids)."""
    from bot.settings import Settings

    settings = Settings(redis_url=redis_client.url, worker_home=tmp_path / "worker", model_name="tiny",
                        base_model=BASE_DIR, ollama_host=ollama_server.url)
    log_path = tmp_path / "worker.log"
    env = {**os.environ, "LORALOOP_REDIS_URL": settings.redis_url, "LORALOOP_WORKER_HOME": str(settings.worker_home),
           "LORALOOP_MODEL_NAME": "tiny", "LORALOOP_BASE_MODEL": BASE_DIR, "OLLAMA_HOST": ollama_server.url,
           "LORALOOP_WORKER_JOB_SECRET": JOB_SECRET, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log_path.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        app = make_celery(redis_client.url)
        sent = {
            11: {**job, "run_id": 11, "base_model": "evil/backdoored-model"},
            12: {**job, "run_id": 12, "tag": job["active_tag"]},
            13: {**job, "run_id": 13, "ollama_host": EVIL_HOST},  # valid otherwise: but the task id is forged
        }
        task_ids = {11: "loraloop-run-11-aaaa0000", 12: "loraloop-run-12-bbbb0000", 13: "../../../../tmp/x"}
        for run_id, body in sent.items():
            app.send_task(TASK, args=[signed(body)], task_id=task_ids[run_id], queue=QUEUE, retry=False)
        app.send_task(TASK, args=[signed('{"not": "a spec"}')], task_id="loraloop-run-x-cccc0000", queue=QUEUE,
                      retry=False)

        def refusals() -> list[str]:
            return [line for line in log_path.read_text(errors="replace").splitlines() if " refused: " in line]

        deadline = time.monotonic() + 30
        while len(refusals()) < 4:
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        lines = refusals()
        assert "job 11 refused: " in lines[0] and "is not one this worker trains" in lines[0]
        assert "job 12 refused: " in lines[1] and "is the active model's tag" in lines[1]
        assert "job 13 refused: " in lines[2] and "task id" in lines[2]
        assert "job (no valid run id) refused: " in lines[3]
        log = log_path.read_text(errors="replace")
        assert len(lines) == 4 and "Traceback" not in log, log[-3000:]
        assert redis_client.keys("loraloop:*") == []  # no event on any run
        assert not (tmp_path / "worker").exists() and ollama_server.requests == []
        assert proc.poll() is None  # and it keeps serving
    finally:
        proc.kill()
        proc.wait(10)


async def test_the_local_child_validates_its_job_too(tmp_path, job, policy, ollama_server):
    home = tmp_path / "jobs"
    local_policy = WorkerPolicy(home=home.resolve(), model_name="tiny", base_models=("Qwen/Qwen2.5-0.5B",),
                                ollama_host=ollama_server.url, max_time_limit_s=600)
    dispatcher = LocalDispatcher(home, local_policy)
    try:
        ref = await dispatcher.submit(JobSpec.from_json(json.dumps(job)))  # BASE_DIR is not in its allow-list
        deadline = time.monotonic() + 30
        while not (events := await dispatcher.events(job["run_id"], ref, 0)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        (event,) = events
        assert event["event"] == "failed" and "is not one this worker trains" in event["reason"]
        await asyncio.wait_for(dispatcher._runner, 30)  # the queue ran its one job to the end
        assert sorted(os.listdir(ref)) == ["events.jsonl", "job.log", "pid", "policy.json", "spec.json",
                                           "stderr.log"]  # no snapshot, no run
        log = await asyncio.to_thread(Path(ref, "job.log").read_text)
        assert log.count(" refused: ") == 1, log
        assert ollama_server.requests == []
    finally:
        await dispatcher.close()
