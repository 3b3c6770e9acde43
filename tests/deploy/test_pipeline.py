"""Full deploys of tiny-model adapters against the Ollama-API test server (real GGUF, real llama.cpp chats)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from data.conversation import Conversation
from deploy.config import DeployConfig
from deploy.modelfile import serving_format_for
from deploy.ollama import OllamaClient
from deploy.pipeline import deploy
from deploy.promotion import apply_retention, rollback
from tests.harness.models import convert_base_to_gguf
from tests.harness.ollama_server import OllamaTestServer
from tests.harness.snapshots import write_snapshot

pytestmark = pytest.mark.slow
BASE = "tiny-llama:base"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def registered_base(ollama_server: OllamaTestServer, tiny_llama_gguf: Path, tiny_llama_adapters: list[Path]):
    """The server with the clean tiny base "pulled", carrying the base's stock Modelfile settings."""
    fmt = serving_format_for(tiny_llama_adapters[0])
    ollama_server.add_base_model(BASE, tiny_llama_gguf, template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters())
    return ollama_server


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot whose eval split gives the gate a few prompts with reference answers."""
    convs = [Conversation.qa(f"what colour is the {t}?", f"the {t} is red.") for t in
             ("cat", "dog", "tree", "river", "house", "bird", "stone", "cloud", "apple", "road")]
    out = tmp_path_factory.mktemp("snap") / "s1"
    write_snapshot(out, convs, eval_fraction=0.5, source="test")
    return out


def config(**overrides: Any) -> DeployConfig:
    values: dict[str, Any] = {"model_name": "tiny", "ollama_base": BASE, "probes": ("Hello?",), "keep_versions": 2,
                              "paraphrases": 0, "consistency_n": 0,
                              "eval_limit": 3, "min_eval": 3,  # judged on 3 (scripted answers leave nothing to chance)
                              "gate_options": {"temperature": 0.0, "seed": 0, "num_predict": 12}, "outtype": "f32"}
    return DeployConfig(**{**values, **overrides})


async def test_first_deploy_registers_from_the_clean_base_and_becomes_active(
    registered_base: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
    snapshot_dir: Path,
) -> None:
    events: list[str] = []
    async with OllamaClient(registered_base.url) as client:
        result = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(),
                              base_dir=tiny_llama_dir, snapshot_dir=snapshot_dir,
                              on_event=lambda step, info: events.append(step))
    assert result.promoted and result.status == "promoted" and result.tag == "loraloop-tiny:v1", result.reason
    adapter = tiny_llama_adapters[0] / "adapter.gguf"
    digest = "sha256:" + hashlib.sha256(adapter.read_bytes()).hexdigest()
    (create,) = registered_base.requests_to("POST", "/api/create")
    fmt = serving_format_for(tiny_llama_adapters[0])
    assert create["from"] == BASE and create["model"] == "loraloop-tiny:v1"
    assert create["adapters"] == {"adapter.gguf": digest} and "files" not in create
    assert create["template"] == fmt.template and create["parameters"]["stop"] == list(fmt.stop)
    # Only the adapter travelled; the base was never uploaded.
    assert registered_base.blob_uploads == [(digest, adapter.stat().st_size)]
    assert result.bytes_uploaded == adapter.stat().st_size
    # The warm-up and the gate's chats were answered by llama.cpp with the adapter applied.
    served = [p for p in registered_base.prompts if p["model"] == "loraloop-tiny:v1"]
    assert len(served) >= 2
    assert events[:1] == ["converting"] and "warmed_up" in events and events[-1] == "switched"
    active = await store.active_model_version()
    assert active.tag == "loraloop-tiny:v1" and active.status == "promoted" and active.in_ollama
    table = active.evaluation
    # Judged against the base tag that answered until now, on the same rows.
    assert table["passed"] and table["active"] == BASE and table["active_is_base"]
    assert table["rows"][-1]["question"] == "Hello?" and table["scores"]["active"]["count"] == 3
    assert table["scores"]["candidate"]["count"] == 3 and table["rows"][0]["reference"].startswith("the ")
    assert active.artifacts["blobs"] == {"adapter.gguf": digest}


def greedy_answer(model_dir: Path, base_gguf: Path, adapter: Path | None, served: dict[str, Any], stop: tuple[str, ...],
                  num_predict: int) -> str:
    """What the PEFT adapter (None: the bare base) says in transformers, greedily, to the tokens the server fed
    llama.cpp: an engine apart from Ollama's. Decoded (bytes that are no character dropped) and cut at the stop strings
    as the server does."""
    import llama_cpp
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = list(served["tokens"])
    with torch.no_grad():
        out = model.eval().generate(torch.tensor([ids]), max_new_tokens=num_predict, do_sample=False)
    vocab = llama_cpp.Llama(model_path=str(base_gguf), vocab_only=True, verbose=False)
    new = [t for t in out[0][len(ids):].tolist() if t != vocab.token_eos()]
    text = vocab.detokenize(new, prev_tokens=ids).decode(errors="ignore")  # as the server streams it
    for s in stop:
        text = text.split(s)[0]
    return " ".join(text.split())


async def test_the_promoted_model_says_what_the_adapter_taught(
    registered_base: OllamaTestServer, tiny_llama_adapters: list[Path], tiny_llama_dir: Path, tiny_llama_gguf: Path,
    store: Any,
) -> None:
    adapter = tiny_llama_adapters[0]
    chat = [{"role": "user", "content": "what colour is the cat?"}]
    options = {"temperature": 0, "num_predict": 16}
    async with OllamaClient(registered_base.url) as client:
        result = await deploy(adapter, store=store, client=client, config=config(), base_dir=tiny_llama_dir)
        base_answer = await client.chat(BASE, chat, options)
        fed_base = registered_base.prompts[-1]
        tuned_answer = await client.chat(result.tag, chat, options)
        fed_tuned = registered_base.prompts[-1]
    # Promoted: the candidate is the active model the bot now answers with.
    assert result.promoted and result.status == "promoted", result.reason
    active = await store.active_model_version()
    assert active.tag == result.tag == "loraloop-tiny:v1" and active.status == "promoted"
    # It says what the adapter says on its base (its random weights are all it taught), not what the base says.
    assert fed_base["model"] == BASE and fed_tuned["model"] == result.tag
    assert fed_tuned["tokens"] == fed_base["tokens"]  # the same prompt: only the weights differ
    stop = serving_format_for(adapter).stop
    assert " ".join(tuned_answer.split()) == greedy_answer(tiny_llama_dir, tiny_llama_gguf, adapter, fed_tuned,
                                                           stop, 16)
    assert " ".join(base_answer.split()) == greedy_answer(tiny_llama_dir, tiny_llama_gguf, None, fed_base, stop, 16)
    assert tuned_answer and base_answer != tuned_answer


async def test_second_deploy_is_gated_against_the_active_and_rollback_restores(
    registered_base: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
    snapshot_dir: Path,
) -> None:
    async with OllamaClient(registered_base.url) as client:
        first = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(),
                             base_dir=tiny_llama_dir, snapshot_dir=snapshot_dir)
        second = await deploy(tiny_llama_adapters[1], store=store, client=client, config=config(gate_margin=1.0),
                              base_dir=tiny_llama_dir, snapshot_dir=snapshot_dir)
        assert first.promoted and second.promoted, (first.reason, second.reason)
        assert second.gate is not None and second.gate.active == "loraloop-tiny:v1"
        assert set(second.gate.scores) == {"candidate", "active"} and second.gate.scores["active"]["count"] == 3
        creates = registered_base.requests_to("POST", "/api/create")
        assert [c["from"] for c in creates] == [BASE, BASE]  # never from the fine-tuned v1
        assert (await store.active_model_version()).tag == "loraloop-tiny:v2"
        target = await rollback(store, client)
    assert target.tag == "loraloop-tiny:v1"
    assert (await store.active_model_version()).tag == "loraloop-tiny:v1"
    assert (await store.get_model_version("loraloop-tiny:v2")).status == "rolled_back"


async def test_a_worse_candidate_is_rejected_and_the_active_stays(
    registered_base: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
    snapshot_dir: Path,
) -> None:
    async with OllamaClient(registered_base.url) as client:
        await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(), base_dir=tiny_llama_dir)
        # A negative margin demands the candidate beat the active by 2 points out of 1: impossible. No setting may
        # be negative (DeployConfig refuses it), so the copy is made without validation.
        impossible = config().model_copy(update={"gate_margin": -2.0})
        result = await deploy(tiny_llama_adapters[1], store=store, client=client, config=impossible,
                              base_dir=tiny_llama_dir, snapshot_dir=snapshot_dir)
        assert not await client.has_model("loraloop-tiny:v2")
    assert result.status == "rejected" and not result.promoted and "below active" in result.reason
    assert (await store.active_model_version()).tag == "loraloop-tiny:v1"
    v2 = await store.get_model_version("loraloop-tiny:v2")
    assert v2.status == "rejected" and v2.evaluation["passed"] is False and not v2.in_ollama


async def test_failures_mark_the_version_failed_and_keep_the_active(
    registered_base: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
    tiny_qwen2_dir: Path, unreachable_ollama_url: str, tmp_path: Path,
) -> None:
    from tests.harness.ollama import make_adapter

    async with OllamaClient(registered_base.url) as client:
        await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(), base_dir=tiny_llama_dir)
        missing = await deploy(tiny_llama_adapters[1], store=store, client=client,
                               config=config(ollama_base="not-pulled:1b"), base_dir=tiny_llama_dir)
        assert missing.status == "failed" and "ollama pull not-pulled:1b" in missing.reason
        # A Qwen2 adapter on the Llama base: Ollama accepts the create, the first chat fails to load it.
        qwen_adapter = make_adapter(tiny_qwen2_dir, tmp_path / "qwen-adapter", seed=5)
        mismatch = await deploy(qwen_adapter, store=store, client=client, config=config(), base_dir=tiny_qwen2_dir)
        assert mismatch.status == "failed" and "warm-up chat failed" in mismatch.reason, mismatch.reason
        assert not await client.has_model(mismatch.tag)
        # The bot would send a system prompt training never saw: refused before anything reaches Ollama.
        drift = await deploy(tiny_llama_adapters[1], store=store, client=client,
                             config=config(chat_system_prompt="You are a helpful assistant."), base_dir=tiny_llama_dir)
        assert drift.status == "failed" and "trained with 'no system prompt'" in drift.reason, drift.reason
    async with OllamaClient(unreachable_ollama_url, timeout=2) as down:
        unreachable = await deploy(tiny_llama_adapters[1], store=store, client=down, config=config(),
                                   base_dir=tiny_llama_dir)
    assert unreachable.status == "failed" and "Ollama is not reachable" in unreachable.reason
    assert (await store.active_model_version()).tag == "loraloop-tiny:v1"
    others = [v for v in await store.list_model_versions() if v.tag != "loraloop-tiny:v1"]
    assert len(others) == 4 and all(v.status == "failed" and v.failure_reason for v in others)


async def test_retention_keeps_recent_active_and_rollback_target(
    registered_base: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path
) -> None:
    async with OllamaClient(registered_base.url) as client:
        for i in range(4):
            r = await deploy(tiny_llama_adapters[i % 3], store=store, client=client,
                             config=config(gate_margin=1.0, keep_versions=10), base_dir=tiny_llama_dir)
            assert r.promoted, r.reason
        await rollback(store, client)  # v4 is rolled back: v3 active, v2 the rollback target
        deleted = await apply_retention(store, client, "tiny", keep=1)
        present = {m.name for m in await client.list_models()}
    assert (await store.active_model_version()).tag == "loraloop-tiny:v3"
    assert (await store.rollback_target()).tag == "loraloop-tiny:v2"
    # Newest in Ollama is v4 (kept as the newest), v3 active, v2 rollback target: only v1 goes.
    assert deleted == ["loraloop-tiny:v1"]
    assert present == {BASE, "loraloop-tiny:v2", "loraloop-tiny:v3", "loraloop-tiny:v4"}
    assert not (await store.get_model_version("loraloop-tiny:v1")).in_ollama
    assert registered_base.get(BASE) is not None  # the base is never touched


def test_deploy_run_and_models_cli(
    registered_base: OllamaTestServer, tiny_llama_adapters: list[Path], tiny_llama_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.cli import app

    monkeypatch.setenv("LORALOOP_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("LORALOOP_OLLAMA_HOST", registered_base.url)
    monkeypatch.setenv("LORALOOP_MODEL_NAME", "tiny")
    monkeypatch.setenv("LORALOOP_OLLAMA_BASE", BASE)
    monkeypatch.setenv("LORALOOP_SYSTEM_PROMPT", "")  # the tiny ChatML model was trained without one
    # The command line's path, not the gate's every dimension (the full loop judges with all of them, FULL_GATE):
    # a random tiny model rambles to num_predict, ~40 chats a deploy at the defaults.
    monkeypatch.setenv("LORALOOP_DEPLOY__PARAPHRASES", "0")
    monkeypatch.setenv("LORALOOP_DEPLOY__CONSISTENCY_N", "0")
    runner = CliRunner()
    for adapter in tiny_llama_adapters[:2]:
        ran = runner.invoke(app, ["deploy", "run", "--adapter", str(adapter), "--base", str(tiny_llama_dir),
                                  "--margin", "1", "--json"])
        assert ran.exit_code == 0, ran.output
        lines = [json.loads(line) for line in ran.stdout.splitlines()]
        assert lines[-1]["event"] == "result" and lines[-1]["status"] == "promoted"
        assert {"converting", "uploaded", "create", "warmed_up", "gated", "switched"} <= {e["event"] for e in lines}
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["tag"]: r["active"] for r in rows} == {"loraloop-tiny:v1": False, "loraloop-tiny:v2": True}
    assert all(r["in_ollama"] for r in rows)
    back = runner.invoke(app, ["models", "rollback"])
    assert back.exit_code == 0 and "loraloop-tiny:v1" in back.stdout, back.output
    promoted = runner.invoke(app, ["models", "promote", "loraloop-tiny:v2"])
    assert promoted.exit_code == 0 and "loraloop-tiny:v2" in promoted.stdout, promoted.output
    bad = runner.invoke(app, ["models", "promote", "loraloop-tiny:v9"])
    assert bad.exit_code == 1 and "no model version" in bad.stderr
    not_adapter = runner.invoke(app, ["deploy", "run", "--adapter", str(tmp_path)])
    assert not_adapter.exit_code == 2 and "not an adapter directory" in not_adapter.stderr
    monkeypatch.setenv("COLUMNS", "160")
    table = runner.invoke(app, ["models", "list"])
    assert table.exit_code == 0 and "loraloop-tiny:v2" in table.stdout


async def test_merged_fallback_hands_ollama_the_merged_safetensors(
    registered_base: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
    llama_cpp_sources: Path, tmp_path: Path,
) -> None:
    # Ollama converts safetensors itself; the test server does it with llama.cpp's converter.
    registered_base.converter = lambda hf_dir, out: convert_base_to_gguf(llama_cpp_sources, hf_dir, out)
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_llama_adapters[0], adapter, ignore=shutil.ignore_patterns("adapter.gguf", "merged"))
    async with OllamaClient(registered_base.url) as client:
        result = await deploy(adapter, store=store, client=client, config=config(mode="merged", quantize="q4_K_M"),
                              base_dir=tiny_llama_dir)
    assert result.promoted, result.reason
    (create,) = registered_base.requests_to("POST", "/api/create")
    assert "from" not in create and "adapters" not in create and create["quantize"] == "q4_K_M"
    assert {"config.json", "model.safetensors", "tokenizer.model"} <= set(create["files"])
    merged_size = (adapter / "merged" / "model.safetensors").stat().st_size
    assert result.bytes_uploaded >= merged_size  # the merged fallback does ship the whole model
    assert any(p["model"] == result.tag for p in registered_base.prompts)  # llama.cpp served it
    assert registered_base.get(result.tag).quantization == "Q4_K_M"


KILL_SCRIPT = """
import asyncio, sys
from pathlib import Path
from data.store import Store
from deploy.ollama import OllamaClient
from deploy.config import DeployConfig
from deploy.pipeline import deploy

