"""Template placeholders (``{{name}}``, LLaMA-Factory's identity data) and ``--set NAME=VALUE`` filling them.

Shared by ``dataset import`` (data/importer.py) and ``train --data`` (trainer/__main__.py): no database here, the
GPU host imports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace

from data.conversation import Conversation

# {{name}}, {{ author }}: the placeholders template datasets ship with.
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def parse_set_values(pairs: Iterable[str]) -> dict[str, str]:
    """``--set`` options as {name: value}; ValueError naming the first one that is not NAME=VALUE."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r} must be NAME=VALUE (e.g. --set name=Ada)")
        values[key.strip()] = value
    return values


def placeholders_in(conversation: Conversation) -> set[str]:
    """The placeholder names the conversation's texts hold."""
    return set(placeholders_in_order(conversation))


def placeholders_in_order(conversation: Conversation) -> list[str]:
    """The placeholder names the conversation's texts hold, in the order they appear (repeats included)."""
    # "{{" looked for first: a plain substring search is many times faster than the pattern's, on every text.
    return [name for m in conversation.messages for text in (m.content, m.reasoning or "") if "{{" in text
            for name in PLACEHOLDER.findall(text)]


def fill_placeholders(conversation: Conversation, values: Mapping[str, str]) -> Conversation:
    """The conversation with each ``{{name}}`` that ``values`` names replaced (others left as they are)."""
    def fill(text: str) -> str:
        return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)

    return replace(conversation, messages=tuple(
        replace(m, content=fill(m.content), reasoning=fill(m.reasoning) if m.reasoning is not None else None)
        for m in conversation.messages))
