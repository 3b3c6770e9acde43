"""Dataset file formats: alpaca, sharegpt, OpenAI chat, LLaMA-Factory v1 and CSV; ``.json`` arrays and ``.jsonl``.

Reading never raises for a bad record: each one becomes a ``RecordError`` with its location ("record 3" in a
JSON array, 0-based; "line 7" in JSONL/CSV, 1-based). A file that is not usable at all raises ``FormatError``.
Hostile input stays one of those two: JSON nested deeper than 1024 levels refuses the file (or that JSONL line),
text no database can store (NUL, an unpaired surrogate) is its record's error, from Conversation.validate.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from data.conversation import Conversation, InvalidConversation
from data.formats import alpaca, csv_, lf_v1, openai, sharegpt
from data.formats.common import RecordIssue

FORMATS = ("alpaca", "sharegpt", "openai", "lf-v1", "csv")
_CODECS = {"alpaca": alpaca, "sharegpt": sharegpt, "openai": openai, "lf-v1": lf_v1}


class FormatError(ValueError):
    """The whole file is unusable; the message says why."""


@dataclass(frozen=True)
class RecordError:
    location: str
    message: str


@dataclass(frozen=True)
class ParsedRecord:
    location: str
    conversation: Conversation


@dataclass(frozen=True)
class ParseResult:
    format: str
    records: list[ParsedRecord]
    errors: list[RecordError]


def _decode(data: bytes) -> str:
    if b"\x00" in data[:4096]:
        raise FormatError("this is a binary file, not JSON, JSONL or CSV text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"the file is not UTF-8 text (byte {exc.start})") from None


class _NotJSON(Exception):
    """Text that is not JSON, with orjson's (or the standard library's) position when there is one."""

    def __init__(self, msg: str, lineno: int | None = None, colno: int | None = None) -> None:
        super().__init__(msg)
        self.msg, self.lineno, self.colno = msg, lineno, colno

    def where(self, *, line: bool = True) -> str:
        if self.colno is None:
            return self.msg
        if line:
            return f"{self.msg} at line {self.lineno}, column {self.colno}"
        return f"{self.msg} at column {self.colno}"


def _parse_json(text: str) -> Any:
    """Parse with orjson; its errors become ``_NotJSON``.

    orjson refuses an unpaired surrogate escape (``"\\ud800"``) for the whole text; the standard library reads it,
    so that the record holding it gets its own error from Conversation.validate instead of the file failing.
    orjson stops at 1024 levels of nesting; the standard library's RecursionError is turned into the same refusal.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in exc.msg:
            raise _NotJSON("nested too deeply", exc.lineno, exc.colno) from None
        if "surrogate" not in exc.msg:
            raise _NotJSON(exc.msg, exc.lineno, exc.colno) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise _NotJSON("nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _NotJSON(exc.msg, exc.lineno, exc.colno) from None


def _refuse_constant(name: str) -> Any:
    # NaN / Infinity: orjson refuses them, and so must the fallback.
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _load_json_records(text: str, filename: str) -> tuple[list[tuple[str, Any]], list[RecordError]]:
    """(location, value) for each record; JSONL lines that do not parse become errors."""
    stripped = text.lstrip()
    if not stripped:
        raise FormatError("the file is empty")
    if not filename.lower().endswith(".jsonl") and stripped[0] == "[":
        try:
            value = _parse_json(text)
        except _NotJSON as exc:
            raise FormatError(f"not valid JSON: {exc.where()}") from None
        if not isinstance(value, list):
            raise FormatError("a .json dataset must be an array of records")
        return [(f"record {i}", v) for i, v in enumerate(value)], []
    if filename.lower().endswith(".json") and stripped[0] == "{":
        try:
            value = _parse_json(text)
        except _NotJSON:
            value = None  # maybe JSONL saved as .json: try line by line
        else:
            if isinstance(value, dict) and not _looks_like_record(value):
                raise FormatError("a .json dataset must be an array of records, not a single object")
            return [("record 0", value)], []
    records: list[tuple[str, Any]] = []
    errors: list[RecordError] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", _parse_json(line)))
        except _NotJSON as exc:
            errors.append(RecordError(f"line {number}", f"not valid JSON: {exc.where(line=False)}"))
    if not records:
        if not errors:
            raise FormatError("the file holds no records")
        raise FormatError(f"no line of the file is valid JSON ({errors[0].location}: {errors[0].message})")
    return records, errors


def _looks_like_record(value: dict[str, Any]) -> bool:
    return bool({"messages", "conversations", "instruction", "output"} & set(value))


def _detect_records(records: list[tuple[str, Any]]) -> str:
    for _, value in records:
        if not isinstance(value, dict):
            continue
        if "conversations" in value:
            return "sharegpt"
        if "messages" in value:
            messages = value["messages"]
            if isinstance(messages, list) and any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                                  for m in messages):
                return "lf-v1"
            return "openai"
        if "instruction" in value or "output" in value:
            return "alpaca"
    raise FormatError("cannot tell the format: no record has messages, conversations or instruction/output "
                      "(pass the format explicitly)")


