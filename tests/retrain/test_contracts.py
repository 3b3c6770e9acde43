"""What crosses a process or a file is one typed model used by both sides: the job spec (bot → worker), its deploy
config, the progress events (trainer → job → bot), a run's stored progress, run.json (trainer → deploy) and the
snapshot manifest. Each survives its JSON round trip unchanged, and a forged field or a wrong type is refused
with a message that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.retrain.orchestrator import Orchestrator
from data.conversation import Conversation
from data.snapshot import MANIFEST_FILE, SnapshotError, SnapshotManifest, parse_manifest, read_snapshot
from data.store import Store
from deploy.config import DeployConfig
from deploy.ollama import OllamaClient
from tests.harness.retrain import loop_settings
from tests.harness.snapshots import write_snapshot
from trainer.config import TrainConfig
from trainer.progress import (
    CancelledEvent,
    DoneEvent,
    EvalEvent,
    FailedEvent,
    PhaseEvent,
    ResultEvent,
    RunProgress,
    StageEvent,
    StartedEvent,
    StepEvent,
    UploadEvent,
    parse_event,
)
from trainer.record import RunRecord, read_run
from worker.job import JobRefused, JobSpec, WorkerPolicy, validate_job


def _snapshot(tmp_path: Path) -> dict[str, str]:
    convs = [Conversation.qa(f"What is {i}?", f"It is {i}.") for i in range(12)]
    snap = write_snapshot(tmp_path / "snap", convs, source="teach")
    return {p.name: p.read_text(encoding="utf-8") for p in snap.iterdir()}


@pytest.fixture
def spec(tmp_path) -> JobSpec:
    files = _snapshot(tmp_path)
    return JobSpec(run_id=3, community="default", tag="loraloop-tiny:v2", base_model="/models/tiny",
                   ollama_host="http://127.0.0.1:9",
                   deploy=DeployConfig(model_name="tiny", ollama_base="tiny:base", probes=("Hi?", "Who?"),
                                       serve_options={"temperature": 0.2}),
                   snapshot_sha256=json.loads(files[MANIFEST_FILE])["sha256"], snapshot_files=files,
                   train=TrainConfig(max_steps=5, learning_rate=1e-3), active_tag="loraloop-tiny:v1")


@pytest.fixture
def policy(tmp_path) -> WorkerPolicy:
    return WorkerPolicy(home=tmp_path / "worker", model_name="tiny", base_models=("/models/tiny",),
                        ollama_host="http://127.0.0.1:11434", max_time_limit_s=600)


# ---- the job spec and its deploy config ------------------------------------------------------------------------


def test_a_job_spec_survives_its_json_round_trip_deploy_config_included(spec, policy):
    again = JobSpec.from_json(spec.to_json())
    assert again == spec
    assert again.deploy == spec.deploy and again.deploy.probes == ("Hi?", "Who?")  # a tuple again, no special case
    assert isinstance(again.train, TrainConfig) and again.train.max_steps == 5
    checked = validate_job(spec.to_json(), policy)
    assert checked.deploy == spec.deploy and checked.train == spec.train
    assert checked.ollama_host == policy.ollama_host  # the worker's own, whatever the job said


def test_a_job_spec_refuses_a_forged_field_and_a_wrong_type(spec, policy):
    job = json.loads(spec.to_json())
    with pytest.raises(JobRefused, match="the job has unknown fields workdir"):
        validate_job(json.dumps({**job, "workdir": "/tmp/x"}), policy)
    with pytest.raises(JobRefused, match="deploy has unknown fields ollama_host"):
        validate_job(json.dumps({**job, "deploy": {**job["deploy"], "ollama_host": "http://evil"}}), policy)
    with pytest.raises(JobRefused, match="^heartbeat_ttl_s must be int or float, not str$"):
        validate_job(json.dumps({**job, "heartbeat_ttl_s": "60"}), policy)
    with pytest.raises(JobRefused, match="^train: lora_r: Input should be a valid integer"):
        validate_job(json.dumps({**job, "train": {**job["train"], "lora_r": 8.5}}), policy)
    with pytest.raises(ValidationError, match="run_id"):  # the model itself, without the policy
        JobSpec.from_json(json.dumps({**job, "run_id": "3"}))


def test_a_worker_policy_survives_its_json_round_trip(policy):
    again = WorkerPolicy.from_json(policy.to_json())
    assert again == policy and again.base_models == ("/models/tiny",) and isinstance(again.home, Path)
    with pytest.raises(ValidationError, match="extra"):
        WorkerPolicy.from_json(json.dumps({**json.loads(policy.to_json()), "sudo": True}))


# ---- progress events and a run's progress ----------------------------------------------------------------------

EVENTS = [
    PhaseEvent(phase="train", message="training 12 examples"),
    StepEvent(step=3, total=10, epoch=0.3, loss=1.25, eta_s=12.5, lr=2e-4),
    EvalEvent(step=5, total=10, epoch=0.5, eval_loss=1.1),
    DoneEvent(message="adapter written", out="/runs/a", eval_loss_before=2.0, eval_loss_after=1.0, wall_time_s=3.5),
    StartedEvent(pid=123, host="gpu-1", t=1700000000.5),
    StageEvent(stage="registering"),
    UploadEvent(sent=10, total=100),
    ResultEvent(gate={"passed": True, "reason": "ok"}, table="PASS", artifacts={"mode": "adapter"}, bytes_uploaded=7,
                metrics={"steps": 6}, loss_curve=[{"step": 1, "loss": 2.0}], probes=[], loss_png=None),
    FailedEvent(reason="out of memory"),
    CancelledEvent(reason="cancelled"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.event)
def test_each_progress_event_survives_its_json_round_trip(event):
    line = event.to_json()
    assert "\n" not in line
    assert parse_event(line) == event == parse_event(json.loads(line))


def test_a_progress_event_refuses_a_forged_field_a_wrong_type_and_an_unknown_kind():
    with pytest.raises(ValidationError, match=r"(?s)failed\.exit_code.*Extra inputs are not permitted"):
        parse_event(json.dumps({"event": "failed", "reason": "x", "exit_code": 1}))
    with pytest.raises(ValidationError, match=r"(?s)step\.loss.*Input should be a valid number"):
        parse_event(json.dumps({"event": "step", "step": 1, "total": 2, "loss": "low"}))
    with pytest.raises(ValidationError, match=r"(?s)stage\.stage.*'training', 'converting', 'registering'"):
        parse_event(json.dumps({"event": "stage", "stage": "promoted"}))  # a run state is not a job's stage
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_event(json.dumps({"event": "reboot"}))


class _ForgingWorker:
    """A dispatcher whose job sends the given events (raw, as a worker's Redis list or events.jsonl holds them)."""

    name = "forging"

    def __init__(self, events: list[dict]) -> None:
        self.sent, self.cancelled, self.spec = events, [], None

    async def submit(self, spec: JobSpec) -> str:
        self.spec = spec
        return "job-1"

    async def events(self, run_id: int, ref: str, start: int) -> list[dict]:
        return self.sent[start:]

    async def alive(self, run_id: int, ref: str) -> bool | None:
        return True

    async def cancel(self, run_id: int, ref: str) -> None:
        self.cancelled.append(ref)

    async def close(self) -> None: ...


async def test_the_bot_fails_a_run_whose_job_sends_an_event_it_cannot_read(tmp_path, ollama_server):
    settings = loop_settings(tmp_path, ollama_server.url, tmp_path / "base", retrain_quorum=1)
    store = Store(settings.resolved_database_url)
    await store.migrate()
    await store.import_conversations([Conversation.qa(f"q {i}?", f"a {i}.") for i in range(12)], approve=True)
    worker = _ForgingWorker([{"event": "stage", "stage": "training", "t": 1.0},
                             {"event": "step", "step": "many", "total": 10, "t": 2.0}])
    try:
        async with OllamaClient(ollama_server.url) as client:
            orchestrator = Orchestrator(store, settings, worker, client, poll_s=0.05)
            try:
                run = await orchestrator.propose(min_new=1)
                await orchestrator.vote(run.id, 1, True)
                run = await orchestrator.wait(run.id, 60)
            finally:
                await orchestrator.close()
    finally:
        await store.close()
    assert run.state == "failed", run.reason
    assert "the job sent an event this bot cannot read (step.step: Input should be a valid integer" in run.reason
    assert worker.cancelled == ["job-1"]  # the job is stopped, not left running
    assert run.progress == {"stage": "training", "tag": "loraloop-tiny:v1"}
    assert isinstance(worker.spec.train, TrainConfig) and worker.spec.train.max_steps == 6  # retrain_train, typed


def test_a_runs_stored_progress_reads_back_and_refuses_what_it_does_not_hold():
    progress = RunProgress(stage="training", tag="loraloop-a:v3", step=4, total=8, loss=0.5, eta_s=30.0)
    assert RunProgress.model_validate(json.loads(json.dumps(progress.stored()))) == progress
    assert "uploaded" not in progress.stored()  # unset numbers are not stored
    # Earlier releases stored every step event's keys (lr among them): a run recorded then still reads back.
    assert RunProgress.model_validate({**progress.stored(), "lr": 1e-4}) == progress
    with pytest.raises(ValidationError, match="stage"):
        RunProgress.model_validate({"stage": "promoted"})


# ---- run.json --------------------------------------------------------------------------------------------------


def test_a_run_record_survives_its_file_round_trip(tmp_path):
    record = RunRecord(base="org/tiny", base_dir=tmp_path / "base", snapshot=str(tmp_path / "snap"),
                       snapshot_sha256="ab" * 32, chat_template="{{ messages }}", system_prompt="Be terse.",
                       end_of_turn=("<|im_end|>",), reasoning=None)
    record.write(tmp_path)
    assert read_run(tmp_path) == record
    assert json.loads((tmp_path / "run.json").read_text())["base_dir"] == str(tmp_path / "base")
    assert read_run(tmp_path / "elsewhere") is None  # no run.json: an adapter trained elsewhere


def test_a_run_record_refuses_a_forged_field_and_a_wrong_type(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"base": "org/tiny", "served_by": "me"}))
    with pytest.raises(ValueError, match=r"run\.json is not a loraloop run record \(served_by: unexpected field"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"system_prompt": ["Be", "terse"]}))
    with pytest.raises(ValueError, match="system_prompt: Input should be a valid string"):
        read_run(tmp_path)


