"""Each area's fixtures live in tests/harness/<area>.py (db, models, ollama, discord); they are loaded here.

The suite is hermetic: whatever loraloop configuration the person running it has (``LORALOOP_*``,
``DISCORD_TOKEN``, ``OLLAMA_HOST`` in the environment, a ``.env`` in the working directory) must not reach a
test, nor a process a test starts (the CLI, ``loraloop worker``, the local training child). So, at import,
before any test or subprocess exists: the variables are removed from ``os.environ`` and the working directory
becomes an empty one of our own, where Settings' relative ``env_file=".env"`` finds nothing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# The test services' addresses (tests/services.sh) and the llama.cpp source: test infrastructure, not settings.
KEEP = frozenset({"LORALOOP_TEST_POSTGRES_URL", "LORALOOP_TEST_REDIS_URL", "LORALOOP_LLAMA_CPP_SDIST"})
SCRUBBED = ("DISCORD_TOKEN", "OLLAMA_HOST")
REPO = Path(__file__).resolve().parent.parent


def _make_hermetic() -> None:
    for name in list(os.environ):
        if (name.startswith("LORALOOP_") and name not in KEEP) or name in SCRUBBED:
            del os.environ[name]
    # Subprocesses run `python -m bot.cli …` from the new directory: they must still import this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    workdir = tempfile.mkdtemp(prefix="loraloop-tests-cwd-")
    atexit.register(shutil.rmtree, workdir, True)
    os.chdir(workdir)


_make_hermetic()

pytest_plugins = [
    "tests.harness.db",
    "tests.harness.models",
    "tests.harness.ollama",
    "tests.harness.discord",
]
