"""The command line's start-up behaviour: settings and the bot's missing-token message."""

import os
import subprocess
import sys

import pytest

from bot.settings import Settings


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN" and not k.startswith("LORALOOP_")}
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True,
                          env=base, timeout=120)


def test_bot_without_token_names_the_setting(tmp_path):
    result = run_cli("bot", env={"LORALOOP_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "DISCORD_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORALOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:11434")
    s = Settings()
    assert s.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'home' / 'loraloop.db'}"
    assert s.ollama_host == "http://gpu-box:11434"


def test_settings_from_yaml_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "loraloop.yaml"
    cfg.write_text("model_name: physics\nrating_quorum: 3\nguilds:\n  42:\n    expert_role_ids: [7]\n")
    monkeypatch.setenv("LORALOOP_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("LORALOOP_RATING_QUORUM", "4")
    s = Settings()
    assert s.model_name == "physics"
    assert s.rating_quorum == 4  # the environment wins over the file
    assert s.roles_for(42).expert_role_ids == [7]


def test_deploy_settings_reach_the_deploy_config(monkeypatch, tmp_path):
    from deploy.pipeline import DeployConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORALOOP_DEPLOY_MODE", "merged")
    monkeypatch.setenv("LORALOOP_DEPLOY_QUANTIZE", "q4_K_M")
    monkeypatch.setenv("LORALOOP_DEPLOY_KEEP_VERSIONS", "5")
    config = DeployConfig.from_settings(Settings())
    assert (config.mode, config.quantize, config.keep_versions) == ("merged", "q4_K_M", 5)
    monkeypatch.setenv("LORALOOP_DEPLOY_MODE", "sideways")
    with pytest.raises(ValueError, match="deploy_mode"):
        Settings()
