"""CSV: a header with question and answer columns (and optionally system); one pair per row."""

from __future__ import annotations

import csv
import io
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


def parse(value: dict[str, Any]) -> Conversation:
    header, row = value["header"], value["row"]
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
        row = [turns[0].content, turns[1].content]
        writer.writerow(row + [conv.system or ""] if with_system else row)