# ---- the snapshot manifest -------------------------------------------------------------------------------------


def test_a_snapshot_manifest_survives_its_json_round_trip(tmp_path):
    files = _snapshot(tmp_path)
    manifest = parse_manifest(files[MANIFEST_FILE])
    assert isinstance(manifest, SnapshotManifest) and manifest.counts.total == 12 and manifest.preferences is None
    assert parse_manifest(manifest.to_json()) == manifest
    assert manifest.to_json() == files[MANIFEST_FILE]  # the file is exactly the model's JSON
    assert read_snapshot(tmp_path / "snap").manifest == manifest


def test_a_snapshot_manifest_refuses_a_forged_field_and_a_wrong_type(tmp_path):
    raw = json.loads(_snapshot(tmp_path)[MANIFEST_FILE])
    with pytest.raises(SnapshotError, match=r"is not a loraloop-snapshot/1 manifest \(signed_by: unexpected field"):
        parse_manifest(json.dumps({**raw, "signed_by": "me"}))
    with pytest.raises(SnapshotError, match=r"counts\.train: Input should be a valid integer"):
        parse_manifest(json.dumps({**raw, "counts": {**raw["counts"], "train": "11"}}))
    with pytest.raises(SnapshotError, match="unknown snapshot format 'loraloop-snapshot/2'"):
        parse_manifest(json.dumps({**raw, "format": "loraloop-snapshot/2"}))
