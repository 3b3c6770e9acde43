"""alpaca: instruction / input / output / system / history (LLaMA-Factory's semantics).

Reasoning rides in the output as a leading ``<think>…</think>`` block (LLaMA-Factory's convention), or in a
``reasoning`` key (what --columns reasoning=Complex_CoT maps a column to).
"""

from __future__ import annotations

from typing import Any

from data.conversation import Conversation, Message, assistant, join_think
from data.formats.common import RecordIssue, require_dict, text_field


def parse(value: Any) -> Conversation:
    record = require_dict(value)
    instruction = text_field(record, "instruction", required=False)
    extra = text_field(record, "input", required=False)
    output = text_field(record, "output")
    system = text_field(record, "system", required=False)
    reasoning = text_field(record, "reasoning", required=False).strip() or None
    question = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    if not question or question.isspace():  # what strip() would leave empty, without the copy
        raise RecordIssue('empty question: "instruction" and "input" are both empty')
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordIssue('"history" must be a list of [question, answer] pairs')
    if not system and not history:  # the common record: one pair, built directly
        return Conversation((Message("user", question), assistant(output, reasoning)))
    messages = [Message("system", system)] if system else []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise RecordIssue(f"history[{i}] must be a [question, answer] pair of texts")
        messages += [Message("user", pair[0]), assistant(pair[1])]
    messages += [Message("user", question), assistant(output, reasoning)]
    return Conversation(tuple(messages))


def dump(conv: Conversation) -> dict[str, Any]:
    if conv.has_tools:
        raise RecordIssue("tool calls cannot be written as alpaca (use sharegpt)")
    turns = conv.turns
    pairs = [[turns[i].content, join_think(turns[i + 1].reasoning, turns[i + 1].content)]
             for i in range(0, len(turns) - 2, 2)]
    record: dict[str, Any] = {"instruction": turns[-2].content, "input": "",
                              "output": join_think(turns[-1].reasoning, turns[-1].content)}
    if conv.system is not None:
        record["system"] = conv.system
    if pairs:
        record["history"] = pairs
    return record
