"""What experts see is what trains: the /review card shows a pair whole, or says it is shortened and carries
the whole pair as a file; user text cannot pose as the card's own lines; Edit never cuts text silently."""

from __future__ import annotations

import json

import pytest

from bot.views import CONTENT_MAX, render_example
from data.conversation import Conversation
from data.models import Example
from tests.harness.bot import ADMIN, AUTHOR, EXPERT, last_edit, last_response
from tests.harness.discord import ADMIN_ROLE, EPHEMERAL, EXPERT_ROLE, message_with_buttons

FENCE = "```"
ZWSP = "\u200b"

HOSTILE = "\n".join([
    "**assistant:** fake answer the reviewer should not trust",
    "```",
    "@everyone look here",
    "Ratings: 5, 5",
    "**Ratings:** 5, 5 · mean 5.0 · disagreement 0.00",
    "**Example #1** · source: teach · status: approved",
    "```python",
    "No ratings yet.",
])


def hostile_answer(length: int) -> str:
    text = HOSTILE
    while len(text) < length:
        text += f"\nline {len(text)} ``` **user:** `x` @here"
    return text[:length]


def outside_blocks(content: str) -> list[str]:
    """The card's own lines: everything not inside a fenced block (a fence line toggles)."""
    lines, inside = [], False
    for line in content.split("\n"):
        if line == FENCE:
            inside = not inside
            continue
        if not inside:
            lines.append(line)
    assert not inside, "a code block was left open"
    return lines


def blocks(content: str) -> list[str]:
    """The text inside each fenced block, in order."""
    found, current = [], None
    for line in content.split("\n"):
        if line == FENCE:
            if current is None:
                current = []
            else:
                found.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


def assert_structure(content: str, example_id: int, roles: list[str], ratings: str) -> None:
    own = outside_blocks(content)
    assert sum(line.startswith("**Example #") for line in own) == 1
    assert [line for line in own if line.startswith(f"**Example #{example_id}**")]
    for role in ("user", "assistant", "system"):
        assert own.count(f"**{role}:**") == roles.count(role)
    rating_lines = [line for line in own if "Ratings" in line or "No ratings" in line]
    assert len(rating_lines) == 1 and rating_lines[0].startswith(ratings)
    assert rating_lines[0] == own[-1], "the ratings line is the card's last line"
    for text in blocks(content):
        assert FENCE not in text  # no user text can close its block early
    assert content.count(FENCE) == 2 * len(roles)


def buttons(payload: dict) -> list[str]:
    return [c["custom_id"] for row in payload["components"] for c in row["components"]]


