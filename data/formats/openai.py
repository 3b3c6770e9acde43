"""OpenAI chat: ``{"messages": [{"role", "content"}, …]}``, roles system/user/assistant/tool.

An assistant message with ``tool_calls`` is a tool_call turn whose text is the calls' JSON; its reasoning is
``reasoning_content`` (``reasoning`` and ``thinking`` are read too), or a leading ``<think>`` block of the content.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from data.conversation import Conversation, Message, assistant
from data.formats.common import RecordIssue, chat_messages, json_text, require_dict, tags_of

ROLES = ("system", "user", "assistant", "tool")
# Where an assistant message carries its reasoning: DeepSeek's API, OpenAI-compatible servers, Ollama.
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


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
        if role != "assistant":
            messages.append(Message(role, content))
            continue
        reasoning = next((m[k] for k in REASONING_KEYS if m.get(k) is not None), None)
        if reasoning is not None and not isinstance(reasoning, str):
            raise RecordIssue(f"messages[{i}] (assistant): the reasoning must be text")
        messages.append(assistant(content, reasoning))
    return Conversation(tuple(messages), tags_of(record))


def dump(conv: Conversation) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
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
            out.append({"role": m.role, "content": m.content}
                       | ({"reasoning_content": m.reasoning} if m.reasoning is not None else {}))
    record: dict[str, Any] = {"messages": out}
    if conv.tags:
        record["tags"] = list(conv.tags)
    return record


def dump_stored(messages: list[dict[str, Any]], tags: Sequence[str]) -> dict[str, Any] | None:
    """``dump(Conversation.from_dicts(messages, tags))`` straight from the store's message dicts, or None for a
    conversation that needs ``dump`` itself (a tool call, reasoning). Exports skip building a Conversation per row.

    The store keeps each message as ``{"role", "content"}`` (Conversation.to_dicts), which is OpenAI's own layout:
    such dicts are used as they are.
    """
    for m in messages:
        if len(m) != 2 or list(m) != _STORED_KEYS or m["role"] == "tool_call":
            return None
    record: dict[str, Any] = {"messages": messages}
    if tags:
        record["tags"] = list(tags)
    return record


_STORED_KEYS = ["role", "content"]
