"""What users get: the served parameters come from settings and are written into the model; the gate's
deterministic options travel with its own requests only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.settings import Settings
from deploy.config import DeployConfig
from deploy.modelfile import serving_format_for
from deploy.ollama import OllamaClient, OllamaError
from deploy.options import SERVE_OPTIONS
from deploy.pipeline import deploy
from tests.harness.gate import BASE, RIGHT, answered_chats, eval_snapshot, fake_adapter, scripted_base
from tests.harness.ollama_server import OllamaTestServer

SERVE = {"temperature": 0.6, "top_p": 0.85, "top_k": 30, "repeat_penalty": 1.15, "num_ctx": 3072, "num_predict": 400}
GATE = {"temperature": 0.0, "seed": 0, "num_predict": 24}


def shown_parameters(text: str) -> dict[str, list[str]]:
    """/api/show's ``parameters`` text (one ``name value`` line per value) as name -> values."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        out.setdefault(name, []).append(value.strip())
    return out


async def test_served_parameters_reach_the_model_and_the_gate_options_do_not(
    ollama_server: OllamaTestServer, store: Any, tmp_path: Path
) -> None:
    adapter = fake_adapter(tmp_path)
    scripted_base(ollama_server, adapter, RIGHT)
    ollama_server.script_tag("loraloop-tiny:v1", RIGHT)
    config = DeployConfig(model_name="tiny", ollama_base=BASE, probes=("Hello?",), eval_limit=3,
                          serve_options=SERVE, gate_options=GATE, paraphrases=0, consistency_n=0)
    async with OllamaClient(ollama_server.url) as client:
        result = await deploy(adapter, store=store, client=client, config=config,
                              snapshot_dir=eval_snapshot(tmp_path))
        assert result.promoted, result.reason
        shown = await client.show(result.tag)
    (create,) = ollama_server.requests_to("POST", "/api/create")
    stop = list(serving_format_for(adapter).stop)
    assert create["parameters"] == {**SERVE, "stop": stop}  # exactly the served options and the stop tokens
    params = shown_parameters(shown["parameters"])
    assert params["temperature"] == ["0.6"] and params["num_predict"] == ["400"] and params["num_ctx"] == ["3072"]
    assert params["top_p"] == ["0.85"] and params["repeat_penalty"] == ["1.15"] and params["stop"] == [
        f'"{s}"' for s in stop]
    assert "seed" not in params  # the gate's determinism never became the model's
    # The gate asked both models with its own options, per request; the warm-up too (shorter).
    chats = answered_chats(ollama_server)
    assert [c["options"] for c in chats[1:]] == [GATE] * 8 and chats[0]["options"] == {**GATE, "num_predict": 8}
    version = await store.get_model_version(result.tag)
    assert version.artifacts["parameters"] == {**SERVE, "stop": stop}  # what /model status shows
    assert version.evaluation["options"] == GATE


def test_serve_options_come_from_settings_with_chat_defaults(tmp_path: Path) -> None:
    plain = Settings(home=tmp_path, chat_max_tokens=300).deploy_config()
    assert plain.serve_options == {**SERVE_OPTIONS, "num_predict": 300}  # one answer limit for bot and model
    assert plain.serve_options["temperature"] > 0 and plain.gate_options["temperature"] == 0
    if "serve_options" in Settings.model_fields:
        tuned = Settings(home=tmp_path, serve_options={"temperature": 0.2, "num_ctx": 8192}).deploy_config()
        assert tuned.serve_options["temperature"] == 0.2 and tuned.serve_options["num_ctx"] == 8192
        assert tuned.serve_options["top_p"] == SERVE_OPTIONS["top_p"]


async def test_badly_typed_options_are_refused_before_ollama_breaks_every_chat(
    ollama_server: OllamaTestServer
) -> None:
    with pytest.raises(ValueError, match="serve_options: temperature must be a number"):
        DeployConfig(model_name="m", ollama_base=BASE, serve_options={"temperature": "warm"})
    with pytest.raises(ValueError, match="'stop' is not a sampling option"):
        DeployConfig(model_name="m", ollama_base=BASE, serve_options={"stop": ["x"]})
    # What would happen otherwise: Ollama creates the model, then refuses every chat with it.
    ollama_server.add_scripted_model("broken:latest", reply="x")
    ollama_server.get("broken").parameters["temperature"] = "warm"
    async with OllamaClient(ollama_server.url) as client:
        with pytest.raises(OllamaError, match='option "temperature" must be of type float32'):
            await client.chat("broken", [{"role": "user", "content": "hi"}])
