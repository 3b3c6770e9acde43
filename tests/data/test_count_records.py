"""formats.count_records: a file's records counted without parsing them, no further than asked."""

from __future__ import annotations

import json

import pytest

from data import formats


def rows(n: int) -> list[dict]:
    # Brackets, braces, quotes and backslashes inside strings never count.
    return [{"instruction": f'q{i} [{{"x": "]"}}] \\" {{', "output": "a}"} for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 7])
def test_counts_match_the_parse(n):
    array = json.dumps(rows(n), indent=2).encode()
    jsonl = "\n\n".join(json.dumps(r) for r in rows(n)).encode() + b"\n  \n"
    csv = ("question,answer\n" + "".join(f'"q{i}\nsecond line, with a comma",a\n\n' for i in range(n))).encode()
    for data, name in ((array, "f.json"), (jsonl, "f.jsonl"), (jsonl, "jsonl-saved-as.json"), (csv, "f.csv")):
        assert formats.count_records(data, name, stop_at=100) == n, name
        if n:
            assert len(formats.read_bytes(data, name).records) == n


def test_a_single_record_over_many_lines_is_one():
    data = json.dumps(rows(1)[0], indent=4).encode()
    assert formats.count_records(data, "one.json", stop_at=100) == 1


def test_counting_stops_at_stop_at():
    data = json.dumps(rows(50)).encode()
    assert formats.count_records(data, "f.json", stop_at=10) == 10
    assert formats.count_records(b"\n".join([b"{}"] * 50), "f.jsonl", stop_at=10) == 10
    assert formats.count_records(b"q,a\n" + b"x,y\n" * 50, "f.csv", stop_at=10) == 10
