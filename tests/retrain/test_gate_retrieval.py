"""The gate's second table: the candidate again on the same eval prompts, with the expert answers the bot would
retrieve once it answers (the scope relative to the candidate's own snapshot), for information only.

A real store (SQLite and PostgreSQL), the Ollama-API test server's scripted models, and deploy/pipeline.py's one
promotion path with ``inform=gate_with_retrieval(…)`` as the retrain loop and ``loraloop deploy run`` call it."""

from __future__ import annotations

import pytest

from bot.retrieval import BLOCK_HEAD, gate_with_retrieval
from bot.settings import Settings
from data.conversation import Conversation
from data.metrics import score_answers
from data.snapshot import read_snapshot
from deploy.gate import GateConfig, GateResult, eval_prompts, probe_prompts, run_gate
from deploy.ollama import OllamaClient
from deploy.pipeline import conclude_candidate
from tests.harness.bot import make_settings

BASE = "tiny-base:latest"
CANDIDATE = "tiny:v1"
REPLY = "Lamp colours are listed in the manual."
LAMPS = [(f"What colour is lamp {n}?", f"Lamp {n} is {colour}.")
         for n, colour in enumerate(["red", "green", "blue", "amber", "violet", "white", "teal", "pink", "grey",
                                     "gold", "cyan", "plum"], 1)]


def settings_for(tmp_path, url: str, **overrides) -> Settings:
    return make_settings(tmp_path, url, ollama_base=BASE, **overrides)


def chats(ollama_server) -> list[list[dict]]:
    return [body["messages"] for body in ollama_server.requests_to("POST", "/api/chat")]


async def candidate_with_delta(store, ollama_server, tmp_path):
    """A registered candidate trained on the lamp pairs (some held out as its eval split), then one pair taught
    after its snapshot that answers an eval question in other words. Returns (candidate, eval prompts, new pair)."""
    for question, answer in LAMPS:
        await store.add_example(Conversation.qa(question, answer), source="teach", status="approved")
    manifest = await store.create_snapshot(tmp_path / "snap", 0.3)
    snapshot = read_snapshot(manifest.path)
    prompts = eval_prompts(snapshot.eval, 10)
    assert prompts, "the split must hold eval prompts for this test"
    version = await store.create_model_version(name="tiny", base_model="tiny", ollama_base=BASE,
                                               snapshot_sha256=manifest.sha256, snapshot_path=str(manifest.path))
    await store.update_model_version(version.id, status="registered", in_ollama=True)
    ollama_server.add_scripted_model(BASE, reply="I do not know.")
    ollama_server.add_scripted_model(version.tag, reply=REPLY)
    asked = prompts[0].question
    new = await store.add_example(Conversation.qa(f"{asked} Which colour does it glow?", prompts[0].reference),
                                  source="teach", status="approved")
    return version, prompts, new


async def gate_of(ollama_server, tag: str, prompts) -> GateResult:
    async with OllamaClient(ollama_server.url) as client:
        return await run_gate(client, tag, BASE, prompts, probe_prompts(["Hello?"]),
                              GateConfig(0.5, {"temperature": 0}), opponent_is_base=True)


async def test_the_candidate_with_retrieval_is_measured_beside_a_verdict_it_does_not_change(
        store, ollama_server, tmp_path):
    version, prompts, new = await candidate_with_delta(store, ollama_server, tmp_path)
    gate = await gate_of(ollama_server, version.tag, prompts)
    judged = dict(gate.scores)
    assert not any(BLOCK_HEAD in m["content"] for msgs in chats(ollama_server) for m in msgs)  # weights alone
    before = len(chats(ollama_server))

    async with OllamaClient(ollama_server.url) as client:
        done = await conclude_candidate(store, client, version.tag, gate, model_name="tiny", keep_versions=3,
                                        inform=gate_with_retrieval(settings_for(tmp_path, ollama_server.url),
                                                                   store, client))
    assert done.status == "promoted" and gate.scores == judged  # the verdict and its numbers are the weights'
    info = (await store.get_model_version(version.tag)).evaluation["with_retrieval"]
    assert info["scope"] == "delta" and info["prompts"] == len(prompts) and info["weights"] == judged["candidate"]

    # The taught pair reached the eval prompt it answers, and only pairs the candidate was not trained on did.
    first = info["rows"][0]
    assert first["question"] == prompts[0].question and new.id in first["pair_ids"]
    assert {i for row in info["rows"] for i in row["pair_ids"]} == {new.id}
    assert info["with_pairs"] >= 1 and info["pairs"] == 1
    sent = chats(ollama_server)[before:]
    assert len(sent) == len(prompts)
    assert sent[0][0]["role"] == "system" and f'<expert_answer id="{new.id}">' in sent[0][0]["content"]
    assert sent[0][0]["content"].startswith("You are terse.")
    assert info["candidate"] == {"rouge_l": pytest.approx(sum(r["rouge_l"] for r in info["rows"]) / len(prompts)),
                                 "exact_match": 0.0, "count": len(prompts), "facts": pytest.approx(
                                     score_answers([r["answer"] for r in info["rows"]],
                                                   [p.reference for p in prompts],
                                                   [p.question for p in prompts]).facts)}
    assert all(row["answer"] == REPLY for row in info["rows"])

    table = GateResult.from_dict((await store.get_model_version(version.tag)).evaluation).table()
    assert "with retrieval (for information; the verdict above judged the weights alone)" in table
    assert "weights alone" in table and "with expert answers" in table
    assert table.index("PASS:") < table.index("with retrieval")


async def test_scope_all_never_retrieves_the_eval_pairs_themselves(store, ollama_server, tmp_path):
    version, prompts, new = await candidate_with_delta(store, ollama_server, tmp_path)
    gate = await gate_of(ollama_server, version.tag, prompts)
    async with OllamaClient(ollama_server.url) as client:
        info = await gate_with_retrieval(settings_for(tmp_path, ollama_server.url, retrieval_scope="all"),
                                         store, client)(version.tag, gate)
    eval_questions = {p.question for p in prompts}
    eval_ids = {e.id for e in await store.list_examples(status="approved")
                if e.messages[0]["content"] in eval_questions}
    used = {i for row in info["rows"] for i in row["pair_ids"]}
    assert info["scope"] == "all" and new.id in used
    assert used and not used & eval_ids  # the references are never handed to the model


async def test_off_or_failing_it_is_recorded_and_the_switch_goes_on(store, ollama_server, tmp_path):
    version, prompts, _ = await candidate_with_delta(store, ollama_server, tmp_path)
    gate = await gate_of(ollama_server, version.tag, prompts)
    async with OllamaClient(ollama_server.url) as client:
        off = await gate_with_retrieval(settings_for(tmp_path, ollama_server.url, retrieval_scope="off"),
                                        store, client)(version.tag, gate)
        assert off == {"skipped": "retrieval is off (retrieval_scope: off)"}

        async def broken(tag: str, gate: GateResult) -> dict:
            raise OSError("the snapshot directory is gone")

        done = await conclude_candidate(store, client, version.tag, gate, model_name="tiny", keep_versions=3,
                                        inform=broken)
    assert done.status == "promoted"
    stored = GateResult.from_dict((await store.get_model_version(version.tag)).evaluation)
    assert stored.with_retrieval == {"error": "the snapshot directory is gone"}
    assert "not measured: the snapshot directory is gone" in stored.table()
