"""OpenAI chat: ``{"messages": [{"role", "content"}, …], "tools": […]}``, roles system/user/assistant/tool.

An assistant message with ``tool_calls`` is a tool_call turn whose text is the calls' JSON as written; ``tools``
(the tool schemas, a list) is kept as its JSON text. An answer's reasoning is ``reasoning_content``
(``reasoning`` and ``thinking`` are read too), or a leading ``<think>`` block of the content.
Not kept: a tool result's ``tool_call_id`` (the result follows its call; ids are rewritten on export).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from data.conversation import Conversation, InvalidConversation, Message, assistant, tool_calls
from data.formats.common import RecordIssue, chat_messages, check_loss_weights, json_text, require_dict, tags_of

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
            if m.get("content"):  # one turn cannot be both: refused rather than the text dropped
                raise RecordIssue(f"messages[{i}]: text beside tool_calls is not supported (put the text in an "
                                  "assistant message of its own)")
            calls = json_text(m["tool_calls"], f'messages[{i}]: "tool_calls"')
            try:
                tool_calls(calls, f"messages[{i}]: the tool call")
            except InvalidConversation as exc:
                raise RecordIssue(str(exc)) from None
            messages.append(Message("tool_call", calls))
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
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json_text(tools, '"tools"')
    return Conversation(tuple(messages), tags_of(record), tools or None)


def dump(conv: Conversation) -> dict[str, Any]:
    check_loss_weights(conv, "openai")
    out: list[dict[str, Any]] = []
    calls: list[Any] = []
    for m in conv.messages:
        if m.role == "tool_call":
            calls = _calls(m.content, len(out))
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif m.role == "tool":
            # The result answers the call before it (the first when there were several: the text cannot say which).
            call_id = next((c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)), None)
            out.append({"role": "tool", "content": m.content} | ({"tool_call_id": call_id} if call_id else {}))
        else:
            out.append({"role": m.role, "content": m.content}
                       | ({"reasoning_content": m.reasoning} if m.reasoning is not None else {}))
    record: dict[str, Any] = {"messages": out}
    if conv.tools:
        record["tools"] = _tools(conv.tools)
    if conv.tags:
        record["tags"] = list(conv.tags)
    return record


def _calls(content: str, index: int) -> list[Any]:
    """A tool_call turn's ``tool_calls``: as written when it came as OpenAI's, else made OpenAI's."""
    try:
        calls = tool_calls(content)
        value = json.loads(content)
    except InvalidConversation as exc:
        raise RecordIssue(str(exc)) from None
    if isinstance(value, list) and all(isinstance(c, dict) and "function" in c for c in value):
        return value
    return [c.as_openai() | {"id": c.id or f"call_{index}_{k}"} for k, c in enumerate(calls)]


def _tools(text: str) -> list[Any]:
    """The tool schemas as OpenAI's ``tools`` list: each ``{"type": "function", "function": schema}``."""
    try:
        tools = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise RecordIssue("the tool schemas are not JSON, which openai's tools list needs") from None
    if not isinstance(tools, list):
        tools = [tools]
    return [t if isinstance(t, dict) and "type" in t else {"type": "function", "function": t} for t in tools]


def dump_stored(messages: list[dict[str, Any]], tags: Sequence[str]) -> dict[str, Any] | None:
    """``dump(Conversation.from_dicts(messages, tags))`` straight from the store's message dicts, or None for a
    conversation that needs ``dump`` itself (a tool call, reasoning, tools). Exports skip building a Conversation
    per row.

    The store keeps each message as ``{"role", "content"}`` (Conversation.to_dicts), which is OpenAI's own layout:
    such dicts are used as they are.
    """
    for m in messages:
        if len(m) != 2 or list(m) != _STORED_KEYS or m["role"] in ("tool_call", "tool"):
            return None
    record: dict[str, Any] = {"messages": messages}
    if tags:
        record["tags"] = list(tags)
    return record


_STORED_KEYS = ["role", "content"]
