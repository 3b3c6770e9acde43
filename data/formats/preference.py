"""Preference files: a conversation prefix, a chosen answer and a rejected one per record.

Three shapes, read and written exactly (read → write gives the file back; write → read the records back):

* ``alpaca``: LLaMA-Factory's alpaca ranking records, ``instruction``/``input``/``chosen``/``rejected`` plus the
  optional ``system`` and ``history`` (dataset_info ``"ranking": true``, ``"formatting": "alpaca"``);
* ``sharegpt``: LLaMA-Factory's sharegpt ranking records, ``conversations`` (the prefix) plus ``chosen`` and
  ``rejected`` turns (``{"from": "gpt", "value": …}``), optional ``system``/``tools`` (dpo_en_demo.json's shape);
* ``lf-v1``: LLaMA-Factory v1's DPO samples, ``chosen_messages``/``rejected_messages`` (each the whole conversation,
  content parts as in data.formats.lf_v1) sharing all but their last message, optional ``tools``;
* ``openai``: TRL's conversational preference shape, ``prompt``/``chosen``/``rejected`` message lists. Read also:
  TRL's implicit-prompt shape (``chosen``/``rejected`` as whole conversations sharing a prefix) and OpenAI's
  preference fine-tuning shape (``input.messages``, ``preferred_output``, ``non_preferred_output``).

Reading never raises for a bad record (it becomes a RecordError); an unusable file raises FormatError.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from data.conversation import Conversation, InvalidConversation, Message, assistant, join_think
from data.formats import FormatError, RecordError, _decode, _load_json_records
from data.formats import alpaca as alpaca_codec
from data.formats import lf_v1 as lf_v1_codec
from data.formats import openai as openai_codec
from data.formats import sharegpt as sharegpt_codec
from data.formats.common import RecordIssue, require_dict, tags_of

FORMATS = ("alpaca", "sharegpt", "openai", "lf-v1")


@dataclass(frozen=True)
class Preference:
    """For the conversation ``prompt`` (ending with a user turn), ``chosen`` is better than ``rejected``."""

    prompt: tuple[Message, ...]
    chosen: Message
    rejected: Message
    tags: tuple[str, ...] = ()
    tools: str | None = field(default=None)

    def chosen_conversation(self) -> Conversation:
        return Conversation(self.prompt + (self.chosen,), self.tags, self.tools)

    def rejected_conversation(self) -> Conversation:
        return Conversation(self.prompt + (self.rejected,), self.tags, self.tools)

    def validate(self, max_chars: int | None = None) -> Preference:
        """Raise InvalidConversation naming the side that is wrong, or return self."""
        for side, conv in (("chosen", self.chosen_conversation()), ("rejected", self.rejected_conversation())):
            try:
                conv.validate(max_chars)
            except InvalidConversation as exc:
                raise InvalidConversation(f"{side}: {exc}") from None
        if self.chosen.role != "assistant" or self.rejected.role != "assistant":
            raise InvalidConversation("the chosen and rejected answers must both be assistant answers")
        if _same(self.chosen, self.rejected):
            raise InvalidConversation("the chosen and the rejected answer are the same text: nothing to prefer")
        return self

    def content_hash(self) -> str:
        """The identity that refuses duplicates: both sides' normalised conversations (tags do not count)."""
        both = f"{self.chosen_conversation().content_hash()}:{self.rejected_conversation().content_hash()}"
        return hashlib.sha256(both.encode()).hexdigest()

    # ---- the store's shape ----------------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        return {"prompt": [m.to_dict() for m in self.prompt], "chosen": self.chosen.to_dict(),
                "rejected": self.rejected.to_dict(), "tags": list(self.tags), "tools": self.tools}

    @classmethod
    def from_row(cls, prompt: list[dict[str, Any]], chosen: dict[str, Any], rejected: dict[str, Any],
                 tags: Iterable[str] = (), tools: str | None = None) -> Preference:
        def message(m: dict[str, Any]) -> Message:
            return Message(m["role"], m["content"], m.get("reasoning"), m.get("input"), m.get("loss_weight"))

        return cls(tuple(message(m) for m in prompt), message(chosen), message(rejected), tuple(tags), tools)


def _same(a: Message, b: Message) -> bool:
    return " ".join(a.content.split()) == " ".join(b.content.split()) and a.reasoning == b.reasoning


# ---- the three shapes ------------------------------------------------------------------------------------


