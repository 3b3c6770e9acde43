"""A real training run of the tiny model on CPU: what a user and the deploy side find in --out."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from trainer.config import TrainConfig


def test_tiny_run_learns(trained_run):
    # How fast is the bench's business (bench/bench_train.py), not a timed test's.
    out, metrics, _ = trained_run
    assert metrics["device"] == "cpu"
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.5
    assert metrics["token_accuracy_after"] > metrics["token_accuracy_before"]
    mixed = metrics["examples"]["train"] + metrics["replay"]["examples"]  # the base's replayed answers train too
    assert metrics["steps"] == metrics["epochs"] * -(-mixed // 8)
    assert metrics["tokens_seen"] > 0 and metrics["tokens_per_s"] > 0 and metrics["peak_memory_bytes"] > 0


def test_run_directory_holds_everything_promised(trained_run):
    out, metrics, _ = trained_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "metrics.json", "loss.png", "probes.json",
                 "config.yaml", "train.log"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32 and not adapter["use_dora"]
    assert not adapter["use_rslora"] and not adapter["modules_to_save"]
    # The effective config reproduces the run.
    stored = TrainConfig(**yaml.safe_load((out / "config.yaml").read_text()))
    assert stored.learning_rate == 5e-3 and stored.epochs == 3
    # One eval loss per epoch after the "before" point, and a train loss per step.
    assert [p["epoch"] for p in metrics["eval_loss_curve"]] == [0.0, 1.0, 2.0, 3.0]
    assert len(metrics["train_loss_curve"]) == metrics["steps"]
    assert metrics["best_checkpoint"]
    assert "train" in (out / "train.log").read_text()


def test_probes_and_eval_answers_side_by_side(trained_run):
    out, metrics, _ = trained_run
    probes = json.loads((out / "probes.json").read_text())
    assert [p["question"] for p in probes][:2] == ["Hello! Who are you?", "what colour is the sky?"]
    assert len(probes) == 4  # two configured + two eval prompts
    assert all(set(p) == {"question", "before", "after"} for p in probes)
    assert any(p["before"] != p["after"] for p in probes)
    table = metrics["eval_table"]
    assert len(table) == metrics["answers"]["after"]["count"] == min(6, metrics["examples"]["eval"])
    assert all(0 <= row["rouge_l_after"] <= 1 for row in table)
    assert metrics["answers"]["after"]["rouge_l"] > metrics["answers"]["before"]["rouge_l"]


def test_adapter_loads_with_peft_and_changes_logits(trained_run, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _, _ = trained_run
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        after = tuned(ids).logits
        with tuned.disable_adapter():
            disabled = tuned(ids).logits
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(disabled, before)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_padding_free_batches_do_not_leak_between_examples(arch, tiny_llama_dir, tiny_qwen2_dir):
    """Padding-free (our default, chosen by measurement) gives the same loss as padded batches.

    Regression: with the model's KV cache on, transformers does not detect the packed batch and lets
    examples attend to each other; the recipe's loader turns it off.
    """
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tests.harness.snapshots import synthetic_conversations
    from trainer.prepare import ChatFormat
    from trainer.recipe import load_base_model

    model_dir = tiny_llama_dir if arch == "llama" else tiny_qwen2_dir
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_base_model(model_dir, TrainConfig(), cuda=False).train()  # as the trainer runs it
    examples = ChatFormat(tokenizer).prepare(synthetic_conversations(6, seed=3), 512).examples
    assert len({len(e["input_ids"]) for e in examples}) > 1
    losses = {}
    for padding_free in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)(examples)
        with torch.no_grad():
            losses[padding_free] = model(**{k: v for k, v in batch.items() if k in
                                            ("input_ids", "attention_mask", "position_ids", "labels")}).loss
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-5)


def test_early_stopping_ends_the_run_and_keeps_the_best_checkpoint(tmp_path, snapshot_dir, tiny_llama_dir):
    from trainer.config import load_config
    from trainer.recipe import TrainRequest, train

    # An improvement threshold no step can meet: the run stops after `patience` evaluations without one.
    cfg = load_config(None, {"max_steps": 40, "eval_steps": 2, "cpu_threads": 1, "early_stopping_patience": 2,
                             "early_stopping_threshold": 100.0, "eval_generate": 0, "probes": [],
                             "probe_eval_samples": 0})
    metrics = train(TrainRequest(snapshot_dir, str(tiny_llama_dir), tmp_path / "out", cfg))
    assert metrics["steps"] < 40
    assert [p["step"] for p in metrics["eval_loss_curve"]][1:] == list(range(2, metrics["steps"] + 1, 2))
    best = min(metrics["eval_loss_curve"][1:], key=lambda p: p["eval_loss"])
    assert metrics["best_checkpoint"].endswith(f"checkpoint-{best['step']}")


def test_pad_token_is_never_an_end_of_turn_token(tiny_llama_dir):
    from transformers import AutoTokenizer

    from trainer.recipe import _set_distinct_pad

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for pad in (tok.eos_token, None):
        tok.pad_token = pad
        _set_distinct_pad(tok, (tok.eos_token,))
        assert tok.pad_token and tok.pad_token != tok.eos_token and tok.pad_token_id != tok.eos_token_id


def test_resume_skips_a_checkpoint_cut_short_by_the_crash(tmp_path):
    from trainer.recipe import _last_checkpoint

    for step, state in ((5, '{"global_step": 5}'), (10, '{"global_step": 10}'), (15, '{"global_st')):
        ckpt = tmp_path / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoints" / "checkpoint-20").mkdir()  # crashed before its state was written
    assert _last_checkpoint(tmp_path).name == "checkpoint-10"
