"""Directories built once per machine and shared by every process (models, vocabularies, llama.cpp's converter).

No torch here: the deploy side and the bot host call it too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def built_once(target: Path, ready: str, build: Callable[[Path], Any]) -> Path:
    """``target``, built by ``build`` into a fresh directory beside it and renamed into place (a complete directory
    has the file ``ready``). Two processes building at once (xdist workers on a fresh machine, two deploys): the
    first rename wins, the other finds the finished directory; a reader never sees one half-built or removed under
    it. A failing ``build`` leaves nothing behind."""
    if (target / ready).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(work)
        work.chmod(0o755)
        if target.exists() and not (target / ready).is_file():
            shutil.rmtree(target, ignore_errors=True)  # left by an older, non-atomic build
        try:
            os.rename(work, target)
        except OSError:
            if not (target / ready).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
