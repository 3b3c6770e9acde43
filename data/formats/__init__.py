"""Dataset file formats: alpaca, sharegpt, OpenAI chat, LLaMA-Factory v1 and CSV; ``.json`` arrays and ``.jsonl``.

Reading never raises for a bad record: each one becomes a ``RecordError`` with its location ("record 3" in a
JSON array, 0-based; "line 7" in JSONL/CSV, 1-based). A file that is not usable at all raises ``FormatError``.
Hostile input stays one of those two: JSON nested deeper than 1024 levels refuses the file (or that JSONL line),
text no database can store (NUL, an unpaired surrogate) is its record's error, from Conversation.validate.
"""

from __future__ import annotations

import csv
import gc
import io
import itertools
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from data.conversation import Conversation, InvalidConversation
from data.errors import LoraloopError
from data.formats import alpaca, csv_, lf_v1, openai, sharegpt
from data.formats.columns import ColumnError, ColumnMap, DatasetEntry, dataset_entry, flat_record, parse_columns
from data.formats.common import RecordIssue
from data.formats.kinds import (
    KTO_KEYS,
    MEDIA_KEYS,
    MEDIA_TOKEN,
    PREFERENCE_KEYS,
    Kind,
    detect_kind,
    kto_label,
    media_of,
)

__all__ = ["FORMATS", "ColumnError", "ColumnMap", "DatasetEntry", "FormatError", "Kind", "MultimodalData",
           "ParseResult", "ParsedRecord", "PreferenceData", "RecordError", "check_kind", "dataset_entry",
           "collector_paused", "count_records", "detect_format", "detect_kind", "dumps", "parse_columns",
           "read_bytes", "read_file", "write_file"]

FORMATS = ("alpaca", "sharegpt", "openai", "lf-v1", "csv")


class _Codec(Protocol):
    """What each JSON format's module provides."""

    def parse(self, value: Any) -> Conversation: ...

    def dump(self, conv: Conversation) -> dict[str, Any]: ...


_CODECS: dict[str, _Codec] = {"alpaca": alpaca, "sharegpt": sharegpt, "openai": openai, "lf-v1": lf_v1}


class FormatError(LoraloopError, ValueError):
    """The whole file is unusable; the message says why."""


class PreferenceData(FormatError):
    """The file holds preference data (a chosen and a rejected answer per prompt), not question/answer pairs."""


class MultimodalData(FormatError):
    """The file's records carry images, videos or audio, which a text model cannot learn from."""


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
    kind: Kind = "sft"
    # KTO files: the answers labelled undesirable (label / kto_tag false). Never pairs to learn from.
    undesirable: list[ParsedRecord] = field(default_factory=list)


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
        if not value:  # as an empty JSONL file is refused: importing nothing is no success
            raise FormatError("the file holds no records (an empty array)")
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
    raise FormatError("cannot tell the format: no record has messages, conversations, instruction/output or "
                      "question/answer-like keys (pass the format explicitly, or name the keys with "
                      "--columns question=KEY,answer=KEY)")


def _flatten(records: list[tuple[str, Any]]) -> list[tuple[str, Any]] | None:
    """Records with CSV-style keys (Question/Response/Complex_CoT …) as alpaca records; None when some have not."""
    out = []
    for location, value in records:
        flat = flat_record(value) if isinstance(value, dict) else None
        if flat is None:
            return None
        out.append((location, flat))
    return out


def detect_format(data: bytes, filename: str) -> str:
    text = _decode(data)
    if filename.lower().endswith(".csv"):
        return "csv"
    records, _ = _load_json_records(text, filename)
    try:
        return _detect_records(records)
    except FormatError:
        if _flatten(records) is None:
            raise
        return "alpaca"


def read_bytes(data: bytes, filename: str, format: str = "auto", max_chars: int | None = None,
               columns: ColumnMap | None = None) -> ParseResult:
    """Parse a dataset file's bytes; ``format`` "auto" detects it, ``columns`` renames keys/headers first.

    Raises PreferenceData or MultimodalData (one line) for data of a kind loraloop does not train on as pairs;
    a KTO file's undesirable answers come back apart, in ``undesirable``.
    """
    with collector_paused():
        return _read_bytes(data, filename, format, max_chars, columns)


