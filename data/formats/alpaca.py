"""alpaca: instruction / input / output / system / history / tools (LLaMA-Factory's semantics).

The question is "instruction\ninput" (either alone when the other is empty); the input is kept apart too, so an
export gives the two fields back. ``tools`` (the schemas' JSON text) is kept; tool calls have no place here.

Reasoning rides in the output as a leading ``<think>…</think>`` block (LLaMA-Factory's convention), or in a
``reasoning`` key (what --columns reasoning=Complex_CoT maps a column to).
"""

from __future__ import annotations

from typing import Any

from data.conversation import Conversation, Message, assistant, join_think
from data.formats.common import RecordIssue, check_loss_weights, json_text, require_dict, text_field


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
    asked = Message("user", question, input=extra or None)
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, str):
        tools = json_text(tools, '"tools"')
    if not system and not history and not tools:  # the common record: one pair, built directly
        return Conversation((asked, assistant(output, reasoning)))
    messages = [Message("system", system)] if system else []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise RecordIssue(f"history[{i}] must be a [question, answer] pair of texts")
        messages += [Message("user", pair[0]), assistant(pair[1])]
    messages += [asked, assistant(output, reasoning)]
    return Conversation(tuple(messages), tools=tools or None)


def dump(conv: Conversation) -> dict[str, Any]:
    if conv.has_tools:
        raise RecordIssue("tool calls cannot be written as alpaca (use sharegpt, openai or lf-v1)")
    check_loss_weights(conv, "alpaca")
    turns = conv.turns
    if any(m.input is not None for m in turns[:-2]):
        raise RecordIssue("an earlier question's input cannot be written as alpaca (history holds plain pairs)")
    pairs = [[turns[i].content, join_think(turns[i + 1].reasoning, turns[i + 1].content)]
             for i in range(0, len(turns) - 2, 2)]
    question = turns[-2]
    record: dict[str, Any] = {"instruction": question.instruction, "input": question.input or "",
                              "output": join_think(turns[-1].reasoning, turns[-1].content)}
    if conv.system is not None:
        record["system"] = conv.system
    if pairs:
        record["history"] = pairs
    if conv.tools:
        record["tools"] = conv.tools
    return record
