"""The DPO stage on the tiny model, on CPU: it learns held-out preferences, its reference is the SFT model, one
adapter comes out and llama.cpp serves it like an SFT adapter; too few pairs skip it; impossible settings refuse."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest

from data.conversation import Conversation
from data.formats.preference import Preference
from data.snapshot import SnapshotWriter, read_snapshot
from tests.harness.snapshots import COLOURS, FAST, THINGS, synthetic_conversations
from trainer.config import TrainingRefused, load_config

DPO = {**FAST, "epochs": 2, "eval_generate": 2, "max_new_tokens": 6, "probe_eval_samples": 0,
       "dpo": {"enabled": True, "min_pairs": 20, "epochs": 3, "learning_rate": 5e-3, "beta": 0.1, "batch_size": 4}}


def colour_preferences(n: int, seed: int = 0) -> list[Preference]:
    """The expert's pattern ("the cat is blue.") chosen over an evasive answer, for n distinct questions."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        thing, colour = rng.choice(THINGS), rng.choice(COLOURS)
        if (thing, colour) in seen:
            continue
        seen.add((thing, colour))
        q = f"what colour is the {thing}?"
        good, bad = Conversation.qa(q, f"the {thing} is {colour}."), Conversation.qa(q, "i do not know.")
        out.append(Preference(good.messages[:-1], good.messages[-1], bad.messages[-1]))
    return out


@dataclass(frozen=True)
class _Row:  # what the store hands the snapshot writer
    content_hash: str
    messages: list | None = None
    tags: list | None = None
    source: str = "import"
    tools: str | None = None
    prompt: list | None = None
    chosen: dict | None = None
    rejected: dict | None = None


def write_snapshot(directory, n_pairs: int, eval_fraction: float = 0.25):
    examples = sorted((_Row(c.content_hash(), c.to_dicts(), [], "synthetic") for c in synthetic_conversations(60)),
                      key=lambda r: r.content_hash)
    rows = [_Row(p.content_hash(), tags=[], prompt=p.to_row()["prompt"], chosen=p.chosen.to_dict(),
                 rejected=p.rejected.to_dict()) for p in colour_preferences(n_pairs)]
    with SnapshotWriter(directory, eval_fraction) as writer:
        writer.write(examples)
        writer.write_preferences(rows)
        writer.close()
    return directory


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_llama_dir):
    from trainer.recipe import TrainRequest, train

    root = tmp_path_factory.mktemp("dpo")
    snapshot = write_snapshot(root / "snapshot", 40)
    metrics = train(TrainRequest(snapshot, str(tiny_llama_dir), root / "out", load_config(None, DPO)))
    return root / "out", metrics


