"""LLaMA-Factory v1 files made from the real shared datasets, as LLaMA-Factory v1's own converters write them.

shared/datasets holds LLaMA-Factory's v0 demo files only (the v1 demos live on the Hugging Face hub). v1's data
converters (src/llamafactory/v1/plugins/data_plugins/converter.py: ``sharegpt`` and ``pair``) turn those into v1
samples: content as ``{"type", "value"}`` parts, a function_call turn as an assistant message of ``tool_call``
parts (each value ``json.dumps`` of one call), an observation as a ``tool`` message, ``tools`` as JSON text,
``loss_weight`` 1.0 on what the assistant says and 0.0 elsewhere. These helpers follow those rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
GLAIVE = DATASETS / "glaive_toolcall_en_demo.json"
DPO = DATASETS / "dpo_en_demo.json"

_ROLE = {"system": "system", "human": "user", "gpt": "assistant", "observation": "tool"}


def v1_sft(sharegpt: dict[str, Any]) -> dict[str, Any]:
    """One sharegpt record (conversations, tools) as v1's sharegpt converter writes it."""
    messages = []
    for turn in sharegpt["conversations"]:
        if turn["from"] == "function_call":
            calls = json.loads(turn["value"])
            parts = [{"type": "tool_call", "value": json.dumps(c)} for c in (calls if isinstance(calls, list)
                                                                             else [calls])]
            messages.append({"role": "assistant", "content": parts, "loss_weight": 1.0})
        else:
            messages.append({"role": _ROLE[turn["from"]], "content": [{"type": "text", "value": turn["value"]}],
                             "loss_weight": 1.0 if turn["from"] == "gpt" else 0.0})
    tools = sharegpt.get("tools")
    return {"messages": messages, "tools": json.dumps(json.loads(tools))} if tools else {"messages": messages}


def v1_dpo(ranking: dict[str, Any]) -> dict[str, Any]:
    """One sharegpt ranking record (conversations + chosen/rejected turns) as v1's pair converter writes it."""
    def side(answer: dict[str, str]) -> list[dict[str, Any]]:
        turns = [*ranking["conversations"], answer]
        return [{"role": _ROLE[t["from"]], "content": [{"type": "text", "value": t["value"]}],
                 "loss_weight": 1.0 if t["from"] == "gpt" else 0.0} for t in turns]

    return {"chosen_messages": side(ranking["chosen"]), "rejected_messages": side(ranking["rejected"])}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
