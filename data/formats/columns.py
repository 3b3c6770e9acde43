"""Which key (JSON) or header (CSV) holds the question, the answer, the system prompt and the reasoning.

Three sources, one shape (``ColumnMap``): the headers people use (instruction/input/output, prompt/completion,
question/answer, query/response, any case), ``--columns question=text,answer=label`` for any others, and a
LLaMA-Factory ``dataset_info.json`` entry (its ``formatting``, ``columns`` and ``tags``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.errors import LoraloopError

# Accepted names, first match wins. "input" is only the question's second half, next to an "instruction".
QUESTION_NAMES = ("question", "instruction", "prompt", "query")
ANSWER_NAMES = ("answer", "output", "completion", "response")
SYSTEM_NAMES = ("system", "system_prompt")
# Reasoning columns: DeepSeek's reasoning_content, the medical-o1 datasets' Complex_CoT, and the usual others.
REASONING_NAMES = ("reasoning", "reasoning_content", "complex_cot", "thinking", "think", "cot", "chain_of_thought",
                   "rationale")

# --columns / dataset_info names → the alpaca or sharegpt key they stand for.
_TARGET = {
    "question": "instruction", "prompt": "instruction", "instruction": "instruction", "query": "input",
    "input": "input", "answer": "output", "response": "output", "output": "output", "completion": "output",
    "system": "system", "history": "history", "reasoning": "reasoning", "tools": "tools", "kto_tag": "label",
    "label": "label", "chosen": "chosen", "rejected": "rejected", "images": "images", "videos": "videos",
    "audios": "audios", "messages": "messages",
}
COLUMN_NAMES = tuple(_TARGET)
_LF_ONLY = tuple(n for n in COLUMN_NAMES if n not in ("question", "answer", "system", "reasoning"))
# LLaMA-Factory's sharegpt tags → our sharegpt "from" values.
_TAG_ROLE = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
             "function_tag": "function_call", "system_tag": "system"}
_TAG_DEFAULTS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}


class ColumnError(LoraloopError, ValueError):
    """A --columns value or a dataset_info.json entry that cannot be used; the message says why."""


@dataclass(frozen=True)
class ColumnMap:
    """Our name (question, answer, system, reasoning, or one of LLaMA-Factory's) → the file's key or header."""

    columns: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    formatting: str | None = None  # "alpaca" or "sharegpt" (a dataset_info entry's)

    def __bool__(self) -> bool:
        return bool(self.columns or self.tags or self.formatting)

    def apply(self, record: Any) -> Any:
        """The record with its keys renamed to the ones our codecs read (unchanged when not a JSON object)."""
        if not isinstance(record, dict):
            return record
        out = dict(record)
        moved = {}
        for ours, theirs in self.columns.items():
            if theirs in record:
                out.pop(theirs, None)
                moved[_TARGET[ours]] = record[theirs]
        out.update(moved)
        if "messages" in out and (self.formatting == "sharegpt" or self.tags):
            turns = out.pop("messages")
            out["conversations"] = self._turns(turns)
        return out

    def _turns(self, turns: Any) -> Any:
        if not isinstance(turns, list):
            return turns
        tags = {**_TAG_DEFAULTS, **self.tags}
        roles: dict[Any, str] = {tags[tag]: role for tag, role in _TAG_ROLE.items()}
        out = []
        for turn in turns:
            if isinstance(turn, dict) and tags["role_tag"] in turn:
                role = turn.get(tags["role_tag"])
                turn = {"from": roles.get(role, role), "value": turn.get(tags["content_tag"])}
            out.append(turn)
        return out


def parse_columns(spec: str) -> ColumnMap:
    """``question=text,answer=label[,system=…]`` → a ColumnMap; raises ColumnError naming the bad part."""
    columns: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        ours, sep, theirs = part.partition("=")
        ours, theirs = ours.strip().lower(), theirs.strip()
        if not sep or not theirs:
            raise ColumnError(f"--columns: {part!r} must be NAME=COLUMN (e.g. question=text,answer=label)")
        if ours not in _TARGET:
            raise ColumnError(f"--columns: unknown name {ours!r} (expected question, answer, system, reasoning, "
                              f"or one of LLaMA-Factory's: {', '.join(_LF_ONLY)})")
        columns[ours] = theirs
    if not columns:
        raise ColumnError("--columns is empty (e.g. question=text,answer=label)")
    return ColumnMap(columns)


@dataclass(frozen=True)
class DatasetEntry:
    """One entry of LLaMA-Factory's dataset_info.json, resolved: the file and how to read it."""

    name: str
    path: Path
    columns: ColumnMap
    ranking: bool = False


def dataset_entry(info_path: Path, name: str) -> DatasetEntry:
    """The entry ``name`` of a LLaMA-Factory dataset_info.json; raises ColumnError with the reason."""
    try:
        info = json.loads(Path(info_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ColumnError(f"{info_path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ColumnError(f"{info_path}: not a readable dataset_info.json ({exc})") from None
    if not isinstance(info, dict):
        raise ColumnError(f"{info_path}: a dataset_info.json maps dataset names to entries")
    entry = info.get(name)
    if not isinstance(entry, dict):
        known = ", ".join(sorted(k for k, v in info.items() if isinstance(v, dict) and "file_name" in v)[:20])
        raise ColumnError(f"{info_path} has no dataset {name!r} (local ones: {known})")
    if not isinstance(entry.get("file_name"), str):
        hub = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("script_url")
        where = f" (it lives at {hub}: download it and point file_name at the file)" if hub else ""
        raise ColumnError(f"dataset {name!r} has no local file_name{where}")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise ColumnError(f"dataset {name!r}: formatting {formatting!r} is not supported (alpaca or sharegpt)")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise ColumnError(f"dataset {name!r}: columns and tags must be objects")
    unknown = [k for k in columns if k not in _TARGET]
    if unknown:
        raise ColumnError(f"dataset {name!r}: column {unknown[0]!r} is not one loraloop reads")
    if formatting == "sharegpt" and "messages" not in columns:
        columns = {**columns, "messages": "conversations"}
    return DatasetEntry(name, Path(info_path).parent / entry["file_name"],
                        ColumnMap(dict(columns), dict(tags), formatting), bool(entry.get("ranking")))


def find_column(header: Sequence[str], names: Sequence[str], mapped: str | None = None) -> int | None:
    """Index of the first header (any case, surrounding spaces ignored) among ``names``, or of ``mapped``."""
    folded = [h.strip().lower() for h in header]
    if mapped is not None:
        return folded.index(mapped.strip().lower()) if mapped.strip().lower() in folded else None
    for name in names:
        if name in folded:
            return folded.index(name)
    return None


def flat_record(record: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON record with CSV-style keys (Question/Response/Complex_CoT …, any case) as an alpaca record, or None."""
    keys = list(record)
    q, a = find_column(keys, QUESTION_NAMES), find_column(keys, ANSWER_NAMES)
    if q is None or a is None:
        return None
    out = {"instruction": record[keys[q]], "output": record[keys[a]]}
    extra = find_column(keys, ("input",))
    if extra is not None and keys[q].lower() == "instruction":
        out["input"] = record[keys[extra]]
    for names, key in ((SYSTEM_NAMES, "system"), (REASONING_NAMES, "reasoning")):
        index = find_column(keys, names)
        if index is not None:
            out[key] = record[keys[index]]
    return out