def test_dpo_raises_held_out_reward_accuracy_and_the_margin(dpo_run, capsys):
    out, metrics = dpo_run
    dpo = metrics["dpo"]
    with capsys.disabled():
        print(f"\n[dpo] pairs {dpo['pairs']}, {dpo['steps']} steps: " + ", ".join(
            f"{k} {dpo['before'][k]:.3f} → {dpo['after'][k]:.3f}"
            for k in ("loss", "reward_accuracy", "reward_margin", "logp_margin")))
    assert dpo["ran"] and dpo["pairs"]["train"] + dpo["pairs"]["eval"] == 40 and dpo["pairs"]["eval"] >= 5
    before, after = dpo["before"], dpo["after"]
    # Before the first step the policy IS the reference: every reward is exactly 0. A bare-base reference would
    # give non-zero rewards here (SFT moved the adapter), so this shows the reference is the SFT model.
    assert before["reward_margin"] == 0 and before["reward_accuracy"] == 0
    assert before["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert after["reward_accuracy"] > 0.5
    assert after["logp_margin"] > before["logp_margin"] + 1.0  # log π(chosen) − log π(rejected) grows
    assert after["loss"] < before["loss"]
    assert json.loads((out / "metrics.json").read_text())["dpo"]["after"] == after


def test_one_adapter_comes_out_and_the_plot_has_a_dpo_panel(dpo_run):
    from PIL import Image

    out, metrics = dpo_run
    assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()
    with Image.open(out / "loss.png") as png:
        assert png.size[0] >= 1000  # two panels side by side (one panel is 700 px wide)
    assert len(metrics["dpo"]["train_curve"]) == metrics["dpo"]["steps"]


def test_dpo_adapter_converts_to_gguf_and_matches_llama_cpp(dpo_run, tiny_llama_dir, tiny_llama_gguf, tmp_path):
    """The DPO output is an ordinary LoRA adapter: converted like an SFT one, llama.cpp computes what PEFT does."""
    pytest.importorskip("llama_cpp")
    import numpy as np
    import torch

    from deploy.gguf import convert_adapter
    from tests.harness.parity import CHAT, llama_logits
    from trainer.recipe import load_adapter

    out, _ = dpo_run
    adapter_gguf = convert_adapter(out, tiny_llama_dir, tmp_path / "dpo.gguf", outtype="f32")
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(tiny_llama_dir).apply_chat_template(CHAT, tokenize=False,
                                                                              add_generation_prompt=True)
    import llama_cpp

    ids = llama_cpp.Llama(model_path=str(tiny_llama_gguf), vocab_only=True, verbose=False).tokenize(
        prompt.encode(), add_bos=False, special=True)
    model = load_adapter(tiny_llama_dir, out).eval()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    theirs = llama_logits(tiny_llama_gguf, ids, adapter_gguf)
    effect = float(np.abs(theirs - llama_logits(tiny_llama_gguf, ids)).max())
    assert float(np.abs(ours - theirs).max()) <= 1e-2
    assert effect > 0.5  # the adapter really moves the logits, so the check above can fail


def test_too_few_pairs_skip_the_stage_with_the_reason(tmp_path):
    from trainer.dpo import run_dpo

    snapshot = read_snapshot(write_snapshot(tmp_path / "snap", 5))
    cfg = load_config(None, DPO)
    dpo = run_dpo(None, None, snapshot, cfg, tmp_path, cuda=False)  # refused before any model work
    assert dpo == {"ran": False, "pairs": {"available": 5},
                   "reason": "5 approved preference records in the snapshot, fewer than dpo.min_pairs (20)"}


def test_scored_completion_is_the_last_answer_and_its_end_of_turn(tiny_llama_dir):
    from transformers import AutoTokenizer

    from trainer.dpo import prepare_preferences
    from trainer.prepare import ChatFormat

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    fmt = ChatFormat(tokenizer, system_prompt="You are terse.")
    [pref] = colour_preferences(1)
    prepared = prepare_preferences(fmt, [pref], 256)
    [example] = prepared.examples
    chosen = tokenizer.decode(example["chosen_ids"])
    rejected = tokenizer.decode(example["rejected_ids"])
    assert chosen.startswith(pref.chosen.content) and chosen.endswith(fmt.end_of_turn[0])
    assert rejected == f"i do not know.{fmt.end_of_turn[0]}"
    # The prompt is exactly what serving sends (system prompt included), tokenised as a whole conversation.
    assert example["prompt_ids"] == fmt.encode_prompt(pref.chosen_conversation())


@pytest.mark.parametrize(("settings", "message"), [
    ({"qlora": True}, "QLoRA needs a CUDA GPU"),
    ({"batching": "packing"}, "dpo.enabled with batching: packing is refused"),
])
def test_impossible_dpo_settings_refuse_before_any_work(tmp_path, tiny_llama_dir, settings, message):
    from trainer.recipe import TrainRequest, train

    snapshot = write_snapshot(tmp_path / "snap", 5)
    cfg = load_config(None, {**DPO, **settings})
    with pytest.raises(TrainingRefused) as refused:
        train(TrainRequest(snapshot, str(tiny_llama_dir), tmp_path / "out", cfg))
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_unknown_dpo_setting_is_refused_by_name():
    with pytest.raises(TrainingRefused, match="unknown setting 'dpo.bta'"):
        load_config(None, {"dpo": {"enabled": True, "bta": 0.1}})