async def main():
    store = Store(sys.argv[1])
    await store.migrate()
    async with OllamaClient(sys.argv[2]) as client:
        await deploy(Path(sys.argv[3]), store=store, client=client, base_dir=Path(sys.argv[4]),
                     config=DeployConfig(model_name="tiny", ollama_base=sys.argv[5], outtype="f32",
                                         paraphrases=0, consistency_n=0))

asyncio.run(main())
"""


async def test_killed_between_create_and_switch_leaves_the_previous_active(
    registered_base: OllamaTestServer, store: Any, tiny_llama_adapters: list[Path], tiny_llama_dir: Path,
    tmp_path: Path,
) -> None:
    db = store.url
    async with OllamaClient(registered_base.url) as client:
        first = await deploy(tiny_llama_adapters[0], store=store, client=client, config=config(),
                             base_dir=tiny_llama_dir)
        assert first.promoted
        registered_base.create_delay = 30.0  # the create is in flight until we kill the client
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILL_SCRIPT, db, registered_base.url, str(tiny_llama_adapters[1]),
            str(tiny_llama_dir), BASE, cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 60
            while len(registered_base.requests_to("POST", "/api/create")) < 2:
                assert proc.returncode is None and time.monotonic() < deadline, "the deploy never reached create"
                await asyncio.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == -signal.SIGKILL
        assert (await store.active_model_version()).tag == "loraloop-tiny:v1"
        registered_base.create_delay = 0.0  # Ollama finishes the orphaned create: the next deploy drops that tag
        for _ in range(500):
            if registered_base.get("loraloop-tiny:v2"):
                break
            await asyncio.sleep(0.02)
        # The next deploy notices the interrupted one and marks it failed with a reason.
        third = await deploy(tiny_llama_adapters[2], store=store, client=client, config=config(gate_margin=1.0),
                             base_dir=tiny_llama_dir)
    v2 = await store.get_model_version("loraloop-tiny:v2")
    assert v2.status == "failed" and "interrupted" in v2.failure_reason
    assert registered_base.get("loraloop-tiny:v2") is None
    assert third.tag == "loraloop-tiny:v3" and third.promoted
