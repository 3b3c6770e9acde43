"""LLaMA-Factory v1: messages whose content is a list of ``{"type": "text", "value": …}`` parts."""

from __future__ import annotations

from typing import Any

from data.conversation import Conversation, Message
from data.formats.common import RecordIssue, chat_messages, require_dict, tags_of

ROLES = ("system", "user", "assistant", "tool")


def parse(value: Any) -> Conversation:
    record = require_dict(value)
    messages = []
    for i, role, m in chat_messages(record, ROLES):
        parts = m.get("content")
        if not isinstance(parts, list):
            raise RecordIssue(f'messages[{i}]: "content" must be a list of {{type, value}} parts')
        texts = []
        for j, part in enumerate(parts):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RecordIssue(f"messages[{i}].content[{j}]: part type {kind!r} is not supported (text only)")
            if not isinstance(part.get("value"), str):
                raise RecordIssue(f'messages[{i}].content[{j}]: "value" must be text')
            texts.append(part["value"])
        messages.append(Message(role, "".join(texts)))
    return Conversation(tuple(messages), tags_of(record))


def dump(conv: Conversation) -> dict[str, Any]:
    if conv.has_tools:
        raise RecordIssue("tool calls cannot be written as lf-v1 (use sharegpt)")
    record: dict[str, Any] = {"messages": [{"role": m.role, "content": [{"type": "text", "value": m.content}]}
                                           for m in conv.messages]}
    if conv.tags:
        record["tags"] = list(conv.tags)
    return record
