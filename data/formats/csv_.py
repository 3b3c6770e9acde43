"""CSV: a header with question and answer columns (and optionally system); one pair per row.

Formula injection: a spreadsheet runs a cell that begins with ``=``, ``+``, ``-``, ``@``, tab or carriage return
as a formula. Written cells that begin with one of those are prefixed with a single quote ``'`` (OWASP's advice;
spreadsheets show the text as is). So that every text round-trips exactly, the rule is: a cell that begins with
any number of quotes (zero included) followed by one of those characters gets one more quote on writing, and on
reading a cell that begins with one or more quotes followed by one of those characters loses one. ``=1`` is
written ``'=1``, ``'=1`` is written ``''=1``; ``'hello`` and ``it's`` are written as they are. A hand-written CSV
whose cell really starts with ``'=`` is therefore read without that first quote.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from data.conversation import Conversation
from data.formats.common import RecordIssue


def load(text: str) -> tuple[list[tuple[str, Any]], list[Any]]:
    from data.formats import FormatError

    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise FormatError(f"not valid CSV: {exc}") from None
    if not rows:
        raise FormatError("the file is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "question" not in header or "answer" not in header:
        raise FormatError(f"the CSV header must name question and answer columns (found: {', '.join(rows[0])})")
    records = []
    line = 1
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        records.append((f"line {line}", {"header": header, "row": row}))
    if not records:
        raise FormatError("the CSV holds no rows")
    return records, []


# Quotes, then a character that makes a spreadsheet evaluate the cell.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_ESCAPED = re.compile(r"'+[=+\-@\t\r]")


def escape_cell(text: str) -> str:
    """The cell as written: one more leading quote when it could start a formula (see the module docstring)."""
    return "'" + text if _FORMULA.match(text) else text


def unescape_cell(text: str) -> str:
    """The inverse of ``escape_cell``."""
    return text[1:] if _ESCAPED.match(text) else text


def parse(value: dict[str, Any]) -> Conversation:
    header, row = value["header"], [unescape_cell(cell) for cell in value["row"]]
    if len(row) != len(header):
        raise RecordIssue(f"{len(row)} columns, the header has {len(header)}")
    cells = dict(zip(header, row, strict=True))
    if not cells["question"].strip():
        raise RecordIssue("empty question")
    if not cells["answer"].strip():
        raise RecordIssue("empty answer")
    return Conversation.qa(cells["question"], cells["answer"], cells.get("system") or None)


def write(conversations: list[Conversation], writer: Any) -> None:
    with_system = any(c.system is not None for c in conversations)
    writer.writerow(["question", "answer", "system"] if with_system else ["question", "answer"])
    for index, conv in enumerate(conversations):
        turns = conv.turns
        if len(turns) != 2 or conv.has_tools:
            raise ValueError(f"record {index} cannot be written as csv: only single question/answer pairs fit")
        row = [turns[0].content, turns[1].content] + ([conv.system or ""] if with_system else [])
        writer.writerow([escape_cell(cell) for cell in row])