def _read_bytes(data: bytes, filename: str, format: str, max_chars: int | None,
                columns: ColumnMap | None) -> ParseResult:
    if format != "auto" and format not in FORMATS:
        raise FormatError(f"unknown format {format!r} (expected auto or one of {', '.join(FORMATS)})")
    text = _decode(data)
    if format == "csv" or (format == "auto" and filename.lower().endswith(".csv")):
        rows, errors = csv_.load(text, columns)
        return _convert("csv", rows, errors, csv_.parse, max_chars)
    if filename.lower().endswith(".csv"):
        raise FormatError(f"a .csv file cannot hold the {format} format")
    records, errors = _load_json_records(text, filename)
    if columns:
        records = [(location, columns.apply(value)) for location, value in records]
    # Records with renamed keys are left to check_kind: _plainly_pairs reasons about keys and text as in the file.
    kind = "sft" if not columns and _plainly_pairs(text, records) else check_kind(records)
    if format == "auto":
        try:
            chosen = _detect_records(records)
        except FormatError:
            flat = _flatten(records)
            if flat is None:
                raise
            chosen, records = "alpaca", flat
    else:
        chosen = format
    return _convert(chosen, records, errors, _CODECS[chosen].parse, max_chars, kind)


def count_records(data: bytes, filename: str, format: str = "auto", *, stop_at: int) -> int:
    """How many records the file holds, counted without parsing them, and no further than ``stop_at``.

    For a quota check before the real parse (read_bytes), which would build every record: a count in constant
    memory, that stops as soon as it reaches ``stop_at``. Blank lines are no records; a record that does not parse
    counts too (the real parse tells it apart). A file too broken to count gives what was counted so far.
    """
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if format == "csv" or (format == "auto" and filename.lower().endswith(".csv")):
        rows = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="replace", newline=""))
        try:
            next(rows, None)  # the header
            records = (row for row in rows if any(cell.strip() for cell in row))
            return sum(1 for _ in itertools.islice(records, stop_at))
        except csv.Error:
            return 0
    if filename.lower().endswith(".jsonl") or not head.startswith((b"[", b"{")):
        lines = _NON_BLANK_LINE.finditer(data)
        return sum(1 for _ in itertools.islice(lines, stop_at))
    # A JSON array's elements, or (a .json starting with "{") the objects one after the other: JSONL saved as
    # .json, or a single record spread over many lines. Strings are skipped whole, brackets in them never count.
    depth, count, at = 0, 0, 1 if head.startswith(b"[") else 0
    for token in _JSON_TOKEN.finditer(data):
        char = token.group()[:1]
        if char in b"{[":
            if depth == at:
                count += 1
                if count >= stop_at:
                    return count
            depth += 1
        elif char in b"}]":
            depth -= 1
    return count


# A line with something on it; a JSON string (never across lines), or a bracket outside strings.
_NON_BLANK_LINE = re.compile(rb"^[ \t\r\f\v]*[^\s]", re.MULTILINE)
_JSON_TOKEN = re.compile(rb'"(?:[^"\\\n]|\\.)*"|[\[\]{}]')


# The record keys that make a record something other than a pair, whatever their values (data.formats.kinds).
_KIND_KEYS = frozenset({key for pair in PREFERENCE_KEYS for key in pair} | set(KTO_KEYS) | set(MEDIA_KEYS))
# An escaped ASCII character (\u003c is "<"): a media token could hide behind one.
_ASCII_ESCAPE = re.compile(r"\\u00[0-7]")


