"""The deploy gate's test bed: a scripted base that answers every eval question RIGHT, adapters the test server
accepts without loading them, an eval snapshot, and the deploy configuration that judges against that base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.conversation import Conversation
from deploy.config import DeployConfig
from deploy.modelfile import serving_format_for
from tests.harness.ollama import gguf_header
from tests.harness.ollama_server import OllamaTestServer
from tests.harness.snapshots import write_snapshot
from trainer.tiny import CHATML

BASE = "scripted-base:1b"
RIGHT = "it is red."


def fake_adapter(root: Path, name: str = "adapter") -> Path:
    """An adapter directory as `loraloop deploy convert` leaves it: a GGUF adapter (key/values only: the test
    server decodes it as Ollama does; scripted models answer without loading it) and the run.json with the
    trained chat template."""
    out = root / name
    out.mkdir(parents=True)
    gguf_header(out / "adapter.gguf", kind="adapter", name=name)  # a LoRA's header: the test server decodes it
    (out / "run.json").write_text(json.dumps({"chat_template": CHATML, "system_prompt": None}), encoding="utf-8")
    return out


def eval_snapshot(root: Path) -> Path:
    """A snapshot whose eval questions all have the reference answer RIGHT."""
    convs = [Conversation.qa(f"what colour is the {t}?", RIGHT) for t in
             ("cat", "dog", "tree", "river", "house", "bird", "stone", "cloud", "apple", "road", "lamp", "door")]
    out = root / "snapshot"
    write_snapshot(out, convs, eval_fraction=0.5, source="test")
    return out


def answered_chats(server: OllamaTestServer) -> list[dict[str, Any]]:
    """The chats a model answered (not the prompt-rendering checks made with ``_debug_render_only``)."""
    return [c for c in server.requests_to("POST", "/api/chat") if not c.get("_debug_render_only")]


def scripted_base(server: OllamaTestServer, adapter: Path, reply: str) -> None:
    fmt = serving_format_for(adapter)
    server.add_scripted_model(BASE, reply=reply, template=fmt.template)


def config(**overrides: Any) -> DeployConfig:
    """Judged on 4 eval prompts (min_eval 4: scripted answers leave nothing to chance; real models need more)."""
    values: dict[str, Any] = {"model_name": "tiny", "ollama_base": BASE, "probes": ("Hello?",), "eval_limit": 4,
                              "gate_margin": 0.02, "min_eval": 4, "paraphrases": 0, "consistency_n": 0}
    return DeployConfig(**{**values, **overrides})
