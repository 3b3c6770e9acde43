"""Training YAML in LLaMA-Factory's key names: each alias translated with a notice, meaningless keys listed once,
an unknown key answered with the closest known one."""

from __future__ import annotations

import re

import pytest
import yaml

from trainer.config import LF_ALIASES, TrainingRefused, load_config, read_config


def loaded(tmp_path, values: dict):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(values))
    return read_config(path)


@pytest.mark.parametrize(("key", "value", "field", "expected"), [
    ("lora_rank", 8, "lora_r", 8),
    ("lora_target", "all", "target_modules", "all-linear"),
    ("lora_target", "q_proj,v_proj", "target_modules", ["q_proj", "v_proj"]),
    ("cutoff_len", 2048, "max_length", 2048),
    ("num_train_epochs", 3.0, "epochs", 3),
    ("per_device_train_batch_size", 2, "batch_size", 2),
    ("gradient_accumulation_steps", 8, "grad_accum", 8),
    ("lr_scheduler_type", "linear", "lr_scheduler", "linear"),
    ("quantization_bit", 4, "qlora", True),
    ("load_best_model_at_end", False, "load_best_at_end", False),
    ("early_stopping_steps", 3, "early_stopping_patience", 3),
    ("additional_target", "norm", "modules_to_save", ["norm"]),
])
def test_each_alias_is_translated_with_one_notice(tmp_path, key, value, field, expected):
    result = loaded(tmp_path, {key: value})
    assert getattr(result.config, field) == expected
    notices = [n for n in result.notices if "defaults taken" not in n]  # its LoRA defaults: test_lf_yaml_run.py
    assert len(notices) == 1
    assert notices[0].startswith(f"{key} in ") and f"LLaMA-Factory's name: read as {field}" in notices[0]


@pytest.mark.parametrize(("key", "value", "field"), [
    ("lora_alpha", 16, "lora_alpha"), ("lora_dropout", 0.1, "lora_dropout"), ("learning_rate", 1.0e-4,
                                                                                "learning_rate"),
    ("warmup_ratio", 0.1, "warmup_ratio"), ("max_steps", 10, "max_steps"), ("weight_decay", 0.01, "weight_decay"),
])
def test_shared_names_need_no_notice(tmp_path, key, value, field):
    result = loaded(tmp_path, {key: value})
    assert getattr(result.config, field) == value and result.notices == []


def test_every_alias_has_a_test():
    tested = {"lora_rank", "lora_target", "cutoff_len", "num_train_epochs", "per_device_train_batch_size",
              "gradient_accumulation_steps", "lr_scheduler_type", "quantization_bit", "load_best_model_at_end",
              "early_stopping_steps", "additional_target"}
    assert set(LF_ALIASES) == tested


def test_a_whole_llama_factory_recipe(tmp_path):
    recipe = {
        "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_rank": 8, "lora_target": "all", "dataset": "identity,alpaca_en_demo",
        "template": "qwen", "cutoff_len": 2048, "max_samples": 1000, "overwrite_cache": True,
        "preprocessing_num_workers": 16, "output_dir": "saves/qwen/lora/sft", "logging_steps": 10,
        "save_steps": 500, "plot_loss": True, "overwrite_output_dir": True, "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 8, "learning_rate": 1.0e-4, "num_train_epochs": 3.0,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": True, "ddp_timeout": 180000000,
        "val_size": 0.1, "per_device_eval_batch_size": 1, "eval_strategy": "steps", "eval_steps": 500,
    }
    result = loaded(tmp_path, recipe)
    cfg = result.config
    assert (cfg.lora_r, cfg.target_modules, cfg.max_length, cfg.batch_size, cfg.grad_accum, cfg.epochs,
            cfg.eval_steps) == (8, "all-linear", 2048, 1, 8, 3, 500)
    ignored = [n for n in result.notices if n.startswith("ignored")]
    assert len(ignored) == 1  # listed once, each with what to do
    for key, advice in [("val_size", "LORALOOP_EVAL_FRACTION"), ("template", "chat template")]:
        assert f"{key} (" in ignored[0] and advice in ignored[0]
    for key in ("model_name_or_path", "dataset", "output_dir"):  # the run's inputs (test_lf_yaml_run.py)
        assert not re.search(rf"[:;] {key} \(", ignored[0])
    assert (cfg.lora_alpha, cfg.lora_dropout) == (16, 0.0)  # LLaMA-Factory's defaults for its file
    assert len(result.notices) == 1 + 7 + 1  # the ignored line, one per translated key, the defaults taken


@pytest.mark.parametrize(("key", "suggestion"), [
    ("lora_rnak", "lora_rank"), ("learning_rte", "learning_rate"), ("cutof_len", "cutoff_len"),
    ("gradient_acumulation_steps", "gradient_accumulation_steps"),
])
def test_near_miss_key_suggests_the_closest(tmp_path, key, suggestion):
    with pytest.raises(TrainingRefused, match=f"unknown setting '{key}' in .*did you mean '{suggestion}'"):
        loaded(tmp_path, {key: 1})


def test_alias_and_own_name_together_are_refused(tmp_path):
    with pytest.raises(TrainingRefused, match="lora_rank and lora_r are the same setting"):
        loaded(tmp_path, {"lora_rank": 8, "lora_r": 16})


def test_quantization_other_than_4_bit_is_refused(tmp_path):
    with pytest.raises(TrainingRefused, match="quantization_bit 8 is refused"):
        loaded(tmp_path, {"quantization_bit": 8})


def test_load_config_still_returns_the_config(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("lora_rank: 4\n")
    assert load_config(path).lora_r == 4
