"""Experts rate preference records on Discord: /review what:preferences shows the conversation, the chosen answer
(its reasoning too) and the rejected one, with persistent rating buttons; two experts' ratings decide a pending
record by the pairs' quorum rule, never its author's."""

from __future__ import annotations

import json

from data.formats.preference import Preference
from data.preferences import get_preference, import_preferences, list_preferences
from tests.harness.bot import AUTHOR, EXPERT, MEMBER, last_response
from tests.harness.discord import EPHEMERAL, EXPERT_ROLE, message_with_buttons

SECOND_EXPERT = 25
FENCE = "```"


def blocks(content: str) -> list[tuple[str, str]]:
    """(label line, text) of each fenced block."""
    found, label, current, lines = [], "", None, content.split("\n")
    for i, line in enumerate(lines):
        if line == FENCE:
            if current is None:
                current, label = [], lines[i - 1]
            else:
                found.append((label, "\n".join(current)))
                current = None
        elif current is not None:
            current.append(line)
    return found


def buttons(payload: dict) -> list[str]:
    return [c["custom_id"] for row in payload["components"] for c in row["components"]]


def last_card_edit(discord_api) -> dict:
    """The newest edit of a clicked card (a deferred click edits ``@original`` through the webhook)."""
    return [c for c in discord_api.find("PATCH", "/webhooks/") if c.status < 400][-1].json


def preference(question: str = "Which lamp is green?") -> Preference:
    return Preference.from_row([{"role": "user", "content": question}],
                               {"role": "assistant", "content": "Lamp 7.", "reasoning": "The list says lamp 7."},
                               {"role": "assistant", "content": "Lamp 3."})


async def test_two_experts_ratings_approve_a_pending_preference_record(bot, gateway, discord_api):
    await import_preferences(bot.store, [preference()], author_id=AUTHOR)
    [record] = await list_preferences(bot.store, status="pending")

    # ---- the first expert: the card, then a rating (one is not a quorum) ----------------------------------
    await gateway.command("review", {"what": "preferences"}, user_id=EXPERT, roles=[EXPERT_ROLE])
    shown = last_response(discord_api)["data"]
    assert shown["flags"] & EPHEMERAL and f"**Preference #{record.id}**" in shown["content"]
    assert blocks(shown["content"]) == [("**user:**", "Which lamp is green?"),
                                        ("**chosen reasoning:**", "The list says lamp 7."),
                                        ("**chosen:**", "Lamp 7."), ("**rejected:**", "Lamp 3.")]
    assert shown["content"].endswith("**No ratings yet.**")
    assert {f"ll:pf:{a}:{record.id}" for a in ("1", "5", "approve", "reject")} <= set(buttons(shown))
    await gateway.click(f"ll:pf:5:{record.id}", message=discord_api.messages[max(discord_api.messages)],
                        user_id=EXPERT, roles=[EXPERT_ROLE])
    edit = last_card_edit(discord_api)
    assert f"Rated preference #{record.id} 5/5 (mean 5.0 of 1)" in edit["content"]
    assert "No preference record left to review" in edit["content"] and edit["components"] == []
    assert (await get_preference(bot.store, record.id)).status == "pending"

    # ---- its author is never shown it, a member cannot rate it ---------------------------------------------
    await gateway.command("review", {"what": "preferences"}, user_id=AUTHOR, roles=[EXPERT_ROLE])
    assert "No preference record left to review" in last_response(discord_api)["data"]["content"]
    await gateway.click(f"ll:pf:1:{record.id}", message=message_with_buttons([f"ll:pf:1:{record.id}"]),
                        user_id=MEMBER, roles=[])
    assert "Only experts" in last_response(discord_api)["data"]["content"]

    # ---- the second expert sees the first rating, and clicks a button of a card from before a restart ----------
    await gateway.command("review", {"what": "preferences"}, user_id=SECOND_EXPERT, roles=[EXPERT_ROLE])
    assert "**Ratings:** 5 · mean 5.0" in last_response(discord_api)["data"]["content"]
    await gateway.click(f"ll:pf:4:{record.id}", message=message_with_buttons([f"ll:pf:4:{record.id}"]),
                        user_id=SECOND_EXPERT, roles=[EXPERT_ROLE])
    assert f"Rated preference #{record.id} 4/5 (mean 4.5 of 2) → approved" in last_card_edit(discord_api)["content"]
    approved = await get_preference(bot.store, record.id)
    assert approved.status == "approved" and approved.approved_at is not None


async def test_a_long_preference_card_attaches_the_whole_record(bot, gateway, discord_api):
    long = Preference.from_row([{"role": "user", "content": "Explain. " * 300}],
                               {"role": "assistant", "content": "Because. " * 300, "reasoning": "Think. " * 300},
                               {"role": "assistant", "content": "No. " * 300})
    await import_preferences(bot.store, [long], author_id=AUTHOR)
    [record] = await list_preferences(bot.store, status="pending")
    await gateway.command("review", {"what": "preferences"}, user_id=EXPERT, roles=[EXPERT_ROLE])
    call = discord_api.interaction_responses()[-1]
    content = call.json["data"]["content"]
    assert len(content) <= 2000 and "Truncated — the full record is attached" in content
    assert content.endswith("**No ratings yet.**")
    [(name, data)] = call.files
    attached = json.loads(data)
    assert name == f"preference-{record.id}.json"
    assert attached["chosen"] == {"role": "assistant", "content": "Because. " * 300, "reasoning": "Think. " * 300}
    assert attached["rejected"]["content"] == "No. " * 300 and attached["prompt"] == record.prompt
