"""LLaMA-Factory v1: messages whose content is a list of ``{"type", "value"}`` parts, and an optional ``tools``.

An assistant's ``reasoning`` (``think``, ``thinking``) parts are its reasoning; an assistant message of
``tool_call`` parts (each value a call's JSON, ``{"name", "arguments"}``) is a tool_call turn; a ``tool`` message is
a tool's result. ``tools`` is the tool schemas' JSON text. A message's ``loss_weight`` is kept as given.
"""

from __future__ import annotations

import json
from typing import Any

from data.conversation import Conversation, InvalidConversation, Message, assistant, tool_calls
from data.formats.common import RecordIssue, chat_messages, json_text, require_dict, tags_of

ROLES = ("system", "user", "assistant", "tool")
REASONING_PARTS = ("reasoning", "think", "thinking")


def parse(value: Any) -> Conversation:
    record = require_dict(value)
    return Conversation(parse_messages(record, "messages"), tags_of(record), parse_tools(record))


def parse_tools(record: dict[str, Any]) -> str | None:
    """The record's ``tools`` as JSON text (v1 writes a string; a list is accepted and kept as its JSON)."""
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json_text(tools, '"tools"')
    return tools or None


def parse_messages(record: dict[str, Any], key: str) -> tuple[Message, ...]:
    """The messages of ``record[key]`` (v1's ``messages``, ``chosen_messages`` or ``rejected_messages``)."""
    messages = []
    for i, role, m in chat_messages({"messages": record.get(key)}, ROLES):
        where = f"{key}[{i}]"
        parts = m.get("content")
        if not isinstance(parts, list):
            raise RecordIssue(f'{where}: "content" must be a list of {{type, value}} parts')
        texts, thoughts, calls = [], [], []
        for j, part in enumerate(parts):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if not isinstance(part, dict) or not isinstance(part.get("value"), str):
                raise RecordIssue(f'{where}.content[{j}]: a part is {{"type": …, "value": text}}')
            if kind in REASONING_PARTS and role == "assistant":
                thoughts.append(part["value"])
            elif kind == "tool_call" and role == "assistant":
                calls.append(_call(part["value"], f"{where}.content[{j}]"))
            elif kind == "text":
                texts.append(part["value"])
            elif kind in (*REASONING_PARTS, "tool_call"):
                raise RecordIssue(f"{where}.content[{j}]: a {kind} part belongs in an assistant message, not {role}")
            else:
                raise RecordIssue(f"{where}.content[{j}]: part type {kind!r} is not supported (text only)")
        weight = _loss_weight(m, where)
        if calls:
            if texts or thoughts:  # one turn cannot be both: refused rather than a part dropped
                raise RecordIssue(f"{where}: text or reasoning beside tool_call parts is not supported "
                                  "(put the text in an assistant message of its own)")
            messages.append(Message("tool_call", json_text(calls, f"{where}: the tool calls"), loss_weight=weight))
        elif role == "assistant":
            answer = assistant("".join(texts), "".join(thoughts) if thoughts else None)
            messages.append(Message("assistant", answer.content, answer.reasoning, loss_weight=weight))
        else:
            messages.append(Message(role, "".join(texts), loss_weight=weight))
    return tuple(messages)


def _call(text: str, where: str) -> dict[str, Any]:
    try:
        calls = tool_calls(text, f"{where}: the tool call")
    except InvalidConversation as exc:
        raise RecordIssue(str(exc)) from None
    if len(calls) != 1:
        raise RecordIssue(f"{where}: a tool_call part holds one call, not {len(calls)}")
    value = json.loads(text)
    # The call as the file wrote it (any other key kept); OpenAI's layout made plain.
    return value if isinstance(value, dict) and "function" not in value else calls[0].as_plain()


def _loss_weight(message: dict[str, Any], where: str) -> float | None:
    weight = message.get("loss_weight")
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise RecordIssue(f'{where}: "loss_weight" must be a number')
    return weight


def dump(conv: Conversation) -> dict[str, Any]:
    record: dict[str, Any] = {"messages": dump_messages(conv.messages)}
    if conv.tools:
        record["tools"] = conv.tools
    if conv.tags:
        record["tags"] = list(conv.tags)
    return record


def dump_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        parts: list[dict[str, str]]
        if m.role == "tool_call":
            try:
                calls = tool_calls(m.content)
            except InvalidConversation as exc:
                raise RecordIssue(str(exc)) from None
            parts = [{"type": "tool_call", "value": json.dumps(c.as_plain(), ensure_ascii=False)} for c in calls]
            message: dict[str, Any] = {"role": "assistant", "content": parts}
        else:
            parts = [{"type": "reasoning", "value": m.reasoning}] if m.reasoning is not None else []
            message = {"role": m.role, "content": parts + [{"type": "text", "value": m.content}]}
        if m.loss_weight is not None:
            message["loss_weight"] = m.loss_weight
        out.append(message)
    return out
