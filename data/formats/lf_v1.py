"""LLaMA-Factory v1: messages whose content is a list of ``{"type": "text", "value": …}`` parts.

An assistant's ``{"type": "reasoning", …}`` parts are its reasoning.
"""

from __future__ import annotations

from typing import Any

from data.conversation import Conversation, Message, assistant
from data.formats.common import RecordIssue, chat_messages, require_dict, tags_of

ROLES = ("system", "user", "assistant", "tool")
REASONING_PARTS = ("reasoning", "think", "thinking")


def parse(value: Any) -> Conversation:
    record = require_dict(value)
    messages = []
    for i, role, m in chat_messages(record, ROLES):
        parts = m.get("content")
        if not isinstance(parts, list):
            raise RecordIssue(f'messages[{i}]: "content" must be a list of {{type, value}} parts')
        texts, thoughts = [], []
        for j, part in enumerate(parts):
            if isinstance(part, dict) and part.get("type") in REASONING_PARTS and role == "assistant":
                if not isinstance(part.get("value"), str):
                    raise RecordIssue(f'messages[{i}].content[{j}]: "value" must be text')
                thoughts.append(part["value"])
                continue
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RecordIssue(f"messages[{i}].content[{j}]: part type {kind!r} is not supported (text only)")
            if not isinstance(part.get("value"), str):
                raise RecordIssue(f'messages[{i}].content[{j}]: "value" must be text')
            texts.append(part["value"])
        if role == "assistant":
            messages.append(assistant("".join(texts), "".join(thoughts) if thoughts else None))
        else:
            messages.append(Message(role, "".join(texts)))
    return Conversation(tuple(messages), tags_of(record))


def dump(conv: Conversation) -> dict[str, Any]:
    if conv.has_tools:
        raise RecordIssue("tool calls cannot be written as lf-v1 (use sharegpt)")
    record: dict[str, Any] = {"messages": [
        {"role": m.role, "content": ([{"type": "reasoning", "value": m.reasoning}] if m.reasoning is not None else [])
         + [{"type": "text", "value": m.content}]} for m in conv.messages]}
    if conv.tags:
        record["tags"] = list(conv.tags)
    return record
