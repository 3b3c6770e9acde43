"""CSV: a header with question and answer columns (optionally system and reasoning); one pair per row.

The headers people have are accepted (instruction/input/output, prompt/completion, question/answer,
query/response, any case; see data.formats.columns); ``--columns`` names any others.

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

from data.conversation import Conversation, Message, assistant
from data.formats.columns import (
    ANSWER_NAMES,
    QUESTION_NAMES,
    REASONING_NAMES,
    SYSTEM_NAMES,
    ColumnMap,
    find_column,
)
from data.formats.common import RecordIssue, check_loss_weights


def load(text: str, columns: ColumnMap | None = None) -> tuple[list[tuple[str, Any]], list[Any]]:
    """(location, record) per non-blank row; the header decides which cell is what (see data.formats.columns)."""
    from data.formats import FormatError

    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise FormatError(f"not valid CSV: {exc}") from None
    if not rows:
        raise FormatError("the file is empty")
    header = rows[0]
    cells = _cells(header, columns or ColumnMap())
    if cells["question"] is None or cells["answer"] is None:
        raise FormatError(f"the CSV header must name question and answer columns (found: {', '.join(header)}); "
                          "accepted: instruction/input/output, prompt/completion, question/answer, query/response "
                          "(any case), or map yours with --columns question=NAME,answer=NAME")
    records = []
    line = 1
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        records.append((f"line {line}", {"width": len(header), "cells": cells, "row": row}))
    if not records:
        raise FormatError("the CSV holds no rows")
    return records, []


def _cells(header: list[str], columns: ColumnMap) -> dict[str, int | None]:
    """Column index of each part of a pair: --columns first, then the usual header names."""
    mapped = {_PART.get(ours, ours): theirs for ours, theirs in columns.columns.items()}
    found = {
        "question": find_column(header, QUESTION_NAMES, mapped.get("question")),
        "answer": find_column(header, ANSWER_NAMES, mapped.get("answer")),
        "system": find_column(header, SYSTEM_NAMES, mapped.get("system")),
        "reasoning": find_column(header, REASONING_NAMES, mapped.get("reasoning")),
        "input": None,
    }
    # alpaca's instruction + input: the input is the question's second part.
    if found["question"] is not None and header[found["question"]].strip().lower() == "instruction":
        found["input"] = find_column(header, ("input",), mapped.get("input"))
    return found


# --columns names that mean the same part of a pair in a CSV.
_PART = {"prompt": "question", "instruction": "question", "query": "question", "response": "answer",
         "output": "answer", "completion": "answer"}


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
    width, where, row = value["width"], value["cells"], [unescape_cell(cell) for cell in value["row"]]
    if len(row) != width:
        raise RecordIssue(f"{len(row)} columns, the header has {width}")

    def cell(part: str) -> str:
        return row[where[part]] if where[part] is not None else ""

    question, extra = cell("question"), cell("input")
    question = f"{question}\n{extra}" if question and extra else question or extra
    if not question.strip():
        raise RecordIssue("empty question")
    if not cell("answer").strip():
        raise RecordIssue("empty answer")
    reasoning = cell("reasoning").strip() or None
    messages = ([Message("system", cell("system"))] if cell("system") else []) + [
        Message("user", question), assistant(cell("answer"), reasoning)]
    return Conversation(tuple(messages))


def write(conversations: list[Conversation], writer: Any) -> None:
    with_system = any(c.system is not None for c in conversations)
    with_reasoning = any(c.has_reasoning for c in conversations)
    writer.writerow(["question", "answer"] + (["system"] if with_system else [])
                    + (["reasoning"] if with_reasoning else []))
    for index, conv in enumerate(conversations):
        turns = conv.turns
        if len(turns) != 2 or conv.has_tools:
            raise ValueError(f"record {index} cannot be written as csv: only single question/answer pairs fit")
        if conv.tools:
            raise ValueError(f"record {index} cannot be written as csv: it has tool schemas, which csv cannot hold "
                             "(use sharegpt, openai, lf-v1 or alpaca)")
        try:
            check_loss_weights(conv, "csv")
        except RecordIssue as exc:
            raise ValueError(f"record {index} cannot be written as csv: {exc}") from None
        row = [turns[0].content, turns[1].content] + ([conv.system or ""] if with_system else [])
        row += [turns[1].reasoning or ""] if with_reasoning else []
        writer.writerow([escape_cell(cell) for cell in row])
