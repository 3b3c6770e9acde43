"""The gate's other dimensions: reworded eval questions, repeated answers at the served options, and the
trainer's retention measurement, each stored with the version and shown in the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.conversation import Conversation
from deploy.config import GATE_OPTIONS
from deploy.gate import PARAPHRASE_INSTRUCTION, GateConfig, GateResult, eval_prompts, probe_prompts, run_gate
from deploy.ollama import OllamaClient
from deploy.options import SERVE_OPTIONS
from deploy.pipeline import deploy
from tests.harness.gate import BASE, RIGHT, answered_chats, config, eval_snapshot, fake_adapter, scripted_base
from tests.harness.ollama_server import OllamaTestServer, paraphrase

CANDIDATE = "loraloop-tiny:v1"


def retention_record(increase: float) -> dict[str, Any]:
    """metrics.json's ``retention`` entry as trainer/retention.py writes it."""
    return {"set": "general-v1", "sha256": "0" * 64, "prompts": 50, "tokens": 2000, "nll_before": 1.2,
            "nll_after": round(1.2 + increase, 4), "increase": increase,
            "samples": [{"prompt": "What is the capital of China?", "before": "Beijing.", "after": "Beijing is."}]}


def trained_adapter(root: Path, increase: float | None) -> Path:
    adapter = fake_adapter(root)
    if increase is not None:
        (adapter / "metrics.json").write_text(json.dumps({"retention": retention_record(increase)}), encoding="utf-8")
    return adapter


async def test_paraphrase_consistency_and_retention_land_in_the_stored_result(
        ollama_server: OllamaTestServer, store: Any, tmp_path: Path) -> None:
    adapter = trained_adapter(tmp_path, 0.1)
    scripted_base(ollama_server, adapter, "I do not know.")
    ollama_server.script_tag(CANDIDATE, RIGHT)
    cfg = config(paraphrases=2, consistency_n=3)
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(adapter, store=store, client=client, config=cfg, snapshot_dir=eval_snapshot(tmp_path))
    assert result.promoted, result.reason
    gate = GateResult.from_dict((await store.get_model_version(CANDIDATE)).evaluation)

    # Two eval questions reworded by the base with the fixed instruction and the deterministic options.
    chats = answered_chats(ollama_server)
    asked = [c for c in chats if c["messages"][0]["content"] == PARAPHRASE_INSTRUCTION]
    assert [c["model"] for c in asked] == [BASE, BASE] and all(c["options"] == cfg.gate_options for c in asked)
    originals = [row["question"] for row in gate.rows if row["kind"] == "eval"][:2]
    reworded = [row for row in gate.rows if row["kind"] == "paraphrase"]
    assert [r["original"] for r in reworded] == originals
    assert [r["question"] for r in reworded] == [paraphrase(q) for q in originals]
    for tag in (BASE, CANDIDATE):  # both answered each rewording
        assert sum(c["model"] == tag and c["messages"][-1]["content"] == paraphrase(originals[0])
                   for c in chats) == 1
    assert gate.paraphrase["count"] == 2 and gate.paraphrase["paraphrased_by"] == BASE
    assert gate.paraphrase["candidate"] == {"original": 1.0, "paraphrased": 1.0} and not gate.paraphrase["overfitted"]
    assert gate.paraphrase["active"] == {"original": 0.0, "paraphrased": 0.0}  # the base: "I do not know."

    # The probe answered three times by each model with the served options, cut to the gate's length.
    sampling = {**SERVE_OPTIONS, "num_predict": GATE_OPTIONS["num_predict"]}
    sampled = [c for c in chats if c["options"] == sampling]
    assert sorted(c["model"] for c in sampled) == sorted([BASE] * 3 + [CANDIDATE] * 3)
    assert all(c["messages"] == [{"role": "user", "content": "Hello?"}] for c in sampled)
    assert gate.consistency["n"] == 3 and gate.consistency["candidate"] == 1.0 and gate.consistency["active"] == 1.0
    probe = next(row for row in gate.rows if row["kind"] == "probe")
    assert probe["candidate_samples"] == [RIGHT] * 3 and probe["candidate_consistency"] == 1.0

    # The trainer's retention, judged against the limit; every number in the table with its meaning.
    assert gate.retention["increase"] == 0.1 and gate.retention["passed"] and gate.retention["max_drop"] == 0.4
    table = gate.table()
    assert "reworded (2 eval questions, original → reworded key-fact recall): candidate 1.000 → 1.000" in table
    assert "consistency (3 answers to each of 1 probes): candidate 1.000, base 1.000" in table
    assert "retention (50 general prompts, general-v1): NLL 1.200 → 1.300, +0.100, +8% (within the limit 0.4)" in table
    assert "learned the wording rather than the fact" in table and "the dice" in table
    assert "general ability kept" in table
    details = gate.details()
    assert f"reworded:  {paraphrase(originals[0])}" in details and "3 sampled answers" in details
    assert "prompt: What is the capital of China?" in details and "candidate: Beijing is." in details


async def test_a_candidate_over_the_retention_limit_is_rejected_though_its_answers_score(
        ollama_server: OllamaTestServer, store: Any, tmp_path: Path) -> None:
    adapter = trained_adapter(tmp_path, 0.9)
    scripted_base(ollama_server, adapter, "I do not know.")
    ollama_server.script_tag(CANDIDATE, RIGHT)  # far better than the base on the eval split
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(adapter, store=store, client=client, config=config(),
                              snapshot_dir=eval_snapshot(tmp_path))
        assert not await client.has_model(CANDIDATE)
    assert result.status == "rejected" and "general ability lost" in result.reason and "limit 0.4" in result.reason
    gate = GateResult.from_dict((await store.get_model_version(CANDIDATE)).evaluation)
    assert gate.scores["candidate"]["rouge_l"] == 1.0 and not gate.passed
    assert gate.retention["passed"] is False and "OVER the limit 0.4" in gate.table()
    assert await store.active_model_version() is None