def _answer(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordIssue(f'"{what}" must be text, not {type(value).__name__}')
    return value


def parse_alpaca(value: Any) -> Preference:
    record = require_dict(value)
    chosen = alpaca_codec.parse({**record, "output": _answer(record.get("chosen"), "chosen")})
    rejected = assistant(_answer(record.get("rejected"), "rejected"))
    return Preference(chosen.messages[:-1], chosen.messages[-1], rejected, tags_of(record), chosen.tools)


def dump_alpaca(pref: Preference) -> dict[str, Any]:
    record = alpaca_codec.dump(pref.chosen_conversation())
    del record["output"]
    ordered = {"instruction": record.pop("instruction"), "input": record.pop("input"),
               "chosen": join_think(pref.chosen.reasoning, pref.chosen.content),
               "rejected": join_think(pref.rejected.reasoning, pref.rejected.content)}
    return ordered | record | ({"tags": list(pref.tags)} if pref.tags else {})


def parse_sharegpt(value: Any) -> Preference:
    record = require_dict(value)
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordIssue('"conversations" must be a non-empty list of turns (the conversation before the answers)')
    sides = []
    for key in ("chosen", "rejected"):
        turn = record.get(key)
        if not isinstance(turn, dict) or turn.get("from") != "gpt":
            raise RecordIssue(f'"{key}" must be a turn {{"from": "gpt", "value": …}}')
        sides.append(turn)
    chosen = sharegpt_codec.parse({**record, "conversations": [*turns, sides[0]]})
    rejected = sharegpt_codec.parse({**record, "conversations": [*turns, sides[1]]})
    return Preference(chosen.messages[:-1], chosen.messages[-1], rejected.messages[-1], tags_of(record),
                      chosen.tools)


def dump_sharegpt(pref: Preference) -> dict[str, Any]:
    record = sharegpt_codec.dump(pref.chosen_conversation())
    chosen = record["conversations"].pop()
    rejected = {"from": "gpt", "value": join_think(pref.rejected.reasoning, pref.rejected.content)}
    ordered = {"conversations": record.pop("conversations"), "chosen": chosen, "rejected": rejected}
    return ordered | record | ({"tags": list(pref.tags)} if pref.tags else {})


def parse_openai(value: Any) -> Preference:
    record = require_dict(value)
    if "preferred_output" in record:  # OpenAI's preference fine-tuning shape
        source = record.get("input")
        prompt = source.get("messages") if isinstance(source, dict) else None
        chosen, rejected = record.get("preferred_output"), record.get("non_preferred_output")
        keys = ('"input.messages"', '"preferred_output"', '"non_preferred_output"')
    else:
        prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
        keys = ('"prompt"', '"chosen"', '"rejected"')
        if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = _implicit_prompt(chosen, rejected)
    parts: list[list[Any]] = []
    for name, part in zip(keys, (prompt, chosen, rejected), strict=True):
        if not isinstance(part, list) or not part:
            raise RecordIssue(f"{name} must be a non-empty list of messages")
        parts.append(part)
    prompt_turns, *answers = parts
    sides = []
    for name, part in zip(keys[1:], answers, strict=True):
        if len(part) != 1:
            raise RecordIssue(f"{name} must hold exactly one assistant message")
        sides.append(openai_codec.parse({"messages": [*prompt_turns, *part], "tags": record.get("tags") or [],
                                         "tools": record.get("tools")}))
    first, second = sides
    if first.messages[-1].role != "assistant" or second.messages[-1].role != "assistant":
        raise RecordIssue("the chosen and rejected messages must be assistant messages")
    return Preference(first.messages[:-1], first.messages[-1], second.messages[-1], first.tags, first.tools)


def _implicit_prompt(chosen: list[Any], rejected: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """TRL's implicit prompt: the longest common prefix of the two conversations is the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def dump_openai(pref: Preference) -> dict[str, Any]:
    chosen = openai_codec.dump(pref.chosen_conversation())
    rejected = openai_codec.dump(pref.rejected_conversation())
    record: dict[str, Any] = {"prompt": chosen["messages"][:-1], "chosen": chosen["messages"][-1:],
                              "rejected": rejected["messages"][-1:]}
    if "tools" in chosen:
        record["tools"] = chosen["tools"]
    if pref.tags:
        record["tags"] = list(pref.tags)
    return record


def parse_lf_v1(value: Any) -> Preference:
    record = require_dict(value)
    chosen = lf_v1_codec.parse_messages(record, "chosen_messages")
    rejected = lf_v1_codec.parse_messages(record, "rejected_messages")
    if chosen[:-1] != rejected[:-1]:
        raise RecordIssue('"chosen_messages" and "rejected_messages" must differ only in their last message (the '
                          "answers)")
    return Preference(chosen[:-1], chosen[-1], rejected[-1], tags_of(record), lf_v1_codec.parse_tools(record))


def dump_lf_v1(pref: Preference) -> dict[str, Any]:
    record: dict[str, Any] = {"chosen_messages": lf_v1_codec.dump_messages(pref.prompt + (pref.chosen,)),
                              "rejected_messages": lf_v1_codec.dump_messages(pref.prompt + (pref.rejected,))}
    if pref.tools:
        record["tools"] = pref.tools
    if pref.tags:
        record["tags"] = list(pref.tags)
    return record


_PARSE = {"alpaca": parse_alpaca, "sharegpt": parse_sharegpt, "openai": parse_openai, "lf-v1": parse_lf_v1}
_DUMP = {"alpaca": dump_alpaca, "sharegpt": dump_sharegpt, "openai": dump_openai, "lf-v1": dump_lf_v1}


# ---- files -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceParse:
    format: str
    records: list[tuple[str, Preference]]
    errors: list[RecordError]


def detect(records: list[tuple[str, Any]]) -> str:
    """The shape of a preference file's records (the first record that tells decides)."""
    for _, value in records:
        if not isinstance(value, dict):
            continue
        if "conversations" in value:
            return "sharegpt"
        if "chosen_messages" in value:
            return "lf-v1"
        if "instruction" in value or isinstance(value.get("chosen"), str):
            return "alpaca"
        if "prompt" in value or "preferred_output" in value or isinstance(value.get("chosen"), list):
            return "openai"
    raise FormatError("cannot tell the preference format: no record has conversations, instruction, "
                      "chosen_messages/rejected_messages, or prompt/chosen/rejected message lists")


def read_bytes(data: bytes, filename: str, format: str = "auto", max_chars: int | None = None) -> PreferenceParse:
    """Parse a preference file's bytes (.json array or .jsonl); ``format`` "auto" detects the shape."""
    if format != "auto" and format not in FORMATS:
        raise FormatError(f"unknown preference format {format!r} (expected auto or one of {', '.join(FORMATS)})")
    if filename.lower().endswith(".csv"):
        raise FormatError("preference data cannot be read from CSV: use .json or .jsonl")
    records, errors = _load_json_records(_decode(data), filename)
    chosen_format = detect(records) if format == "auto" else format
    parse = _PARSE[chosen_format]
    parsed: list[tuple[str, Preference]] = []
    errors = list(errors)
    for location, value in records:
        try:
            parsed.append((location, parse(value).validate(max_chars)))
        except (RecordIssue, InvalidConversation) as exc:
            errors.append(RecordError(location, str(exc)))
    errors.sort(key=lambda e: int(e.location.split()[-1]))
    return PreferenceParse(chosen_format, parsed, errors)


def read_file(path: Path | str, format: str = "auto", max_chars: int | None = None) -> PreferenceParse:
    path = Path(path)
    return read_bytes(path.read_bytes(), path.name, format, max_chars)


def dumps(prefs: Iterable[Preference], format: str, *, jsonl: bool = True) -> bytes:
    """The file's bytes: one record a line (.jsonl), or one JSON array laid out as json.dumps(indent=2)."""
    if format not in FORMATS:
        raise ValueError(f"unknown preference format {format!r} (expected one of {', '.join(FORMATS)})")
    records = []
    for i, pref in enumerate(prefs):
        try:
            records.append(_DUMP[format](pref))
        except RecordIssue as exc:
            raise ValueError(f"preference {i} cannot be written as {format}: {exc}") from None
    if jsonl:
        return b"".join(orjson.dumps(r) + b"\n" for r in records)
    return (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_file(prefs: Iterable[Preference], path: Path | str, format: str) -> int:
    """Write ``prefs`` to ``path`` (.json or .jsonl), all or nothing; returns how many."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise ValueError(f"{path.name}: a preference file's name must end in .json or .jsonl")
    prefs = list(prefs)
    data = dumps(prefs, format, jsonl=suffix == ".jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    part.write_bytes(data)
    part.replace(path)
    return len(prefs)
