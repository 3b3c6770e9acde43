"""A KTO label is a JSON boolean (``label`` or LLaMA-Factory's ``kto_tag``), nothing else: a string "false", a 0 or
a null is not read as "desirable" (and so approved for training), nor does a file of such labels pass for plain
pairs. Each such record is an error that names the record and the value."""

from __future__ import annotations

import json

import pytest

from data import formats
from data.importer import import_bytes


def kto_file(labels: list, key: str = "label") -> bytes:
    return json.dumps([{"instruction": f"q{i}", "output": f"a{i}", key: label}
                       for i, label in enumerate(labels)]).encode()


@pytest.mark.parametrize(("label", "shown"), [
    ("false", '"false"'), ("true", '"true"'), (0, "0"), (1, "1"), (None, "null"), ("no", '"no"'), (0.0, "0.0"),
    ([], "[]"),
])
def test_a_label_that_is_not_a_json_boolean_is_an_error_naming_record_and_value(label, shown):
    result = formats.read_bytes(kto_file([True, label, False]), "kto.json")
    assert result.kind == "kto"
    assert [r.conversation.messages[-1].content for r in result.records] == ["a0"]
    assert [r.conversation.messages[-1].content for r in result.undesirable] == ["a2"]
    [error] = result.errors
    assert error.location == "record 1"
    assert shown in error.message and "true or false" in error.message


@pytest.mark.parametrize("label", [0, "0", "false", None])
def test_a_file_whose_labels_are_all_not_booleans_is_not_read_as_plain_pairs(label):
    result = formats.read_bytes(kto_file([label] * 4), "kto.json")
    assert result.kind == "kto" and result.records == [] and result.undesirable == []
    assert [e.location for e in result.errors] == [f"record {i}" for i in range(4)]


def test_kto_tag_takes_booleans_only():
    good = formats.read_bytes(kto_file([True, False], key="kto_tag"), "kto.json")
    assert (len(good.records), len(good.undesirable), good.errors) == (1, 1, [])
    bad = formats.read_bytes(kto_file(["False", True], key="kto_tag"), "kto.json")
    assert [e.location for e in bad.errors] == ["record 0"] and '"False"' in bad.errors[0].message


def test_a_record_without_a_label_in_a_kto_file_is_an_error():
    rows = [{"instruction": "q0", "output": "a0", "label": True}, {"instruction": "q1", "output": "a1"}]
    result = formats.read_bytes(json.dumps(rows).encode(), "kto.json")
    assert result.kind == "kto" and len(result.records) == 1
    [error] = result.errors
    assert error.location == "record 1" and "no KTO label" in error.message


async def test_such_a_file_is_not_imported_and_nothing_is_approved(store):
    data = kto_file([True, "false", 0, None, False])
    report = await import_bytes(store, data, "kto.json", approve=True)
    assert not report.committed and report.imported == 0
    assert [e.location for e in report.errors] == ["record 1", "record 2", "record 3"]
    assert await store.list_examples() == []
    # With skip_invalid only the boolean-labelled records go in: the true one approved, the false one rejected.
    report = await import_bytes(store, data, "kto.json", approve=True, skip_invalid=True)
    assert report.imported == 2 and report.rejected == 1
    statuses = {e.messages[-1]["content"]: e.status for e in await store.list_examples()}
    assert statuses == {"a0": "approved", "a4": "rejected"}

