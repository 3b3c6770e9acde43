"""Helpers shared by the format codecs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from data.conversation import Conversation
from data.errors import LoraloopError

# Deeper JSON inside a record (tool calls, tool schemas) is refused: json.dumps would recurse past Python's limit.
MAX_NESTING = 100


class RecordIssue(LoraloopError, ValueError):
    """One record is not valid in its format; the message is specific."""


def require_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordIssue(f"a record must be a JSON object, not {type(value).__name__}")
    return value


def text_field(record: dict[str, Any], key: str, *, required: bool = True, default: str = "") -> str:
    if key not in record or record[key] is None:
        if required:
            raise RecordIssue(f'missing "{key}"')
        return default
    value = record[key]
    if not isinstance(value, str):
        raise RecordIssue(f'"{key}" must be text, not {type(value).__name__}')
    return value


def tags_of(record: dict[str, Any]) -> tuple[str, ...]:
    tags = record.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RecordIssue('"tags" must be a list of strings')
    return tuple(tags)


def chat_messages(record: dict[str, Any], roles: tuple[str, ...]) -> list[tuple[int, str, dict[str, Any]]]:
    """(index, role, message) for a record's ``messages`` list, checking its shape and roles."""
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RecordIssue('"messages" must be a non-empty list')
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RecordIssue(f"messages[{i}] must be an object with role/content")
        role = m.get("role")
        if role not in roles:
            raise RecordIssue(f"messages[{i}]: unknown role {role!r} (expected one of {', '.join(roles)})")
        out.append((i, role, m))
    return out


def json_text(value: Any, what: str) -> str:
    """``value`` as JSON text (kept as the dataset had it); refuses nesting deeper than MAX_NESTING levels."""
    if _nesting(value) > MAX_NESTING:
        raise RecordIssue(f"{what} is nested more than {MAX_NESTING} levels deep")
    return json.dumps(value, ensure_ascii=False)


def _nesting(value: Any) -> int:
    """How deep lists and objects nest in ``value``, found without recursion; stops counting past MAX_NESTING."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_NESTING:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_loss_weights(conv: Conversation, format: str) -> None:
    """Refuse a conversation whose loss weights say more than ``format`` can (it has no loss_weight).

    The default weights (1 on an assistant turn or tool call, 0 elsewhere: what LLaMA-Factory v1's converters
    write) are what training does anyway, so leaving them out loses nothing; any other weight would be lost.
    """
    for i, m in enumerate(conv.messages):
        if m.loss_weight is not None and m.loss_weight != (1 if m.role in ("assistant", "tool_call") else 0):
            raise RecordIssue(f"message {i} ({m.role}) has loss_weight {m.loss_weight}, which {format} cannot hold "
                              "(use lf-v1)")
