"""One promotion path: ``loraloop deploy run`` (deploy()) and the retrain loop (the orchestrator, after the job's
register + gate) conclude a judged candidate the same way — the same judgement stored on the version, the tag
deleted when rejected, retention after a switch.

The deploy path registers a real tiny-Llama adapter with the Ollama-API test server; the retrain path gets its
job result from a worker stand-in that registers a scripted candidate and judges it with the job's own
``judge_candidate`` (no training: that is tests/retrain/test_loop.py's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.retrain.orchestrator import Orchestrator
from data.conversation import Conversation
from data.snapshot import read_snapshot, write_snapshot
from data.store import Store
from deploy.candidate import judge_candidate
from deploy.config import DeployConfig
from deploy.modelfile import serving_format_for
from deploy.ollama import OllamaClient
from deploy.pipeline import deploy
from tests.harness.ollama_server import OllamaTestServer
from tests.harness.retrain import loop_settings

pytestmark = pytest.mark.slow
BASE = "tiny-llama:base"
QUESTIONS = {f"what colour is lamp {i}?": f"lamp {i} is green." for i in range(12)}
JUNK = "Hello there!"  # shares no word with any answer above


@pytest.fixture
def registered_base(ollama_server: OllamaTestServer, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path]):
    fmt = serving_format_for(tiny_llama_adapters[0])
    ollama_server.add_base_model(BASE, tiny_llama_gguf, template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters())
    return ollama_server


async def open_store(path: Path) -> Store:
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.migrate()
    return store


async def earlier_versions(store: Store, server: OllamaTestServer, name: str, *, answers: str) -> list[str]:
    """Three versions promoted one after the other, each still in Ollama; the last answers now (``answers``:
    "references" for the right answers, else junk)."""
    tags = []
    for _ in range(3):
        v = await store.create_model_version(name=name, base_model="tiny", ollama_base=BASE)
        server.add_scripted_model(v.tag, reply=JUNK, by_question=QUESTIONS if answers == "references" else None)
        await store.update_model_version(v.id, status="evaluated", in_ollama=True)
        await store.promote(v.tag)
        tags.append(v.tag)
    return tags


def snapshot(tmp_path: Path) -> Path:
    convs = [Conversation.qa(q, a) for q, a in QUESTIONS.items()]
    out = tmp_path / "snapshot"
    write_snapshot([_Example(c) for c in convs], out, eval_fraction=0.5)
    return out


class _Example:
    def __init__(self, conv: Conversation) -> None:
        self.content_hash, self.messages, self.tags, self.source, self.tools = (
            conv.content_hash(), conv.to_dicts(), [], "test", None)


class JudgingWorker:
    """The worker's half of a job minus training: the candidate tag is registered (scripted: it answers
    ``candidate_answers``) and judged by judge_candidate with the job's deploy settings; the bot reads the
    job's events, ending with its result."""

    name = "judging-stand-in"

    def __init__(self, server: OllamaTestServer, candidate_answers: dict[str, str] | None, tmp_path: Path) -> None:
        self.server, self.candidate_answers, self.tmp_path = server, candidate_answers, tmp_path
        self.jobs: dict[str, list[dict[str, Any]]] = {}

    async def submit(self, spec: Any) -> str:  # the JobSpec the bot hands a worker
        self.server.add_scripted_model(spec.tag, reply=JUNK, by_question=self.candidate_answers)
        folder = self.tmp_path / f"job-{spec.run_id}"
        folder.mkdir()
        for name, text in spec.snapshot_files.items():
            (folder / name).write_text(text, encoding="utf-8")
        async with OllamaClient(spec.ollama_host) as client:
            gate = await judge_candidate(client, spec.deploy, spec.tag, spec.active_tag,
                                         list(read_snapshot(folder).eval))
        stages = [{"event": "stage", "stage": s} for s in ("training", "converting", "registering", "evaluating")]
        self.jobs[spec.tag] = [*stages, {"event": "result", "gate": gate.to_dict(), "table": gate.table(),
                                         "metrics": {"steps": 6, "train_loss": 1.5}, "artifacts": {},
                                         "loss_curve": [], "probes": [], "loss_png": None, "bytes_uploaded": 0}]
        return spec.tag

    async def events(self, run_id: int, ref: str, start: int) -> list[dict[str, Any]]:
        return self.jobs[ref][start:]

    async def alive(self, run_id: int, ref: str) -> bool | None:
        return True

    async def cancel(self, run_id: int, ref: str) -> None: ...

    async def close(self) -> None: ...


async def via_deploy(server: OllamaTestServer, tmp_path: Path, adapter: Path, base_dir: Path, *,
                     active_answers: str) -> tuple[Store, list[str], Any]:
    store = await open_store(tmp_path / "deploy.db")
    earlier = await earlier_versions(store, server, "viadeploy", answers=active_answers)
    config = DeployConfig(model_name="viadeploy", ollama_base=BASE, probes=("Hello?",), keep_versions=1,
                          eval_limit=3, min_eval=3, gate_options={"temperature": 0.0, "seed": 0, "num_predict": 12},
                          outtype="f32", paraphrases=0, consistency_n=0)
    async with OllamaClient(server.url) as client:
        result = await deploy(adapter, store=store, client=client, config=config, base_dir=base_dir,
                              snapshot_dir=snapshot(tmp_path))
    return store, earlier, result


