"""The fixed, versioned general prompts the retention measurement uses (trainer/retention.py), and their reader.

``general-v1.json`` ships with loraloop: knowledge, writing, reasoning, instructions and small talk, in English
and Chinese. It never changes in place: a changed set is a new file with a new version, since retention numbers
are only comparable between runs that measured the same prompts (``sha256`` says which ones were measured).
No torch here: the bot reads a replacement set to send it to a training host.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.errors import LoraloopError

DEFAULT_FILE = Path(__file__).resolve().parent / "general-v1.json"
# The replay set (trainer/replay.py): disjoint from the retention set, so what is measured is never what is replayed.
REPLAY_FILE = Path(__file__).resolve().parent / "replay-v1.json"


class PromptSetError(LoraloopError, ValueError):
    """The prompt set cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class GeneralPrompts:
    """A named, versioned prompt set."""

    name: str
    version: int
    prompts: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(list(self.prompts), ensure_ascii=False).encode("utf-8")).hexdigest()

    def spread(self, count: int) -> tuple[str, ...]:
        """``count`` prompts spread evenly over the set (so a small count still covers both languages)."""
        n = len(self.prompts)
        if count >= n:
            return self.prompts
        return tuple(self.prompts[i * n // count] for i in range(count))


def load_general_prompts(path: str | Path | None = None, inline: Sequence[str] | None = None) -> GeneralPrompts:
    """The prompt set: ``inline`` prompts, else the JSON file at ``path``, else the shipped set.

    A file holds ``{"name", "version", "prompts": [text or {"text": ...}, ...]}`` or a bare list of prompts."""
    if inline is not None:
        given = tuple(p for p in (str(x).strip() for x in inline) if p)
        if not given:
            raise PromptSetError("general_prompts is empty: give at least one prompt (or leave it unset)")
        return GeneralPrompts("inline", 1, given)
    file = Path(path).expanduser() if path else DEFAULT_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptSetError(f"general prompts file {file} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptSetError(f"general prompts file {file} is not readable JSON: {exc}") from None
    body = raw if isinstance(raw, dict) else {"prompts": raw}
    items = body.get("prompts")
    if not isinstance(items, list) or not items:
        raise PromptSetError(f'general prompts file {file} has no "prompts" list')
    prompts: list[str] = []
    for i, item in enumerate(items):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str) or not text.strip():
            raise PromptSetError(f"general prompts file {file}: prompt {i} has no text")
        prompts.append(text.strip())
    version = body.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise PromptSetError(f"general prompts file {file}: version must be a whole number, not {version!r}")
    return GeneralPrompts(str(body.get("name") or file.stem), version, tuple(prompts))
