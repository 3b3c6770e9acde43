"""sharegpt: ``conversations`` of from/value turns, optional ``system`` and ``tools``.

function_call / observation turns are kept as tool_call / tool turns (a function_call's value as written: a call
``{"name", "arguments"}`` or a list of them); the tool schemas stay as text.
An answer's reasoning is a leading ``<think>…</think>`` block of its value (LLaMA-Factory's convention).
"""

from __future__ import annotations

import json
from typing import Any

from data.conversation import Conversation, InvalidConversation, Message, assistant, join_think, tool_calls
from data.formats.common import RecordIssue, check_loss_weights, json_text, require_dict, text_field

FROM_ROLE = {"human": "user", "gpt": "assistant", "system": "system", "function_call": "tool_call",
             "observation": "tool"}
ROLE_FROM = {v: k for k, v in FROM_ROLE.items()}


def parse(value: Any) -> Conversation:
    record = require_dict(value)
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordIssue('"conversations" must be a non-empty list of turns')
    system = text_field(record, "system", required=False)
    messages = [Message("system", system)] if system else []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordIssue(f"conversations[{i}] must be an object with from/value")
        source = turn.get("from")
        if source not in FROM_ROLE:
            raise RecordIssue(f'conversations[{i}]: unknown "from" value {source!r} '
                              f"(expected one of {', '.join(FROM_ROLE)})")
        content = turn.get("value")
        if not isinstance(content, str):
            raise RecordIssue(f'conversations[{i}]: "value" must be text')
        if source == "function_call":
            try:
                tool_calls(content, f"conversations[{i}] (function_call)")
            except InvalidConversation as exc:
                raise RecordIssue(str(exc)) from None
        messages.append(assistant(content) if source == "gpt" else Message(FROM_ROLE[source], content))
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json_text(tools, '"tools"')
    return Conversation(tuple(messages), tools=tools or None)


def dump(conv: Conversation) -> dict[str, Any]:
    check_loss_weights(conv, "sharegpt")
    record: dict[str, Any] = {"conversations": [{"from": ROLE_FROM[m.role], "value": _value(m)} for m in conv.turns]}
    if conv.system is not None:
        record["system"] = conv.system
    if conv.tools:
        record["tools"] = conv.tools
    return record


def _value(m: Message) -> str:
    if m.role != "tool_call":
        return join_think(m.reasoning, m.content)
    try:
        calls = tool_calls(m.content)
        value = json.loads(m.content)
    except InvalidConversation as exc:
        raise RecordIssue(str(exc)) from None
    if isinstance(value, dict) and "function" not in value:  # sharegpt's own layout: as written
        return m.content
    plain = [c.as_plain() for c in calls]
    return json.dumps(plain[0] if len(plain) == 1 else plain, ensure_ascii=False)