def detect_format(data: bytes, filename: str) -> str:
    text = _decode(data)
    if filename.lower().endswith(".csv"):
        return "csv"
    records, _ = _load_json_records(text, filename)
    return _detect_records(records)


def read_bytes(data: bytes, filename: str, format: str = "auto", max_chars: int | None = None) -> ParseResult:
    """Parse a dataset file's bytes; ``format`` "auto" detects it."""
    if format != "auto" and format not in FORMATS:
        raise FormatError(f"unknown format {format!r} (expected auto or one of {', '.join(FORMATS)})")
    text = _decode(data)
    if format == "csv" or (format == "auto" and filename.lower().endswith(".csv")):
        rows, errors = csv_.load(text)
        return _convert("csv", rows, errors, csv_.parse, max_chars)
    if filename.lower().endswith(".csv"):
        raise FormatError(f"a .csv file cannot hold the {format} format")
    records, errors = _load_json_records(text, filename)
    chosen = _detect_records(records) if format == "auto" else format
    return _convert(chosen, records, errors, _CODECS[chosen].parse, max_chars)


def _convert(fmt: str, records: list[tuple[str, Any]], errors: list[RecordError], parse: Any,
             max_chars: int | None) -> ParseResult:
    parsed: list[ParsedRecord] = []
    errors = list(errors)
    for location, value in records:
        try:
            parsed.append(ParsedRecord(location, parse(value).validate(max_chars)))
        except (RecordIssue, InvalidConversation) as exc:
            errors.append(RecordError(location, str(exc)))
    errors.sort(key=lambda e: int(e.location.split()[-1]))
    return ParseResult(fmt, parsed, errors)


def read_file(path: Path | str, format: str = "auto", max_chars: int | None = None) -> ParseResult:
    path = Path(path)
    return read_bytes(path.read_bytes(), path.name, format, max_chars)


def dumps(conversations: Iterable[Conversation], format: str, *, jsonl: bool = True) -> bytes:
    """Serialise; raises ValueError naming the first conversation the format cannot express."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r} (expected one of {', '.join(FORMATS)})")
    conversations = list(conversations)
    if format == "csv":
        out = io.StringIO()
        csv_.write(conversations, csv.writer(out))  # "\r\n" rows: any \r or \n in a field gets quoted
        return out.getvalue().encode("utf-8")
    codec = _CODECS[format]
    records = []
    for index, conv in enumerate(conversations):
        try:
            records.append(codec.dump(conv))
        except RecordIssue as exc:
            raise ValueError(f"record {index} cannot be written as {format}: {exc}") from None
    if jsonl:
        return b"".join(orjson.dumps(r) + b"\n" for r in records)
    return (json.dumps(records, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_file(conversations: Iterable[Conversation], path: Path | str, format: str) -> int:
    """Write to ``path``: .json → one array, .jsonl → one record a line, .csv → CSV. Returns the count."""
    path = Path(path)
    conversations = list(conversations)
    suffix = path.suffix.lower()
    if (format == "csv") != (suffix == ".csv"):
        raise ValueError(f"{path.name}: use a .csv file for the csv format and .json/.jsonl for the others")
    if suffix not in (".json", ".jsonl", ".csv"):
        raise ValueError(f"{path.name}: the file name must end in .json, .jsonl or .csv")
    path.write_bytes(dumps(conversations, format, jsonl=suffix == ".jsonl"))
    return len(conversations)
