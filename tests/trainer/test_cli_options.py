"""The training command's options are built from TrainConfig: a new field is an option at once, ``--help`` shows the
config's own defaults, and the command line overrides ``--config`` setting by setting (nested ones too)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from pydantic import Field
from typer.testing import CliRunner

from bot.cli import app as loraloop
from trainer.__main__ import config_options, given_settings
from trainer.config import DPOSettings, TrainConfig, read_config

WIDE = {"TERMINAL_WIDTH": "400", "COLUMNS": "400"}  # one help line per option


def settings_app(model: type[TrainConfig]) -> typer.Typer:
    """A command with ``model``'s options that prints the config they (over --config, read as a TrainConfig) make."""
    app = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]})

    @app.callback()
    def _root() -> None:
        """Root."""

    @app.command("train")
    @config_options(model)
    def train(config: Path | None = typer.Option(None, "--config"), **settings: Any) -> None:
        given = given_settings(settings)
        cfg = read_config(config, given).config if config is not None else model(**given)
        print(json.dumps(cfg.model_dump(mode="json")))

    return app


def help_lines(app: typer.Typer, *args: str) -> dict[str, str]:
    """Each option's help line, by its first name."""
    result = CliRunner().invoke(app, [*args, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = {}
    for line in result.output.splitlines():
        if match := re.match(r"│\s*(?:\*\s+)?(--[a-z0-9-]+)", line):
            lines[match[1]] = " ".join(line.strip("│ ").split())
    return lines


def run(app: typer.Typer, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_new_config_field_is_an_option_with_its_default_and_help():
    class Wider(TrainConfig):
        lora_r: int = Field(default=8, ge=1, description="LoRA rank.")
        neftune_alpha: float = Field(default=5.0, gt=0, description="Noise added to the embeddings.")

    app = settings_app(Wider)
    lines = help_lines(app, "train")
    assert "Noise added to the embeddings." in lines["--neftune-alpha"]
    assert lines["--neftune-alpha"].endswith("[default: 5]")
    assert lines["--lora-r"].endswith("[default: 8]")  # the subclass's default, not a copy of the base's 16
    assert run(app)["neftune_alpha"] == 5.0
    assert run(app, "--neftune-alpha", "0.5")["neftune_alpha"] == 0.5


def test_loraloop_train_help_lists_every_setting_with_the_configs_default():
    lines = help_lines(loraloop, "train")
    defaults = TrainConfig()
    fields = [(name, info, getattr(defaults, name)) for name, info in TrainConfig.model_fields.items() if name != "dpo"]
    fields += [(f"dpo_{name}", info, getattr(defaults.dpo, name)) for name, info in DPOSettings.model_fields.items()]
    for name, info, default in fields:
        option = name.replace("_", "-")
        line = lines["--" + option]
        assert info.description and info.description in line, line
        if isinstance(default, bool):
            assert line.endswith(f"[default: {'' if default else 'no-'}{option}]"), line
        elif isinstance(default, int | float):
            assert line.endswith(f"[default: {default:g}]"), line
        elif isinstance(default, str):
            assert line.endswith(f"[default: {default}]"), line
        elif default is None:
            assert "[default:" not in line, line
    # The options the orchestrator and people already type keep working.
    assert "-r" in lines["--lora-r"].split() and "--lr" in lines["--learning-rate"]
    for own in ("--snapshot", "--data", "--format", "--columns", "--base", "--out", "--config", "--json-progress",
                "--resume", "--eval-fraction"):
        assert own in lines


def test_the_command_line_overrides_the_config_file_setting_by_setting(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"lora_r": 4, "qlora": True, "batching": "padded",
                                      "dpo": {"enabled": True, "beta": 0.3}}))
    app = settings_app(TrainConfig)
    assert run(app, "--config", str(config))["lora_r"] == 4
    cfg = run(app, "--config", str(config), "--lora-r", "32", "--no-qlora", "--dpo-beta", "0.2",
              "--learning-rate", "1e-4", "--probes", "Who are you?", "--probes", "What do you know?")
    assert (cfg["lora_r"], cfg["qlora"], cfg["batching"], cfg["learning_rate"]) == (32, False, "padded", 1e-4)
    assert cfg["dpo"] == {**TrainConfig().dpo.model_dump(), "enabled": True, "beta": 0.2}  # merged, not replaced
    assert cfg["probes"] == ["Who are you?", "What do you know?"]
    assert run(app, "--target-modules", "all-linear")["target_modules"] == "all-linear"
    assert run(app, "--target-modules", "q_proj")["target_modules"] == ["q_proj"]


def test_a_literal_is_a_choice():
    result = CliRunner().invoke(settings_app(TrainConfig), ["train", "--batching", "sideways"])
    assert result.exit_code == 2 and "sideways" in result.output
    assert help_lines(settings_app(TrainConfig), "train")["--batching"].split()[1] == (
        "<auto|padding_free|packing|padded>")


def test_given_settings_nests_and_drops_the_unset():
    assert given_settings({"lora_r": 8, "epochs": None, "dpo__beta": 0.2, "dpo__enabled": None}) == {
        "lora_r": 8, "dpo": {"beta": 0.2}}


def test_a_field_without_help_or_a_command_line_form_is_refused_when_the_command_is_built():
    class Undocumented(TrainConfig):
        secret_knob: int = 3

    class Unparsable(TrainConfig):
        weights: dict[str, float] = Field(default_factory=dict, description="Per-source weights.")

    with pytest.raises(TypeError, match="secret_knob has no description"):
        settings_app(Undocumented)
    with pytest.raises(TypeError, match="weights: a .* has no command-line form"):
        settings_app(Unparsable)