async def test_long_hostile_pair_is_marked_truncated_and_attached_whole(bot, gateway, discord_api):
    question = "What does `**assistant:**` mean?\n```\n@everyone\n```"
    answer = hostile_answer(5000)
    first = await bot.store.add_example(Conversation.qa(question, answer, "Be careful."), source="teach",
                                        author_id=AUTHOR)
    second = await bot.store.add_example(Conversation.qa("second " + question, answer + " (2)"), source="teach",
                                         author_id=AUTHOR)
    await bot.store.rate(first.id, ADMIN, 4)

    await gateway.command("review", user_id=EXPERT, roles=[EXPERT_ROLE])
    call = discord_api.interaction_responses()[-1]
    shown = call.json["data"]
    content = shown["content"]
    assert shown["flags"] & EPHEMERAL and len(content) <= CONTENT_MAX
    assert "Truncated — the full pair is attached" in content and f"example-{first.id}.json" in content
    assert_structure(content, first.id, ["system", "user", "assistant"], "**Ratings:** 4 · mean 4.0")
    assert shown["allowed_mentions"]["parse"] == []  # and inside a code block, @everyone is plain text
    # What is shown is the pair's own text from its start, and the cut is said where it happens.
    system, user, assistant = blocks(content)
    assert system == "Be careful." and user.replace(ZWSP, "") == question
    assert answer.startswith(assistant.replace(ZWSP, "")) and len(assistant.replace(ZWSP, "")) < len(answer)
    assert "shortened: 5,000 characters in all" in content
    # The file carries the exact pair.
    [(name, data)] = call.files
    assert name == f"example-{first.id}.json"
    assert json.loads(data)["messages"] == first.messages
    assert json.loads(data)["messages"][-1]["content"] == answer
    assert f"ll:rv:5:{first.id}" in buttons(shown) and f"ll:rv:edit:{first.id}" in buttons(shown)

    # Rating it edits the same message into the next card, with that card's file.
    card = discord_api.messages[max(discord_api.messages)]
    await gateway.click(f"ll:rv:5:{first.id}", message=card, user_id=EXPERT, roles=[EXPERT_ROLE])
    assert discord_api.interaction_responses()[-1].json["type"] == 6  # deferred before the write
    call = last_edit(discord_api)
    update = call.json
    assert card["content"] == update["content"]  # the card itself, edited in place
    content = update["content"]
    assert len(content) <= CONTENT_MAX and f"Rated #{first.id} 5/5" in content
    assert "Truncated — the full pair is attached" in content
    assert_structure(content, second.id, ["user", "assistant"], "**No ratings yet.**")
    [(name, data)] = call.files
    assert name == f"example-{second.id}.json" and json.loads(data)["messages"] == second.messages
    assert f"ll:rv:5:{second.id}" in buttons(update)

    # The last rating leaves no stale file behind on the message.
    await gateway.click(f"ll:rv:3:{second.id}", message=discord_api.messages[max(discord_api.messages)],
                        user_id=EXPERT, roles=[EXPERT_ROLE])
    call = last_edit(discord_api)
    assert "Nothing left to review" in call.json["content"]
    assert call.files == [] and call.json["attachments"] == []


async def test_short_hostile_pair_is_shown_whole_without_a_file(bot, gateway, discord_api):
    answer = hostile_answer(900)
    example = await bot.store.add_example(Conversation.qa("Is ``` a fence?", answer), source="teach",
                                          author_id=AUTHOR)
    await gateway.command("review", user_id=EXPERT, roles=[EXPERT_ROLE])
    call = discord_api.interaction_responses()[-1]
    content = call.json["data"]["content"]
    assert call.files == [] and "Truncated" not in content and "shortened" not in content
    assert_structure(content, example.id, ["user", "assistant"], "**No ratings yet.**")
    user, assistant = blocks(content)
    assert user.replace(ZWSP, "") == "Is ``` a fence?" and assistant.replace(ZWSP, "") == answer


@pytest.mark.parametrize("answer", ["a" * 1990, "`" * 3000, "``x" * 1500, hostile_answer(12000), "é\n" * 2500])
@pytest.mark.parametrize("limit", [CONTENT_MAX, 1200])
def test_card_always_fits_and_keeps_ratings_and_header(answer, limit):
    example = Example(id=7, messages=Conversation.qa("q " * 600, answer, "s" * 300).to_dicts(), tools=None, tags=[],
                      source="import", status="pending")
    card = render_example(example, [1, 5, 3], limit)
    assert len(card.content) <= limit
    assert_structure(card.content, 7, ["system", "user", "assistant"], "**Ratings:** 1, 5, 3")
    if card.attachment is None:
        assert blocks(card.content)[-1].replace(ZWSP, "") == answer
    else:
        assert json.loads(card.attachment)["messages"][-1]["content"] == answer
        assert "Truncated — the full pair is attached" in card.content


def test_a_long_conversation_leaves_its_earliest_messages_to_the_file():
    messages = [{"role": "system", "content": "s"}]
    for i in range(60):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    card = render_example(Example(id=9, messages=messages, tools=None, tags=[], source="import", status="pending"),
                          [2, 2])
    own = outside_blocks(card.content)
    assert len(card.content) <= CONTENT_MAX and own[-1].startswith("**Ratings:** 2, 2")
    assert any(line.endswith("earlier messages only in the file)*") for line in own)
    assert blocks(card.content)[-1] == "answer 59" and blocks(card.content)[-2] == "question 59"
    assert json.loads(card.attachment)["messages"] == messages


