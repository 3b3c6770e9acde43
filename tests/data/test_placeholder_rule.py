"""One placeholder rule everywhere: what is approved is what trains, so no path approves an unfilled ``{{name}}``
unless told to, and a re-import with --set replaces the pending placeholder copies (issue 29)."""

from __future__ import annotations

import json

import pytest

from data.conversation import Conversation
from data.errors import UnfilledPlaceholders
from data.importer import import_bytes

pytestmark = pytest.mark.asyncio

IDENTITY = [{"instruction": "Who are you?", "input": "", "output": "I am {{name}}, made by {{author}}."},
            {"instruction": "What is 2 + 2?", "input": "", "output": "4"}]


async def test_a_moderator_cannot_approve_unfilled_placeholders_by_accident(store):
    held = await store.add_example(Conversation.qa("Who are you?", "I am {{name}}."), source="import")
    with pytest.raises(UnfilledPlaceholders, match=r"#\d+ still holds the template placeholder\(s\) \{\{name\}\}.*"
                                                   r"--set name=VALUE"):
        await store.set_example_status(held.id, "approved")
    assert (await store.get_example(held.id)).status == "pending"
    assert (await store.set_example_status(held.id, "approved", allow_placeholders=True)).status == "approved"


async def test_ratings_never_approve_unfilled_placeholders(store):
    held = await store.add_example(Conversation.qa("Who made you?", "{{author}} did."), source="teach", author_id=1)
    await store.rate(held.id, 2, 5)
    outcome = await store.rate(held.id, 3, 5)
    assert outcome.decided is None and "{{author}}" in (outcome.held or "")
    assert (await store.get_example(held.id)).status == "pending"
    rejected = await store.add_example(Conversation.qa("Who?", "{{name}}"), source="teach", author_id=1)
    await store.rate(rejected.id, 2, 1)
    assert (await store.rate(rejected.id, 3, 1)).decided == "rejected"  # refusing it needs no filling


async def test_a_reimport_with_set_replaces_the_pending_placeholder_copies(store):
    data = json.dumps(IDENTITY).encode()
    first = await import_bytes(store, data, "identity.json")
    assert first.placeholders == ["author", "name"] and first.imported == 2
    again = await import_bytes(store, data, "identity.json", set_values={"name": "Kestrel", "author": "Acme"})
    assert (again.imported, again.replaced) == (1, 1)
    pending = await store.list_examples(status="pending")
    assert sorted(e.messages[-1]["content"] for e in pending) == ["4", "I am Kestrel, made by Acme."]
    (old,) = await store.list_examples(status="superseded")
    assert old.messages[-1]["content"] == "I am {{name}}, made by {{author}}."
    assert old.superseded_by == next(e.id for e in pending if "Kestrel" in e.messages[-1]["content"])


def test_review_approve_all_pending_refuses_the_unfilled_and_names_them(cli, tmp_path):
    source = tmp_path / "identity.json"
    source.write_text(json.dumps(IDENTITY))
    assert cli("dataset", "import", str(source)).exit_code == 0
    refused = cli("review", "approve", "--all-pending")
    assert refused.exit_code == 1
    assert "1 example approved" in refused.output and "{{name}}, {{author}}" in refused.output
    done = cli("review", "approve", "--all-pending", "--allow-placeholders")
    assert done.exit_code == 0 and "1 example approved" in done.output


def test_a_reimport_with_set_on_the_command_line_says_what_it_replaced(cli, tmp_path):
    source = tmp_path / "identity.json"
    source.write_text(json.dumps(IDENTITY))
    assert cli("dataset", "import", str(source)).exit_code == 0
    again = cli("dataset", "import", str(source), "--set", "name=Kestrel", "--set", "author=Acme")
    assert again.exit_code == 0 and "1 pending copy with unfilled placeholders replaced" in again.output
    done = cli("review", "approve", "--all-pending")
    assert done.exit_code == 0 and "2 examples approved" in done.output
