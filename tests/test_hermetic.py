"""The suite does not depend on the configuration of whoever runs it (see tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot.settings import Settings

REPO = Path(__file__).resolve().parent.parent
HOSTILE_ENV = {
    "LORALOOP_DATABASE_URL": "postgresql+asyncpg://prod:hunter2@db.example.invalid/prod",
    "LORALOOP_MODEL_NAME": "production",
    "OLLAMA_HOST": "gpu-box.example.invalid:11434",
    "DISCORD_TOKEN": "MTAwMDAwMDAwMDAwMDAwMDAw.real.token-from-the-developers-shell",
}
HOSTILE_DOTENV = (
    "DISCORD_TOKEN=MTAwMDAwMDAwMDAwMDAwMDAw.dotenv.token-from-a-dotenv-file\n"
    "LORALOOP_MODEL_NAME=from-dotenv\n"
    "LORALOOP_DISPATCHER=celery\n"
)


def test_settings_here_see_no_outside_configuration():
    assert not [k for k in os.environ if k.startswith("LORALOOP_") and not k.startswith(("LORALOOP_TEST_",
                                                                                             "LORALOOP_LLAMA_CPP"))]
    assert "DISCORD_TOKEN" not in os.environ and "OLLAMA_HOST" not in os.environ
    assert not (Path.cwd() / ".env").exists()
    s = Settings()
    assert (s.discord_token, s.model_name, s.ollama_host) == (None, "assistant", "http://127.0.0.1:11434")


def test_suite_passes_with_a_hostile_environment_and_dotenv(tmp_path):
    (tmp_path / ".env").write_text(HOSTILE_DOTENV, encoding="utf-8")
    env = {**os.environ, **HOSTILE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests/bot/test_cli_settings.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
