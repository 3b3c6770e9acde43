"""The typed training configuration: defaults, YAML + flags, automatic epochs, refusals."""

from __future__ import annotations

import pytest
import yaml

from trainer.config import TrainConfig, TrainingRefused, load_config


def test_practitioner_defaults():
    cfg = TrainConfig()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules) == (16, 32, 0.05, "all-linear")
    # Measured on a real model teaching a few dozen pairs (README "Learning that sticks"), not LF's 2e-4 / batch 8.
    assert (cfg.learning_rate, cfg.batch_size, cfg.replay_ratio) == (1e-3, 4, 1.0)
    assert (cfg.lr_scheduler, cfg.max_grad_norm) == ("cosine", 1.0)
    assert 0.03 <= cfg.warmup_ratio <= 0.1
    assert cfg.refusals(cuda=False) == []


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-4, "epochs": 2}))
    cfg = load_config(path, {"learning_rate": 3e-4, "epochs": None})
    assert (cfg.lora_r, cfg.lora_alpha, cfg.learning_rate, cfg.epochs) == (8, 16, 3e-4, 2)
    # The effective config written next to the adapter loads back to the same object.
    again = tmp_path / "effective.yaml"
    again.write_text(cfg.to_yaml())
    assert load_config(again) == cfg


@pytest.mark.parametrize(("content", "message"), [
    ("lora_r: [1, 2", "is not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("lora_rnk: 8\n", "unknown setting 'lora_rnk' in .* \\(did you mean 'lora_rank'\\?\\)"),
    ("batch_size: zero\n", "setting batch_size"),
])
def test_bad_config_files_are_clear(tmp_path, content, message):
    path = tmp_path / "train.yaml"
    path.write_text(content)
    with pytest.raises(TrainingRefused, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(TrainingRefused, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_empty_config_file_means_defaults(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("")
    assert load_config(path) == TrainConfig()


def test_epochs_follow_dataset_size_unless_given():
    cfg = TrainConfig()
    assert [cfg.resolved_epochs(n) for n in (50, 200, 500, 5000, 50_000)] == [8, 5, 3, 2, 1]
    assert TrainConfig(epochs=7).resolved_epochs(50_000) == 7
    assert TrainConfig(batch_size=4, grad_accum=2).steps_per_epoch(17) == 3


def test_each_unservable_setting_has_its_own_reason():
    cfg = TrainConfig(use_dora=True, use_rslora=True, modules_to_save=["lm_head"], target_modules=["q_proj", "lm_head"],
                      lora_alpha=16.5, qlora=True)
    reasons = cfg.refusals(cuda=False)
    assert len(reasons) == 6
    assert all("\n" not in r for r in reasons)
    assert TrainConfig(qlora=True).refusals(cuda=True) == []
    with pytest.raises(TrainingRefused) as info:
        cfg.check(cuda=False)
    assert str(info.value).count("\n") == 5


def test_chat_template_from_text_or_file(tmp_path):
    assert TrainConfig(chat_template="{{ messages }}").template_text() == "{{ messages }}"
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert TrainConfig(chat_template=str(path)).template_text() == path.read_text()
    with pytest.raises(TrainingRefused, match="neither Jinja text nor a readable file"):
        TrainConfig(chat_template=str(tmp_path / "missing.jinja")).template_text()


def test_yaml_errors_name_the_file_and_the_line(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 2\nlora_rank: [1\n")
    with pytest.raises(TrainingRefused) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"config file {path} is not valid YAML" in message and "line 3" in message
    assert "<unicode string>" not in message and "\n" not in message


@pytest.mark.parametrize("make", [
    lambda p: p.write_bytes(b"\xff\xfe\x00 not text"),
    lambda p: p.mkdir(),
])
def test_unreadable_config_files_name_the_file(tmp_path, make):
    path = tmp_path / "train.yaml"
    make(path)
    with pytest.raises(TrainingRefused, match=f"config file {path}"):
        load_config(path)


def test_a_bad_value_says_whether_it_came_from_the_file_or_a_flag(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("batch_size: zero\nepochs: 3\n")
    with pytest.raises(TrainingRefused) as caught:
        load_config(path, {"learning_rate": -1.0})
    file_line, flag_line = sorted(str(caught.value).splitlines())
    assert file_line.startswith(f"setting batch_size in {path}:")
    assert flag_line.startswith("setting learning_rate from the command line:") and str(path) not in flag_line
