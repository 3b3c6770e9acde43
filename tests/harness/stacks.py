"""A child process that did not stop in time is ended with every thread's Python stack printed, so the failure
says where it hung: started with ``PYTHONFAULTHANDLER=1`` (``FAULTHANDLER``), Python's faulthandler prints them on
SIGABRT before the process dies."""

from __future__ import annotations

import signal
import subprocess

FAULTHANDLER = {"PYTHONFAULTHANDLER": "1"}


def abort_with_stacks(process: subprocess.Popen[str], timeout: float = 15.0) -> str:
    """End ``process`` with SIGABRT; what it printed from then on (its threads' stacks, with stderr joined to
    stdout)."""
    process.send_signal(signal.SIGABRT)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out or ""
