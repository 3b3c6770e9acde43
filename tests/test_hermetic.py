"""The suite does not depend on the configuration of whoever runs it (see tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow  # a pytest run of its own, with `loraloop dev ollama` in it
def test_ctrl_c_tests_pass_when_the_suite_starts_with_sigint_ignored(tmp_path):
    """A non-interactive shell starts background commands (`make test &` in a script, nohup) with SIGINT ignored,
    and every process a test starts inherits that: a Ctrl-C test then waited on a server that ignored Ctrl-C.
    tests/conftest.py gives the processes the tests start a terminal's Ctrl-C again."""
    test = REPO / "tests/deploy/test_dev_ollama.py::test_ctrl_c_stops_it_whichever_thread_receives_it"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the child inherits, as from such a shell
    try:
        run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0 and "1 passed" in out, out[-4000:]
