"""The first fine-tune is judged against the base tag that answers in its place, like every later version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.gate import GateResult
from deploy.ollama import OllamaClient
from deploy.pipeline import deploy
from tests.harness.gate import BASE, RIGHT, answered_chats, config, eval_snapshot, fake_adapter, scripted_base
from tests.harness.ollama_server import OllamaTestServer


async def test_a_first_candidate_worse_than_the_base_is_rejected(ollama_server: OllamaTestServer, store: Any,
                                                                 tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path)
    scripted_base(ollama_server, adapter, RIGHT)
    ollama_server.script_tag("loraloop-tiny:v1", "no idea at all")  # made worse on purpose
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(adapter, store=store, client=client, config=config(),
                              snapshot_dir=eval_snapshot(tmp_path))
        assert not await client.has_model("loraloop-tiny:v1")
    assert result.status == "rejected" and not result.promoted, result.reason
    assert f"below base {BASE}" in result.reason
    assert await store.active_model_version() is None  # the base keeps answering
    stored = await store.get_model_version("loraloop-tiny:v1")
    gate = GateResult.from_dict(stored.evaluation)
    assert gate.active == BASE and gate.active_is_base and gate.decided_by == "facts" and not gate.passed
    assert gate.scores["active"]["rouge_l"] == 1.0 and gate.scores["candidate"]["rouge_l"] == 0.0
    assert gate.scores["active"]["facts"] == 1.0 and gate.scores["candidate"]["facts"] == 0.0
    # Both answered the same eval questions (4) and the probe, each with the gate's options.
    asked = {tag: [c for c in answered_chats(ollama_server) if c["model"] == tag]
             for tag in (BASE, "loraloop-tiny:v1")}
    assert len(asked[BASE]) == 5 and len(asked["loraloop-tiny:v1"]) == 6  # + the warm-up
    assert [c["messages"] for c in asked[BASE]] == [c["messages"] for c in asked["loraloop-tiny:v1"][1:]]
    assert all(c["options"] == config().gate_options for c in asked[BASE])
    # The table says what decided and against what; the rows carry question, reference, answers and scores.
    assert "base" in gate.table() and "decided by mean key-fact recall" in gate.table() and "FAIL" in gate.table()
    first = gate.rows[0]
    assert first["reference"] == RIGHT and first["active"] == RIGHT and first["candidate"] == "no idea at all"
    assert first["active_rouge_l"] == 1.0 and first["candidate_rouge_l"] == 0.0 and first["key_facts"] == ["red"]
    assert "reference: it is red." in gate.details()
    assert "base (ROUGE-L 1.000, facts 1.00): it is red." in gate.details()


async def test_a_first_candidate_as_good_as_the_base_is_promoted(ollama_server: OllamaTestServer, store: Any,
                                                                tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path)
    scripted_base(ollama_server, adapter, "I do not know.")
    ollama_server.script_tag("loraloop-tiny:v1", RIGHT)
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(adapter, store=store, client=client, config=config(),
                              snapshot_dir=eval_snapshot(tmp_path))
    assert result.promoted, result.reason
    assert result.gate is not None and result.gate.active == BASE and result.gate.passed
    assert f"vs base {BASE}" in result.reason
    assert (await store.active_model_version()).tag == "loraloop-tiny:v1"


async def test_the_second_candidate_is_gated_against_the_active_version(ollama_server: OllamaTestServer,
                                                                       store: Any, tmp_path: Path) -> None:
    first, second = fake_adapter(tmp_path, "a1"), fake_adapter(tmp_path, "a2")
    scripted_base(ollama_server, first, "I do not know.")
    ollama_server.script_tag("loraloop-tiny:v1", RIGHT)
    ollama_server.script_tag("loraloop-tiny:v2", "the sky")  # better than the base, worse than v1
    snapshot = eval_snapshot(tmp_path)
    async with OllamaClient(ollama_server.url) as client:
        assert (await deploy(first, store=store, client=client, config=config(), snapshot_dir=snapshot)).promoted
        result = await deploy(second, store=store, client=client, config=config(), snapshot_dir=snapshot)
    assert result.status == "rejected" and result.gate.active == "loraloop-tiny:v1" and not result.gate.active_is_base
    assert "below active" in result.reason