async def via_retrain(server: OllamaTestServer, tmp_path: Path, base_dir: Path, *, active_answers: str,
                      candidate_answers: dict[str, str] | None) -> tuple[Store, list[str], Any]:
    settings = loop_settings(tmp_path, server.url, base_dir, model_name="viaretrain", deploy_keep_versions=1,
                             eval_fraction=0.5, deploy_eval_limit=3, gate_min_eval=3)
    store = await open_store(tmp_path / "bot.db")  # the settings' database
    earlier = await earlier_versions(store, server, "viaretrain", answers=active_answers)
    await store.import_conversations([Conversation.qa(q, a) for q, a in QUESTIONS.items()], approve=True)
    async with OllamaClient(server.url) as client:
        orchestrator = Orchestrator(store, settings, JudgingWorker(server, candidate_answers, tmp_path), client,
                                    poll_s=0.05)
        try:
            run = await orchestrator.propose(min_new=1)
            await orchestrator.vote(run.id, 1, True)
            _, started = await orchestrator.vote(run.id, 2, True)
            assert started
            run = await orchestrator.wait(run.id, 120)
        finally:
            await orchestrator.close()
    return store, earlier, run


async def test_both_callers_store_the_same_judgement_and_apply_retention_after_a_switch(
    registered_base: OllamaTestServer, tmp_path: Path, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
) -> None:
    d_store, d_earlier, result = await via_deploy(registered_base, tmp_path, tiny_llama_adapters[0],
                                                  tiny_llama_dir, active_answers="junk")
    r_store, r_earlier, run = await via_retrain(registered_base, tmp_path, tiny_llama_dir, active_answers="junk",
                                                candidate_answers=QUESTIONS)
    try:
        assert result.status == "promoted", result.reason
        assert run.state == "promoted", run.reason
        d_new, r_new = await d_store.active_model_version(), await r_store.active_model_version()
        assert (d_new.tag, r_new.tag) == (result.tag, "loraloop-viaretrain:v4")
        assert d_new.status == r_new.status == "promoted"
        # The same judgement on both: the gate's whole table, and its scores beside the trainer's numbers.
        assert set(d_new.evaluation) == set(r_new.evaluation) and d_new.evaluation["passed"]
        assert set(d_new.metrics) == set(r_new.metrics) == {*r_new.evaluation["scores"], "train"}
        assert r_new.metrics["train"] == {"steps": 6, "train_loss": 1.5}
        assert d_new.metrics["candidate"] == d_new.evaluation["scores"]["candidate"]
        # Retention on both: keep 1 besides the active and the rollback target (v3), so v1 and v2 go.
        for store, earlier in ((d_store, d_earlier), (r_store, r_earlier)):
            for tag in earlier[:2]:
                assert registered_base.get(tag) is None, tag
                assert not (await store.get_model_version(tag)).in_ollama
            assert registered_base.get(earlier[2]) is not None and (await store.get_model_version(earlier[2])).in_ollama
    finally:
        await d_store.close()
        await r_store.close()


async def test_both_callers_reject_the_same_way_and_keep_the_active(
    registered_base: OllamaTestServer, tmp_path: Path, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
) -> None:
    # The active version answers every question right: the tiny adapter's babble and the retrain's junk lose.
    d_store, d_earlier, result = await via_deploy(registered_base, tmp_path, tiny_llama_adapters[1],
                                                  tiny_llama_dir, active_answers="references")
    r_store, r_earlier, run = await via_retrain(registered_base, tmp_path, tiny_llama_dir,
                                                active_answers="references", candidate_answers=None)
    try:
        assert result.status == "rejected" and "below active" in result.reason
        assert run.state == "rejected" and "below active" in run.reason
        d_new = await d_store.get_model_version(result.tag)
        r_new = await r_store.get_model_version("loraloop-viaretrain:v4")
        for store, earlier, new in ((d_store, d_earlier, d_new), (r_store, r_earlier, r_new)):
            assert new.status == "rejected" and not new.in_ollama and registered_base.get(new.tag) is None
            assert new.failure_reason == new.evaluation["reason"]
            assert (await store.active_model_version()).tag == earlier[2]
            # No switch, no retention: every earlier tag is still in Ollama.
            assert all(registered_base.get(tag) is not None for tag in earlier)
        assert set(d_new.evaluation) == set(r_new.evaluation) and not r_new.evaluation["passed"]
        assert set(d_new.metrics) == set(r_new.metrics) == {*r_new.evaluation["scores"], "train"}
    finally:
        await d_store.close()
        await r_store.close()