async def test_a_run_without_retention_numbers_is_judged_as_before(ollama_server: OllamaTestServer, store: Any,
                                                                   tmp_path: Path) -> None:
    adapter = trained_adapter(tmp_path, None)  # an adapter trained before retention existed
    scripted_base(ollama_server, adapter, "I do not know.")
    ollama_server.script_tag(CANDIDATE, RIGHT)
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(adapter, store=store, client=client, config=config(),
                              snapshot_dir=eval_snapshot(tmp_path))
    assert result.promoted and result.gate.retention == {} and "retention" not in result.gate.table()


async def test_a_candidate_that_knows_only_the_training_wording_is_flagged_over_fitted(
        ollama_server: OllamaTestServer) -> None:
    convs = [Conversation.qa(f"what colour is the {t}?", RIGHT) for t in ("cat", "dog", "tree")]
    prompts = eval_prompts(convs, 10)
    ollama_server.add_scripted_model(BASE, reply="something else")
    ollama_server.add_scripted_model("cand:v2", reply="no idea", by_question={p.question: RIGHT for p in prompts})
    ollama_server.add_scripted_model("act:v1", reply=RIGHT)
    async with OllamaClient(ollama_server.url) as client:
        result = await run_gate(client, "cand:v2", "act:v1", prompts, [], GateConfig(
            0.02, GATE_OPTIONS, paraphrases=3, paraphraser=BASE, min_eval=3))
    assert result.passed, result.reason  # flagged, not rejected: same score as the active on the data's wording
    assert result.paraphrase["candidate"] == {"original": 1.0, "paraphrased": 0.0}
    assert result.paraphrase["active"] == {"original": 1.0, "paraphrased": 1.0}
    assert result.paraphrase["overfitted"]
    assert "OVER-FITTED? the candidate scores 1.000 on the eval wording but 0.000 reworded" in result.table()


async def test_a_rise_on_the_rewording_is_never_flagged(ollama_server: OllamaTestServer) -> None:
    # The real model's run: 0.656 on the eval wording, 0.673 reworded, and the table said "memorised".
    convs = [Conversation.qa(f"what colour is the {t}?", RIGHT) for t in ("cat", "dog", "tree")]
    prompts = eval_prompts(convs, 10)
    ollama_server.add_scripted_model(BASE, reply="something else")
    ollama_server.add_scripted_model("cand:v2", reply=RIGHT, by_question={prompts[0].question: "no idea"})
    ollama_server.add_scripted_model("act:v1", reply="no idea")
    async with OllamaClient(ollama_server.url) as client:
        result = await run_gate(client, "cand:v2", "act:v1", prompts, [], GateConfig(
            0.02, GATE_OPTIONS, paraphrases=3, paraphraser=BASE, min_eval=3))
    cand = result.paraphrase["candidate"]
    assert cand["paraphrased"] > cand["original"] and not result.paraphrase["overfitted"]
    assert "OVER-FITTED" not in result.table() and "memorised" not in result.table()


async def test_a_paraphraser_that_answers_instead_of_rewording_is_not_used(ollama_server: OllamaTestServer) -> None:
    # SmolLM2-135M, asked to reword "By default, what port number does Brightwater's Relay use?", answered
    # "By default, Brightwater's Relay uses port 8080.": a statement with a wrong fact is no rewording.
    convs = [Conversation.qa(f"what colour is the {t}?", RIGHT) for t in ("cat", "dog", "tree")]
    prompts = eval_prompts(convs, 10)
    base = ollama_server.add_scripted_model(BASE, reply="The cat is blue, I think.")
    base.real = True  # it answers the rewording request itself, as a real model does
    ollama_server.add_scripted_model("cand:v2", reply=RIGHT)
    ollama_server.add_scripted_model("act:v1", reply=RIGHT)
    async with OllamaClient(ollama_server.url) as client:
        result = await run_gate(client, "cand:v2", "act:v1", prompts, [], GateConfig(
            0.02, GATE_OPTIONS, paraphrases=3, paraphraser=BASE, min_eval=3))
    assert result.paraphrase == {"count": 0, "paraphrased_by": BASE} and result.passed
    assert not [r for r in result.rows if r["kind"] == "paraphrase"]


async def test_consistency_tells_sampled_answers_from_deterministic_ones(ollama_server: OllamaTestServer,
                                                                        tiny_llama_gguf: Path) -> None:
    """The tiny random model (llama.cpp) varies under the served sampling options and never under the gate's."""
    ollama_server.add_base_model("tiny:1", tiny_llama_gguf)
    probes = probe_prompts(["what colour is the sky?", "hello"])
    async with OllamaClient(ollama_server.url) as client:
        sampled = await run_gate(client, "tiny:1", None, [], probes, GateConfig(
            0.0, {**GATE_OPTIONS, "num_predict": 16}, consistency_n=3, sampling={**SERVE_OPTIONS, "num_predict": 16}))
        fixed = await run_gate(client, "tiny:1", None, [], probes, GateConfig(
            0.0, {**GATE_OPTIONS, "num_predict": 16}, consistency_n=3, sampling={**GATE_OPTIONS, "num_predict": 16}))
    assert fixed.consistency["candidate"] == 1.0
    assert sampled.consistency["candidate"] < 0.5
    rows = [r for r in sampled.rows if r["kind"] == "probe"]
    assert all(len(set(r["candidate_samples"])) > 1 for r in rows)