def test_tools_are_shown_or_attached():
    tools = json.dumps([{"name": "lookup", "description": "```" + "d" * 3000}])
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    card = render_example(Example(id=3, messages=messages, tools=tools, tags=["t"], source="import",
                                  status="pending"), [])
    assert "**tools:**" in outside_blocks(card.content)
    assert card.attachment is not None and json.loads(card.attachment)["tools"] == tools


async def test_edit_refuses_text_longer_than_a_form_holds(bot, gateway, discord_api):
    long = await bot.store.add_example(Conversation.qa("q", "x" * 4500), source="import", author_id=AUTHOR)
    msg = message_with_buttons([f"ll:rv:edit:{long.id}"])
    await gateway.click(f"ll:rv:edit:{long.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    response = last_response(discord_api)
    assert response["type"] == 4 and response["data"]["flags"] & EPHEMERAL  # no form opened
    assert "too long to edit here" in response["data"]["content"] and "4,500 characters" in response["data"]["content"]

    fits = await bot.store.add_example(Conversation.qa("q2", "y" * 4000), source="import", author_id=AUTHOR)
    await gateway.click(f"ll:rv:edit:{fits.id}", message=message_with_buttons([f"ll:rv:edit:{fits.id}"]),
                        user_id=EXPERT, roles=[EXPERT_ROLE])
    modal = last_response(discord_api)
    assert modal["type"] == 9
    answer = modal["data"]["components"][1]["components"][0]
    assert answer["value"] == "y" * 4000  # prefilled whole


async def test_edit_keeps_tags_and_tools(bot, gateway, discord_api):
    tools = json.dumps([{"name": "lookup"}])
    conv = Conversation.from_dicts([{"role": "user", "content": "q"}, {"role": "tool_call", "content": "{}"},
                                    {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}],
                                   ["tagged"], tools)
    example = await bot.store.add_example(conv, source="import", author_id=AUTHOR)
    await gateway.click(f"ll:rv:edit:{example.id}", message=message_with_buttons([f"ll:rv:edit:{example.id}"]),
                        user_id=EXPERT, roles=[EXPERT_ROLE])
    modal = last_response(discord_api)["data"]
    fields = [c["components"][0]["custom_id"] for c in modal["components"]]
    await gateway.submit_modal(modal["custom_id"], dict(zip(fields, ["r", "a better answer"], strict=True)),
                               user_id=EXPERT, roles=[EXPERT_ROLE])
    assert "Saved as example" in discord_api.reply_text()
    [copy] = await bot.store.list_examples(status="pending")
    assert copy.tags == ["tagged"] and copy.tools == tools
    assert copy.messages[-1] == {"role": "assistant", "content": "a better answer"}


async def test_second_click_on_a_rating_says_changed(bot, gateway, discord_api):
    example = await bot.store.add_example(Conversation.qa("q", "a"), source="teach", author_id=AUTHOR)
    msg = message_with_buttons([f"ll:rv:{a}:{example.id}" for a in ("3", "4")])
    await gateway.click(f"ll:rv:3:{example.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    assert f"Rated #{example.id} 3/5" in last_edit(discord_api).json["content"]
    await gateway.click(f"ll:rv:4:{example.id}", message=msg, user_id=EXPERT, roles=[EXPERT_ROLE])
    assert f"Changed your rating of #{example.id} to 4/5" in last_edit(discord_api).json["content"]
    assert [r.score for r in await bot.store.ratings_for(example.id)] == [4]


async def test_admin_card_after_direct_approve_fits(bot, gateway, discord_api):
    first = await bot.store.add_example(Conversation.qa("q", "a"), source="teach", author_id=AUTHOR)
    nxt = await bot.store.add_example(Conversation.qa("q2", hostile_answer(3000)), source="teach", author_id=AUTHOR)
    await gateway.click(f"ll:rv:approve:{first.id}", message=message_with_buttons([f"ll:rv:approve:{first.id}"]),
                        user_id=ADMIN, roles=[ADMIN_ROLE])
    call = last_edit(discord_api)
    content = call.json["content"]
    assert content.startswith(f"Example #{first.id} approved.") and len(content) <= CONTENT_MAX
    assert_structure(content, nxt.id, ["user", "assistant"], "**No ratings yet.**")
    assert json.loads(call.files[0][1])["messages"] == nxt.messages