def _plainly_pairs(text: str, records: list[tuple[str, Any]]) -> bool:
    """True when the records (parsed from ``text``) surely hold pairs only ("sft"); False says nothing.

    What check_kind finds by walking every text of every record, found from the records' keys and a few scans of
    the whole text (a third of parsing a big file's time, otherwise): no key of another kind, no media token
    (nor any escaped ASCII character that could spell one), no content part's "type" key.
    """
    keys: set[str] = set()
    for _, value in records:
        if not isinstance(value, dict):
            return False
        keys.update(value)
    if keys & _KIND_KEYS:
        return False
    if "<" in text and MEDIA_TOKEN.search(text):
        return False
    if "messages" in keys and '"type"' in text:  # content parts (a key: always between plain quotes)
        return False
    # A backslash is one byte found fast; most files have none (and so no escape at all).
    return "\\" not in text or "\\u00" not in text or _ASCII_ESCAPE.search(text) is None


def check_kind(records: list[tuple[str, Any]]) -> Kind:
    """The file's kind (see data.formats.kinds); preference and multimodal files are refused in one line."""
    kind = detect_kind(value for _, value in records)
    if kind == "preference":
        raise PreferenceData(
            f"this file holds preference data (chosen/rejected answers, {len(records)} records), not "
            "question/answer pairs: import it with `loraloop preferences import FILE`")
    if kind == "multimodal":
        found = [(location, media_of(value)) for location, value in records if media_of(value) is not None]
        raise MultimodalData(
            f"this file holds multimodal records ({len(found)} of {len(records)}, first {found[0][0]}: "
            f"{found[0][1]}): loraloop trains text-only models and refuses them rather than drop their media")
    return kind


def _convert(fmt: str, records: list[tuple[str, Any]], errors: list[RecordError], parse: Any,
             max_chars: int | None, kind: Kind = "sft") -> ParseResult:
    parsed: list[ParsedRecord] = []
    undesirable: list[ParsedRecord] = []
    errors = list(errors)
    for location, value in records:
        try:
            record = ParsedRecord(location, parse(value).validate(max_chars))
            desirable = kind != "kto" or kto_label(value)
        except (RecordIssue, InvalidConversation) as exc:
            errors.append(RecordError(location, str(exc)))
            continue
        if not desirable:
            undesirable.append(record)
        else:
            parsed.append(record)
    errors.sort(key=lambda e: int(e.location.split()[-1]))
    return ParseResult(fmt, parsed, errors, kind, undesirable)


