"""deploy.gate: candidate vs active answers through the Ollama API, scored with data.metrics."""

from __future__ import annotations

import pytest

from data.conversation import Conversation
from deploy.gate import GateConfig, eval_prompts, probe_prompts, run_gate
from deploy.ollama import OllamaClient
from tests.harness.ollama_server import OllamaTestServer

REFERENCE = "the cat is red."
EVAL = [Conversation.qa(f"what colour is cat {i}?", REFERENCE) for i in range(8)]  # MIN_EVAL: enough to judge
OPTIONS = {"temperature": 0}


@pytest.mark.parametrize(
    ("candidate_reply", "active_reply", "margin", "passed"),
    [
        ("The cat is red.", "no idea", 0.0, True),  # better
        ("no idea", "The cat is red.", 0.0, False),  # worse
        # The fact decides, not the sentence: "Red." carries it; ROUGE-L would rank the active's longer answer first.
        ("Red.", "The cat is red, I am quite sure of it.", 0.0, True),
        # The reference's sentence with the wrong fact: key-fact recall 0 against 1.
        ("the cat is blue.", "the cat is red.", 0.99, False),
        ("the cat is blue.", "the cat is red.", 1.0, True),
    ],
)
async def test_gate_decides_by_key_facts_within_margin(
    ollama_server: OllamaTestServer, candidate_reply: str, active_reply: str, margin: float, passed: bool
) -> None:
    ollama_server.add_scripted_model("cand:v2", reply=candidate_reply)
    ollama_server.add_scripted_model("act:v1", reply=active_reply)
    async with OllamaClient(ollama_server.url) as client:
        result = await run_gate(client, "cand:v2", "act:v1", eval_prompts(EVAL, 10), probe_prompts(["hi?"]),
                                GateConfig(margin, OPTIONS))
    assert result.passed is passed and result.decided_by == "facts"
    assert result.scores["candidate"]["count"] == 8
    assert len(result.rows) == 9 and result.rows[-1]["kind"] == "probe" and result.rows[-1]["reference"] is None
    assert result.rows[0]["candidate"] == candidate_reply and result.rows[0]["active"] == active_reply
    assert result.rows[0]["key_facts"] == ["red"]
    assert ("PASS" if passed else "FAIL") in result.table() and "key-fact recall" in result.table()
    # Both models were asked the same chats, with the deterministic options.
    chats = ollama_server.requests_to("POST", "/api/chat")
    assert len(chats) == 18 and all(c["options"] == OPTIONS for c in chats)


async def test_too_few_eval_prompts_are_shown_not_judged(ollama_server: OllamaTestServer) -> None:
    # Three eval questions cannot tell two models apart: the verdict does not rest on them.
    ollama_server.add_scripted_model("cand:v2", reply="no idea")
    ollama_server.add_scripted_model("act:v1", reply="The cat is red.")
    async with OllamaClient(ollama_server.url) as client:
        result = await run_gate(client, "cand:v2", "act:v1", eval_prompts(EVAL[:3], 10), [], GateConfig(0.0, OPTIONS))
        judged = await run_gate(client, "cand:v2", "act:v1", eval_prompts(EVAL[:3], 10), [],
                                GateConfig(0.0, OPTIONS, min_eval=3))
    assert result.passed and result.decided_by == ""
    assert result.reason.startswith("eval set too small to judge: 3 eval prompts, fewer than 8")
    assert result.scores["candidate"]["facts"] == 0.0 and result.scores["active"]["facts"] == 1.0
    assert "eval set too small to judge" in result.table()
    assert not judged.passed and judged.decided_by == "facts"


async def test_no_active_model_passes_and_only_the_candidate_answers(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("cand:v1", reply="whatever")
    async with OllamaClient(ollama_server.url) as client:
        result = await run_gate(client, "cand:v1", None, eval_prompts(EVAL, 2), [], GateConfig(0.0, OPTIONS))
    assert result.passed and result.reason == "no active model to compare with"
    assert set(result.scores) == {"candidate"} and result.scores["candidate"]["count"] == 2


def test_eval_prompts_end_before_the_last_answer_and_skip_tool_chats() -> None:
    multi = Conversation.from_dicts([
        {"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
    ])
    tool = Conversation.from_dicts([
        {"role": "user", "content": "q"}, {"role": "tool_call", "content": "{\"name\": \"f\", \"arguments\": {}}"},
        {"role": "tool", "content": "42"}, {"role": "assistant", "content": "42"},
    ])
    (prompt,) = eval_prompts([multi, tool], 10)
    assert [m["content"] for m in prompt.messages] == ["s", "q1", "a1", "q2"]
    assert prompt.reference == "a2" and prompt.question == "q2"
