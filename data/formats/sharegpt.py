"""sharegpt: ``conversations`` of from/value turns, optional ``system`` and ``tools``.

function_call / observation turns are kept as tool_call / tool turns; the tool schemas stay as text.
An answer's reasoning is a leading ``<think>…</think>`` block of its value (LLaMA-Factory's convention).
"""

from __future__ import annotations

from typing import Any

from data.conversation import Conversation, Message, assistant, join_think
from data.formats.common import RecordIssue, json_text, require_dict, text_field

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
        messages.append(assistant(content) if source == "gpt" else Message(FROM_ROLE[source], content))
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json_text(tools, '"tools"')
    return Conversation(tuple(messages), tools=tools or None)


def dump(conv: Conversation) -> dict[str, Any]:
    record: dict[str, Any] = {"conversations": [{"from": ROLE_FROM[m.role], "value": join_think(m.reasoning, m.content)}
                                                for m in conv.turns]}
    if conv.system is not None:
        record["system"] = conv.system
    if conv.tools:
        record["tools"] = conv.tools
    return record
