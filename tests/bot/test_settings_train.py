"""``retrain_train`` is read by the trainer only when a run starts, maybe days later on a GPU worker: the settings
check it as the trainer's own TrainConfig when they load, so a typo stops the bot at start with the setting's name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from bot.settings import Settings
from trainer.config import TrainConfig


def test_a_valid_retrain_train_loads_and_is_what_the_trainer_reads(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORALOOP_RETRAIN_TRAIN__LEARNING_RATE", "1e-4")  # text, as the environment gives it
    settings = Settings(retrain_train={"epochs": 2, "dpo": {"enabled": True}, "learning_rate": 5e-4})
    assert TrainConfig(**settings.retrain_train).epochs == 2
    assert Settings().retrain_train == {"learning_rate": "1e-4"}
    assert TrainConfig(**Settings().retrain_train).learning_rate == 1e-4


@pytest.mark.parametrize(("train", "named"), [
    ({"lerning_rate": 1e-4}, "retrain_train.lerning_rate: not a trainer setting"),
    ({"dpo": {"bta": 0.1}}, "retrain_train.dpo.bta: not a trainer setting"),
    ({"lora_r": "sixteen"}, "retrain_train.lora_r: Input should be a valid integer"),
    ({"epochs": 0}, "retrain_train.epochs: Input should be greater than or equal to 1 (got 0)"),
    ({"batching": "sideways"}, "retrain_train.batching: Input should be 'auto', 'padding_free'"),
])
def test_a_bad_retrain_train_fails_when_the_settings_load(monkeypatch, tmp_path, train, named):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match="retrain_train") as caught:
        Settings(retrain_train=train)
    assert named in str(caught.value)


def test_the_command_line_stops_at_start_naming_the_setting(tmp_path):
    (tmp_path / "loraloop.yaml").write_text("retrain_train:\n  learning_rate: 1e-4\n  lora_rank: 8\n")
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN" and not k.startswith("LORALOOP_")}
    env.update(LORALOOP_CONFIG_FILE=str(tmp_path / "loraloop.yaml"), LORALOOP_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-m", "bot.cli", "bot"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert "retrain_train.lora_rank: not a trainer setting" in done.stderr
    assert "Traceback" not in done.stderr


def test_checking_retrain_train_imports_no_torch():
    code = ("import sys; from bot.settings import Settings; Settings(retrain_train={'epochs': 1}); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
