"""Reasoning data: read from every place datasets keep it, stored apart from the answer, round-tripped through every
export format and a snapshot; and the chat side's split of streamed <think> text (bot/reasoning.py)."""

from __future__ import annotations

import json

import pytest

from bot.reasoning import render_thinking, split_thinking
from data import formats
from data.conversation import Conversation, InvalidConversation, Message, join_think, split_think

WITH_REASONING = Conversation((
    Message("system", "Be a careful doctor."),
    Message("user", "A patient has a fever and a rash. What first?"),
    Message("assistant", "Check for meningitis signs.", "Fever plus rash can be meningococcal.\nRule it out."),
    Message("user", "And then?"),
    Message("assistant", "Take a history.", "Once the emergency is excluded, gather context."),
))


@pytest.mark.parametrize("format", ["openai", "sharegpt", "alpaca", "lf-v1"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_round_trip_through_every_json_format(format, suffix, tmp_path):
    path = tmp_path / f"r{suffix}"
    formats.write_file([WITH_REASONING, Conversation.qa("plain?", "plain.")], path, format)
    back = formats.read_file(path)
    assert not back.errors
    assert [r.conversation for r in back.records] == [WITH_REASONING, Conversation.qa("plain?", "plain.")]


def test_round_trip_through_csv(tmp_path):
    pair = Conversation((Message("user", "q"), Message("assistant", "a", "because =1+1")))
    path = tmp_path / "r.csv"
    formats.write_file([pair, Conversation.qa("x", "y")], path, "csv")
    assert path.read_text().splitlines()[0] == "question,answer,reasoning"
    assert [r.conversation for r in formats.read_file(path).records] == [pair, Conversation.qa("x", "y")]


def test_openai_reasoning_content_and_its_other_names():
    for key in ("reasoning_content", "reasoning", "thinking"):
        record = {"messages": [{"role": "user", "content": "q"},
                               {"role": "assistant", "content": "a", key: " why "}]}
        [parsed] = formats.read_bytes(json.dumps(record).encode(), "r.jsonl").records
        assert parsed.conversation.messages[-1] == Message("assistant", "a", "why")
    dumped = json.loads(formats.dumps([WITH_REASONING], "openai"))
    assert dumped["messages"][2]["reasoning_content"] == "Fever plus rash can be meningococcal.\nRule it out."
    assert "<think>" not in dumped["messages"][2]["content"]


def test_think_tags_in_text_become_reasoning():
    record = {"conversations": [{"from": "human", "value": "2+2?"},
                                {"from": "gpt", "value": "<think>\nadd them\n</think>\n\n4"}]}
    [parsed] = formats.read_bytes(json.dumps([record]).encode(), "r.json").records
    assert parsed.conversation.messages[-1] == Message("assistant", "4", "add them")


def test_think_later_in_an_answer_is_text():
    text = "Use the <think> tag like this: <think>x</think>"
    assert split_think(text) == (None, text)
    assert split_think(join_think("r", "a")) == ("r", "a")


def test_llama_factory_v1_reasoning_part():
    record = {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "q"}]},
        {"role": "assistant", "content": [{"type": "reasoning", "value": "think"}, {"type": "text", "value": "a"}]}]}
    [parsed] = formats.read_bytes(json.dumps(record).encode(), "v1.jsonl").records
    assert parsed.conversation.messages[-1] == Message("assistant", "a", "think")


def test_complex_cot_columns_as_in_the_medical_reasoning_datasets():
    rows = [{"Question": "Fever and rash?", "Complex_CoT": "Consider meningitis.", "Response": "Urgent care."}]
    [parsed] = formats.read_bytes(json.dumps(rows).encode(), "medical_o1_sft.json").records
    assert parsed.conversation.messages[-1] == Message("assistant", "Urgent care.", "Consider meningitis.")
    csv_text = "Question,Complex_CoT,Response\nFever and rash?,Consider meningitis.,Urgent care.\n"
    [row] = formats.read_bytes(csv_text.encode(), "medical.csv").records
    assert row.conversation == parsed.conversation


def test_reasoning_is_part_of_the_identity_but_plain_pairs_hash_as_before():
    plain = Conversation.qa("q", "a")
    assert plain.content_hash() == Conversation.from_dicts(plain.to_dicts()).content_hash()
    assert "reasoning" not in plain.to_dicts()[-1]
    reasoned = Conversation((Message("user", "q"), Message("assistant", "a", "r")))
    assert reasoned.content_hash() != plain.content_hash()
    assert Conversation.from_dicts(reasoned.to_dicts()) == reasoned


def test_only_assistant_messages_carry_reasoning():
    with pytest.raises(InvalidConversation, match="only an assistant message can carry reasoning"):
        Conversation((Message("user", "q", "r"), Message("assistant", "a"))).validate()
    with pytest.raises(InvalidConversation, match="reasoning contains a NUL"):
        Conversation((Message("user", "q"), Message("assistant", "a", "r\x00"))).validate()


async def test_reasoning_survives_the_store_and_a_snapshot(tmp_path):
    from data.snapshot import read_snapshot
    from data.store import Store

    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    try:
        await store.import_conversations([WITH_REASONING], approve=True)
        await store.create_snapshot(tmp_path / "snap", 0.5)
    finally:
        await store.close()
    snapshot = read_snapshot(tmp_path / "snap")
    assert (snapshot.train + snapshot.eval) == [WITH_REASONING]


# ---- the chat side: streamed text never shows raw tags -----------------------------------------------------------


def test_every_prefix_of_a_streamed_reply_is_safe():
    reply = "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"
    for end in range(len(reply) + 1):
        thinking, answer = split_thinking(reply[:end])
        assert "<" not in thinking and "think>" not in answer and "<thi" not in answer, reply[:end]
        assert answer == "" or "Hello! How can I help?".startswith(answer)
    assert split_thinking(reply) == ("The user greets me.", "Hello! How can I help?")


def test_partial_close_tag_is_held_back():
    assert split_thinking("<think>weighing it</th") == ("weighing it", "")
    assert split_thinking("<thi") == ("", "")


def test_prompt_opened_block_and_plain_answers():
    assert split_thinking("pondering</think>Answer.", opened=True) == ("pondering", "Answer.")
    assert split_thinking("Just an answer with <b>bold</b>.") == ("", "Just an answer with <b>bold</b>.")


def test_render_thinking_collapsed_or_hidden():
    assert render_thinking("why | because `x`") == "💭 ||why \\| because \\`x\\`||\n\n"
    assert render_thinking("why", "hidden") == ""
    assert render_thinking("") == "" and render_thinking(None) == ""
    long = render_thinking("x" * 5000)
    assert len(long) < 700 and long.endswith("…||\n\n")
    with pytest.raises(ValueError, match="spoiler or hidden"):
        render_thinking("x", "loud")  # type: ignore[arg-type]
