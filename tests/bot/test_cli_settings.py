"""The command line's start-up behaviour: settings and the bot's missing-token message."""

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from bot.settings import Settings


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN" and not k.startswith("LORALOOP_")}
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True,
                          env=base, timeout=120)


def config_file(monkeypatch, tmp_path, text: str):
    """``text`` as loraloop.yaml in ``tmp_path``, the file LORALOOP_CONFIG_FILE names; its path."""
    cfg = tmp_path / "loraloop.yaml"
    cfg.write_text(text)
    monkeypatch.setenv("LORALOOP_CONFIG_FILE", str(cfg))
    return cfg


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
    config_file(monkeypatch, tmp_path,
                "model_name: physics\nrating_quorum: 3\nguilds:\n  42:\n    expert_role_ids: [7]\n")
    monkeypatch.setenv("LORALOOP_RATING_QUORUM", "4")
    s = Settings()
    assert s.model_name == "physics"
    assert s.review.rating_quorum == 4  # the environment wins over the file
    assert s.roles_for(42).expert_role_ids == [7]


def test_deploy_settings_reach_the_deploy_config(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORALOOP_DEPLOY_MODE", "merged")
    monkeypatch.setenv("LORALOOP_DEPLOY__QUANTIZE", "q4_k_m")
    monkeypatch.setenv("LORALOOP_DEPLOY_KEEP_VERSIONS", "5")
    config = Settings(model_name="physics").deploy_config()
    assert (config.mode, config.quantize, config.keep_versions) == ("merged", "q4_K_M", 5)
    assert (config.model_name, config.paraphrases) == ("physics", 4)  # the rest: the deploy: group's defaults
    monkeypatch.setenv("LORALOOP_DEPLOY_MODE", "sideways")
    with pytest.raises(ValueError, match="deploy.mode"):
        Settings()


def test_grouped_settings_read_by_their_nested_and_their_flat_names(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config_file(monkeypatch, tmp_path, "deploy:\n  mode: gguf\n  keep_versions: 5\ngate_paraphrases: 2\n"
                                       "review:\n  approve_mean: 4.5\nrating_quorum: 3\n")
    (tmp_path / ".env").write_text("LORALOOP_QUALITY_MIN_VOTES=30\nLORALOOP_DEPLOY__MIN_EVAL=4\n")
    monkeypatch.setenv("LORALOOP_DEPLOY__GATE_MARGIN", "0.1")
    monkeypatch.setenv("LORALOOP_DEPLOY_QUANTIZE", "q8_0")
    monkeypatch.setenv("LORALOOP_REVIEW__COMPARE_QUESTIONS", "7")
    monkeypatch.setenv("LORALOOP_GATE_CONSISTENCY_N", "0")
    s = Settings()
    assert (s.deploy.mode, s.deploy.keep_versions, s.deploy.paraphrases, s.deploy.gate_margin, s.deploy.quantize,
            s.deploy.min_eval, s.deploy.consistency_n) == ("gguf", 5, 2, 0.1, "q8_0", 4, 0)
    assert (s.review.approve_mean, s.review.rating_quorum, s.review.quality_min_votes,
            s.review.compare_questions) == (4.5, 3, 30, 7)
    # Keywords too (the tests' own settings use both).
    assert Settings(deploy_eval_limit=5).deploy.eval_limit == Settings(deploy={"eval_limit": 5}).deploy.eval_limit == 5
    assert Settings(reject_mean=2.0).review == Settings(review={"reject_mean": 2.0}).review
    # The cross-field check holds whichever spelling set the values.
    with pytest.raises(ValidationError, match=r"approve_mean \(3.0\) must be above reject_mean \(3.5\)"):
        Settings(approve_mean=3.0, review={"reject_mean": 3.5})


@pytest.mark.parametrize(("where", "message"), [
    ("yaml", "deploy.mode: set as both deploy_mode and deploy.mode in {cfg}: keep one"),
    ("env", "deploy.mode: set as both LORALOOP_DEPLOY_MODE and LORALOOP_DEPLOY__MODE in the environment: keep one"),
    (".env", "deploy.mode: set as both LORALOOP_DEPLOY_MODE and LORALOOP_DEPLOY__MODE in .env: keep one"),
    ("keywords", "deploy.mode: set as both deploy_mode and deploy.mode in the arguments: keep one"),
])
def test_both_spellings_of_one_setting_in_one_place_are_refused(monkeypatch, tmp_path, where, message):
    from data.validation import describe

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "loraloop.yaml"
    keywords = {}
    if where == "yaml":
        config_file(monkeypatch, tmp_path, "deploy_mode: gguf\ndeploy:\n  mode: adapter\n")
    elif where == "env":
        monkeypatch.setenv("LORALOOP_DEPLOY_MODE", "gguf")
        monkeypatch.setenv("LORALOOP_DEPLOY__MODE", "adapter")
    elif where == ".env":
        (tmp_path / ".env").write_text("LORALOOP_DEPLOY_MODE=gguf\nLORALOOP_DEPLOY__MODE=adapter\n")
    else:
        keywords = {"deploy_mode": "gguf", "deploy": {"mode": "adapter"}}
    with pytest.raises(ValidationError) as refused:
        Settings(**keywords)
    assert describe(refused.value) == message.format(cfg=cfg)


def test_between_places_the_usual_order_decides_whichever_spelling_each_used(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config_file(monkeypatch, tmp_path,
                "deploy_mode: adapter\ndeploy:\n  keep_versions: 5\nreview:\n  rating_quorum: 3\n")
    monkeypatch.setenv("LORALOOP_DEPLOY__MODE", "gguf")
    monkeypatch.setenv("LORALOOP_RATING_QUORUM", "4")
    s = Settings()
    # The environment wins over the file, field by field: the file's other deploy: settings stay.
    assert (s.deploy.mode, s.deploy.keep_versions, s.review.rating_quorum) == ("gguf", 5, 4)
    assert Settings(deploy={"mode": "merged"}).deploy == s.deploy.model_copy(update={"mode": "merged"})
