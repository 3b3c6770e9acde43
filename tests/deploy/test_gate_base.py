"""The first fine-tune is judged against the base tag that answers in its place, like every later version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.conversation import Conversation
from deploy.gate import GateResult
from deploy.modelfile import serving_format_for
from deploy.ollama import OllamaClient
from deploy.pipeline import DeployConfig, deploy
from tests.ollama_server import OllamaTestServer
from trainer.tiny import CHATML

BASE = "scripted-base:1b"
RIGHT = "it is red."


def fake_adapter(root: Path, name: str = "adapter") -> Path:
    """An adapter directory as `loraloop deploy convert` leaves it: a GGUF adapter (the test server only checks
    its magic; scripted models answer without loading it) and the run.json with the trained chat template."""
    out = root / name
    out.mkdir(parents=True)
    (out / "adapter.gguf").write_bytes(b"GGUF" + name.encode() * 16)
    (out / "run.json").write_text(json.dumps({"chat_template": CHATML, "system_prompt": None}), encoding="utf-8")
    return out


def eval_snapshot(root: Path) -> Path:
    """A snapshot whose eval questions all have the reference answer RIGHT."""
    from data.snapshot import write_snapshot

    @dataclass
    class Ex:
        content_hash: str
        messages: list[dict[str, str]]
        tags: list[str]
        source: str = "test"
        tools: str | None = None

    convs = [Conversation.qa(f"what colour is the {t}?", RIGHT) for t in
             ("cat", "dog", "tree", "river", "house", "bird", "stone", "cloud", "apple", "road", "lamp", "door")]
    out = root / "snapshot"
    write_snapshot([Ex(c.content_hash(), c.to_dicts(), []) for c in convs], out, eval_fraction=0.5)
    return out


def answered_chats(server: OllamaTestServer) -> list[dict[str, Any]]:
    """The chats a model answered (not the prompt-rendering checks made with ``_debug_render_only``)."""
    return [c for c in server.requests_to("POST", "/api/chat") if not c.get("_debug_render_only")]


def scripted_base(server: OllamaTestServer, adapter: Path, reply: str) -> None:
    fmt = serving_format_for(adapter)
    server.add_scripted_model(BASE, reply=reply, template=fmt.template)


def config(**overrides: Any) -> DeployConfig:
    values: dict[str, Any] = {"model_name": "tiny", "ollama_base": BASE, "probes": ("Hello?",), "eval_limit": 4,
                              "gate_margin": 0.02}
    return DeployConfig(**{**values, **overrides})


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
    assert f"worse than base {BASE}" in result.reason
    assert await store.active_model_version() is None  # the base keeps answering
    stored = await store.get_model_version("loraloop-tiny:v1")
    gate = GateResult.from_dict(stored.evaluation)
    assert gate.active == BASE and gate.active_is_base and gate.decided_by == "rouge_l" and not gate.passed
    assert gate.scores["active"]["rouge_l"] == 1.0 and gate.scores["candidate"]["rouge_l"] == 0.0
    # Both answered the same eval questions (4) and the probe, each with the gate's options.
    asked = {tag: [c for c in answered_chats(ollama_server) if c["model"] == tag]
             for tag in (BASE, "loraloop-tiny:v1")}
    assert len(asked[BASE]) == 5 and len(asked["loraloop-tiny:v1"]) == 6  # + the warm-up
    assert [c["messages"] for c in asked[BASE]] == [c["messages"] for c in asked["loraloop-tiny:v1"][1:]]
    assert all(c["options"] == config().gate_options for c in asked[BASE])
    # The table says what decided and against what; the rows carry question, reference, answers and scores.
    assert "base" in gate.table() and "decided by mean ROUGE-L F1" in gate.table() and "FAIL" in gate.table()
    first = gate.rows[0]
    assert first["reference"] == RIGHT and first["active"] == RIGHT and first["candidate"] == "no idea at all"
    assert first["active_rouge_l"] == 1.0 and first["candidate_rouge_l"] == 0.0
    assert "reference: it is red." in gate.details() and "base (ROUGE-L 1.000): it is red." in gate.details()


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
    assert "worse than active" in result.reason
