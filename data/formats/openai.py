"""OpenAI chat: ``{"messages": [{"role", "content"}, …]}``, roles system/user/assistant/tool.

An assistant message with ``tool_calls`` is a tool_call turn whose text is the calls' JSON.
"""

from __future__ import annotations

import json
from typing import Any

from data.conversation import Conversation, Message
from data.formats.common import RecordIssue, chat_messages, json_text, require_dict, tags_of

ROLES = ("system", "user", "assistant", "tool")


def parse(value: Any) -> Conversation:
    record = require_dict(value)
    messages = []
    for i, role, m in chat_messages(record, ROLES):
        if role == "assistant" and m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list):
                raise RecordIssue(f'messages[{i}]: "tool_calls" must be a list')
            messages.append(Message("tool_call", json_text(m["tool_calls"], f'messages[{i}]: "tool_calls"')))
            continue
        content = m.get("content")
        if not isinstance(content, str):
            raise RecordIssue(f'messages[{i}] ({role}): "content" must be text')
        messages.append(Message(role, content))
    return Conversation(tuple(messages), tags_of(record))


def dump(conv: Conversation) -> dict[str, Any]:
    out = []
    for m in conv.messages:
        if m.role == "tool_call":
            try:
                calls = json.loads(m.content)
            except (json.JSONDecodeError, RecursionError):  # any text may be a tool call's, nested 100k deep too
                calls = None
            if not isinstance(calls, list):
                raise RecordIssue("a tool call that is not an OpenAI tool_calls list cannot be written as openai")
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            out.append({"role": m.role, "content": m.content})
    record: dict[str, Any] = {"messages": out}
    if conv.tags:
        record["tags"] = list(conv.tags)
    return record