_collector_lock = threading.Lock()
_collector_pausers = 0
_collector_was_enabled = True


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a file's records are parsed (or imported); reference counting frees
    memory as usual.

    A big file's records are built and kept by the hundred thousand, and the collector walks all of them each
    time their number grows by a quarter: a third of the parse's time, for nothing (parsing makes no reference
    cycles). Several at once (threads, tasks): the collector is back when the last ends, if it was on before.
    """
    global _collector_pausers, _collector_was_enabled
    with _collector_lock:
        if _collector_pausers == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _collector_pausers += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_pausers -= 1
            if _collector_pausers == 0 and _collector_was_enabled:
                gc.enable()


def read_file(path: Path | str, format: str = "auto", max_chars: int | None = None,
              columns: ColumnMap | None = None) -> ParseResult:
    path = Path(path)
    return read_bytes(path.read_bytes(), path.name, format, max_chars, columns)


def dumps(conversations: Iterable[Conversation], format: str, *, jsonl: bool = True) -> bytes:
    """Serialise; raises ValueError naming the first conversation the format cannot express."""
    encoder = _Encoder(format, jsonl=jsonl)
    return encoder.encode(conversations) + encoder.finish()


def write_file(conversations: Iterable[Conversation], path: Path | str, format: str) -> int:
    """Write to ``path``: .json → one array, .jsonl → one record a line, .csv → CSV. Returns the count."""
    with DatasetWriter(path, format) as writer:
        writer.write(conversations)
        return writer.commit()


class DatasetWriter:
    """Writes one dataset file a batch at a time; the bytes are exactly ``dumps``'s for all the batches at once.

    The file is written beside ``path`` under a temporary name and renamed into place by ``commit``; ``discard``
    (or leaving a ``with`` block by an exception) removes it, so a conversation the format refuses never leaves
    half a file. CSV keeps its conversations until ``commit``: its header depends on all of them.
    """

    def __init__(self, path: Path | str, format: str) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if (format == "csv") != (suffix == ".csv"):
            raise ValueError(f"{self.path.name}: use a .csv file for the csv format and .json/.jsonl for the others")
        if suffix not in (".json", ".jsonl", ".csv"):
            raise ValueError(f"{self.path.name}: the file name must end in .json, .jsonl or .csv")
        self._encoder = _Encoder(format, jsonl=suffix == ".jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)  # --out into a folder not made yet
        # open("xb"), not mkstemp: the file gets the usual permissions (umask), as a plain write would give it.
        self._part = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}.part")
        self._file = self._part.open("xb")

    @property
    def count(self) -> int:
        """Conversations written so far."""
        return self._encoder.count

    def write(self, conversations: Iterable[Conversation]) -> None:
        self._file.write(self._encoder.encode(conversations))

    def write_stored(self, rows: Iterable[tuple[list[dict[str, Any]], Sequence[str], str | None]]) -> None:
        """Write conversations given as the store keeps them: (Conversation.to_dicts(), tags, tools)."""
        self._file.write(self._encoder.encode_stored(rows))

    def commit(self) -> int:
        """Finish the file and put it at ``path``; returns how many conversations it holds."""
        self._file.write(self._encoder.finish())
        self._file.close()
        os.replace(self._part, self.path)
        return self.count

    def discard(self) -> None:
        self._file.close()
        self._part.unlink(missing_ok=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.discard()


class _Encoder:
    """A dataset file's bytes, a batch of conversations at a time.

    Each record is serialised as soon as it is built, so only bytes outlive it: a batch of built records kept
    alive would be promoted through the garbage collector's generations and set off full collections.
    """

    def __init__(self, format: str, *, jsonl: bool) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r} (expected one of {', '.join(FORMATS)})")
        self.format, self.jsonl, self.count = format, jsonl, 0
        self._csv: list[Conversation] = []

    def encode(self, conversations: Iterable[Conversation]) -> bytes:
        if self.format == "csv":
            self._csv.extend(conversations)
            self.count = len(self._csv)
            return b""
        return b"".join([self._record(self._dump(conv)) for conv in conversations])

    def encode_stored(self, rows: Iterable[tuple[list[dict[str, Any]], Sequence[str], str | None]]) -> bytes:
        if self.format != "openai":
            return self.encode(Conversation.from_dicts(messages, tags, tools) for messages, tags, tools in rows)
        # The store keeps messages as OpenAI's: most rows are written without building a Conversation at all.
        pieces = []
        for messages, tags, tools in rows:
            record = openai.dump_stored(messages, tags) if tools is None else None
            if record is None:
                record = self._dump(Conversation.from_dicts(messages, tags, tools))
            else:
                self.count += 1
            pieces.append(self._record(record))
        return b"".join(pieces)

    def finish(self) -> bytes:
        if self.format == "csv":
            out = io.StringIO()
            csv_.write(self._csv, csv.writer(out))  # "\r\n" rows: any \r or \n in a field gets quoted
            return out.getvalue().encode("utf-8")
        if self.jsonl:
            return b""
        return b"\n]\n" if self.count else b"[]\n"

    def _dump(self, conv: Conversation) -> dict[str, Any]:
        try:
            record = _CODECS[self.format].dump(conv)
        except RecordIssue as exc:
            raise ValueError(f"record {self.count} cannot be written as {self.format}: {exc}") from None
        self.count += 1
        return record

    def _record(self, record: dict[str, Any]) -> bytes:
        """One record's bytes; ``count`` already counts it."""
        if self.jsonl:
            return orjson.dumps(record) + b"\n"
        # json.dumps(all records, indent=2) piece by piece: each record one level in. Strings never hold a raw
        # newline (JSON escapes it), so every "\n" is a line break of the layout.
        return (("[\n  " if self.count == 1 else ",\n  ")
                + json.dumps(record, ensure_ascii=False, indent=2).replace("\n", "\n  ")).encode("utf-8")
