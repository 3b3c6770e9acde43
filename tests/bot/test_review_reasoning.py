"""What experts approve is what trains: an answer's reasoning (imported as ``reasoning_content`` or as a leading
``<think>`` block) is on its review card, whole in its own block or whole in the attached file, exactly as the
trainer renders it from the snapshot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from transformers import AutoTokenizer

from data.importer import import_bytes
from data.snapshot import read_snapshot
from tests.harness.bot import AUTHOR, EXPERT
from tests.harness.discord import EXPERT_ROLE
from trainer.prepare import ChatFormat

FENCE = "```"
ZWSP = "\u200b"
# Qwen3's template renders an answer's reasoning_content: the reasoning is trained.
QWEN3 = Path(importlib.util.find_spec("trl").origin).parent / "chat_templates" / "qwen3.jinja"

SHORT_REASONING = "Blue light has a shorter wavelength, and ```short``` waves scatter more."
LONG_REASONING = "\n".join(f"step {i}: 17 * 23 = 17 * 20 + 17 * 3 = 340 + 51" for i in range(80))  # > 3,000 chars


def labelled_blocks(content: str) -> list[tuple[str, str]]:
    """(label, text) of each fenced block: the label is the ``**…:**`` line before it; zero-width spaces go."""
    found, label, current, lines = [], "", None, content.split("\n")
    for i, line in enumerate(lines):
        if line == FENCE:
            if current is None:
                current, label = [], lines[i - 1]
            else:
                found.append((label, "\n".join(current).replace(ZWSP, "")))
                current = None
        elif current is not None:
            current.append(line)
    return found


def last_card_edit(discord_api):
    """The newest edit of a clicked card (a deferred click edits ``@original`` through the webhook)."""
    return [c for c in discord_api.find("PATCH", "/webhooks/") if c.status < 400][-1]


async def test_reasoning_is_reviewed_exactly_as_it_trains(bot, gateway, discord_api, tmp_path, tiny_llama_dir):
    records = [
        {"messages": [{"role": "user", "content": "Why is the sky blue?"},
                      {"role": "assistant", "content": "Rayleigh scattering.", "reasoning_content": SHORT_REASONING}]},
        {"messages": [{"role": "user", "content": "What is 17 * 23?"},
                      {"role": "assistant", "content": f"<think>\n{LONG_REASONING}\n</think>\n\n391."}]},
    ]
    data = "\n".join(json.dumps(r) for r in records).encode()
    await import_bytes(bot.store, data, "reasoning.jsonl", format="openai", author_id=AUTHOR)
    first, second = await bot.store.list_examples(status="pending")

    # ---- the short one: its reasoning is on the card, whole, labelled, in its own block ---------------------
    await gateway.command("review", user_id=EXPERT, roles=[EXPERT_ROLE])
    call = discord_api.interaction_responses()[-1]
    card = call.json["data"]["content"]
    assert f"Example #{first.id}" in card and call.files == []
    assert labelled_blocks(card) == [("**user:**", "Why is the sky blue?"),
                                     ("**assistant reasoning:**", SHORT_REASONING),
                                     ("**assistant:**", "Rayleigh scattering.")]
    shown = {"Why is the sky blue?": dict(labelled_blocks(card))}

    # ---- rating it shows the long one: too long for a card, so the file carries its reasoning whole ------------
    await gateway.click(f"ll:rv:5:{first.id}", message=discord_api.messages[max(discord_api.messages)],
                        user_id=EXPERT, roles=[EXPERT_ROLE])
    edit = last_card_edit(discord_api)
    card = edit.json["content"]
    assert f"Example #{second.id}" in card and "Truncated — the full pair is attached" in card
    blocks = dict(labelled_blocks(card))
    assert LONG_REASONING.startswith(blocks["**assistant reasoning:**"])
    assert blocks["**assistant reasoning:**"] and blocks["**assistant:**"] == "391."
    [(name, attached)] = edit.files
    assert name == f"example-{second.id}.json"
    answer = json.loads(attached)["messages"][-1]
    shown["What is 17 * 23?"] = {"**assistant reasoning:**": answer["reasoning"], "**assistant:**": answer["content"]}

    # ---- what the trainer renders from the snapshot is exactly what was reviewed --------------------------------
    for example in (first, second):  # a moderator approves both
        await bot.store.set_example_status(example.id, "approved")
    await bot.store.create_snapshot(tmp_path / "snapshot", 0.1)
    snapshot = read_snapshot(tmp_path / "snapshot")
    fmt = ChatFormat(AutoTokenizer.from_pretrained(tiny_llama_dir), QWEN3.read_text(encoding="utf-8"),
                     end_of_turn=["<|im_end|>"])
    assert fmt.reasoning_style == "reasoning_content"
    conversations = [*snapshot.train, *snapshot.eval]
    assert len(conversations) == 2
    for conversation in conversations:
        reviewed = shown[conversation.messages[0].content]
        trained_answer = fmt.messages(conversation)[-1]
        assert trained_answer["reasoning_content"] == reviewed["**assistant reasoning:**"]
        assert trained_answer["content"] == reviewed["**assistant:**"]
        trained_text = "".join(fmt.rendered(conversation).trained_text())
        assert reviewed["**assistant reasoning:**"] in trained_text and reviewed["**assistant:**"] in trained_text
