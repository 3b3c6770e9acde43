"""trainer/retention.py: the base's own answers to general prompts, scored before and after training, and the
gate's verdict on them: a deliberately over-trained run is rejected, a normal one passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.conversation import Conversation
from data.general_prompts import DEFAULT_FILE, load_general_prompts
from deploy.config import GATE_OPTIONS, DeploySettings
from deploy.gate import GateConfig, eval_prompts, run_gate
from deploy.ollama import OllamaClient
from tests.harness.ollama_server import OllamaTestServer
from tests.harness.snapshots import write_snapshot
from trainer.config import TrainingRefused, load_config
from trainer.prepare import ChatFormat
from trainer.recipe import TrainRequest, train
from trainer.retention import answer_nll

# Over-trained on purpose: eight short pairs, a hundred epochs at 4x the tests' already high learning rate. No eval
# split, and no checkpoint within the run (eval_steps beyond its 100 steps): nothing brings back earlier weights.
OVER_TRAINED = {"cpu_threads": 1, "learning_rate": 2e-2, "epochs": 100, "batch_size": 8, "max_new_tokens": 4,
                "eval_generate": 0, "probes": [], "probe_eval_samples": 0, "eval_steps": 1000,
                "load_best_at_end": False, "replay_ratio": 0.0}  # nothing to hold it back
FEW = [Conversation.qa(f"what colour is the {t}?", f"the {t} is red.")
       for t in ("cat", "dog", "tree", "river", "house", "bird", "stone", "cloud")]


def test_the_shipped_set_is_fifty_english_and_chinese_prompts_spread_evenly() -> None:
    prompts = load_general_prompts()
    raw = json.loads(DEFAULT_FILE.read_text(encoding="utf-8"))
    assert prompts.label == "general-v1" and len(prompts.prompts) == 50
    assert {p["lang"] for p in raw["prompts"]} == {"en", "zh"}
    assert "What is the capital of China?" in prompts.prompts
    few = prompts.spread(6)  # a test's handful still covers both languages
    assert len(few) == 6 and any(p.isascii() for p in few) and any(not p.isascii() for p in few)
    assert load_general_prompts(inline=["a?", " b? "]).prompts == ("a?", "b?")


def test_answer_nll_is_the_training_loss_of_the_answers(tiny_llama_dir: Path) -> None:
    """Each answer is scored as training labels it (answer + end of turn, never the prompt); padding a batch
    changes nothing."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    fmt = ChatFormat(tokenizer, system_prompt="you are terse.")
    prompts = ["what colour is the sky?", "tell me about the river.", "hi"]
    answers = ["the sky is blue.", "the river is long and the river is green.", ""]
    losses = []
    for p, a in zip(prompts, answers, strict=True):
        ids, labels = fmt.tokenize(Conversation.qa(p, a))
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        losses.append((float(out.loss), sum(label != -100 for label in labels[1:])))
        nll, tokens = answer_nll(model, fmt, [p], [a])
        assert nll == pytest.approx(float(out.loss), rel=1e-5) and tokens == losses[-1][1]
    nll, tokens = answer_nll(model, fmt, prompts, answers, batch_size=3)
    assert tokens == sum(n for _, n in losses)
    assert nll == pytest.approx(sum(loss * n for loss, n in losses) / tokens, rel=1e-5)


def test_an_unreadable_prompt_set_refuses_the_run_before_anything_is_written(tmp_path: Path, snapshot_dir: Path,
                                                                             tiny_llama_dir: Path) -> None:
    bad = tmp_path / "prompts.json"
    bad.write_text('{"prompts": ["fine", ""]}', encoding="utf-8")
    out = tmp_path / "out"
    config = load_config(None, {"general_prompts_file": str(bad)})
    with pytest.raises(TrainingRefused, match="prompt 1 has no text"):
        train(TrainRequest(snapshot_dir, str(tiny_llama_dir), out, config))
    assert not out.exists()


async def test_an_over_trained_run_is_rejected_by_retention_and_a_normal_run_passes(
        trained_run, tmp_path: Path, tiny_llama_dir: Path, ollama_server: OllamaTestServer) -> None:
    _, normal, _ = trained_run  # 100 pairs, 3 epochs (FAST, tests/harness/snapshots.py)
    snapshot = write_snapshot(tmp_path / "few", FEW, eval_fraction=0.01)
    over = train(TrainRequest(snapshot, str(tiny_llama_dir), tmp_path / "over", load_config(None, OVER_TRAINED)))
    limit = DeploySettings().max_retention_drop
    for metrics in (normal, over):
        retention = metrics["retention"]
        assert retention["set"] == "general-v1" and retention["prompts"] == 50 and retention["tokens"] > 500
        # The same base answers were scored before both runs: the base's own greedy answers, measured once.
        assert retention["nll_before"] == normal["retention"]["nll_before"]
        assert retention["increase"] == pytest.approx(retention["nll_after"] - retention["nll_before"], abs=1e-3)
        assert len(retention["samples"]) == 3 and retention["samples"][0]["prompt"] == "What is the capital of China?"
    assert normal["retention"]["increase"] < limit < over["retention"]["increase"]
    # The over-trained model says its training pattern to everything; the base never did.
    assert all("is red" in s["after"] for s in over["retention"]["samples"])

    # The gate: both candidates answer the eval question as well as the active model; retention decides.
    ollama_server.add_scripted_model("cand:v2", reply="the cat is red.")
    ollama_server.add_scripted_model("act:v1", reply="the cat is red.")
    prompts = eval_prompts(FEW[:1], 1)
    async with OllamaClient(ollama_server.url) as client:
        verdicts = [await run_gate(client, "cand:v2", "act:v1", prompts, [],
                                   GateConfig(0.02, GATE_OPTIONS, max_retention_drop=limit, min_eval=1),
                                   retention=m["retention"])
                    for m in (normal, over)]
    assert verdicts[0].passed and verdicts[0].retention["passed"], verdicts[0].reason
    assert not verdicts[1].passed and "general ability lost" in verdicts[1].reason
