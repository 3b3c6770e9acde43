"""Each area's fixtures live in tests/harness/<area>.py (db, models, ollama, discord); they are loaded here.

The suite is hermetic: whatever loraloop configuration the person running it has (``LORALOOP_*``,
``DISCORD_TOKEN``, ``OLLAMA_HOST`` in the environment, a ``.env`` in the working directory) must not reach a
test, nor a process a test starts (the CLI, ``loraloop worker``, the local training child). So, at import,
before any test or subprocess exists: the variables are removed from ``os.environ``, and this process claims a
PostgreSQL database and a Redis db of its own on the test services (tests/harness/services.py). Before the first
test, the working directory becomes an empty one of our own, where Settings' relative ``env_file=".env"`` finds
nothing (a session fixture: changed at import, it would make pytest-xdist's workers collect nothing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

# The test services' addresses (tests/services.sh) and the llama.cpp source: test infrastructure, not settings.
KEEP = frozenset({"LORALOOP_TEST_POSTGRES_URL", "LORALOOP_TEST_REDIS_URL", "LORALOOP_LLAMA_CPP_SDIST"})
SCRUBBED = ("DISCORD_TOKEN", "OLLAMA_HOST")
REPO = Path(__file__).resolve().parent.parent
RUNNER_COLUMNS = os.environ.get("COLUMNS")  # the terminal pytest reports to (see pytest_configure)


def _make_hermetic() -> None:
    for name in list(os.environ):
        if (name.startswith("LORALOOP_") and name not in KEEP) or name in SCRUBBED:
            del os.environ[name]
    # Subprocesses run `python -m bot.cli …` from the new directory: they must still import this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    # The CLI's rich console wraps at the terminal's width (80 without one), cutting long temp paths mid-word:
    # in-process runs and subprocesses alike get a wide one (pytest's own report keeps its width: below).
    os.environ["COLUMNS"] = "400"


_make_hermetic()

from tests.harness import services  # noqa: E402  (needs the checkout on sys.path)

# Before any test module or harness reads the two URLs (they do at import).
SERVICES = services.claim()

pytest_plugins = [
    "tests.harness.db",
    "tests.harness.models",
    "tests.harness.ollama",
    "tests.harness.discord",
]


@pytest.hookimpl(trylast=True)  # after the terminal reporter exists
def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a non-interactive shell (`make test &` in a script, nohup) inherits
    # SIGINT ignored, and so would every process a test starts: a Ctrl-C sent to `loraloop dev ollama` or a trainer
    # would then do nothing (Python installs its KeyboardInterrupt handler only where SIGINT is not ignored). The
    # tests send Ctrl-C as a terminal does to a foreground command, so the processes they start get it as such.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        SERVICES.release()  # pytest-xdist's controller runs no test: each worker claims its own
    # The wide COLUMNS is for the CLI under test; pytest's report keeps the width of the terminal it prints to
    # (read with capturing off: it holds stdout's file descriptor).
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        os.environ["COLUMNS"] = RUNNER_COLUMNS or ""
        width = shutil.get_terminal_size().columns
        os.environ["COLUMNS"] = "400"
    if config.pluginmanager.get_plugin("terminalreporter"):
        config.get_terminal_writer().fullwidth = width if width >= 40 else 80


def pytest_unconfigure(config: pytest.Config) -> None:
    SERVICES.release()


@pytest.fixture(scope="session", autouse=True)
def empty_working_directory(tmp_path_factory: pytest.TempPathFactory):
    """The working directory of every test: empty, no ``.env`` (per xdist worker, like tmp_path_factory)."""
    before = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(autouse=True)
def own_user_data_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """LORALOOP_HOME defaults to the per-user data folder (worker/settings.py): each test gets its own, so none
    reads another's database nor the person's running the suite (subprocesses inherit it)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))


# Minutes of CPU training first: under `-n 2` one worker trains the real model while the other runs the rest.
LONGEST_FIRST = ("tests/quality/test_real_model.py::",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(LONGEST_FIRST))  # stable: the rest keep their order
