"""The whole retrain loop (full_loop, tests/harness/retrain.py) on a base with Qwen2.5's real vocabulary and chat
template: taught pairs → approved run → training → adapter GGUF for the qwen2 architecture → registration → gate →
the bot answers with the new version through llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.modelfile import serving_format
from tests.harness.models import ConvertedBase, hf_tokenizer
from tests.harness.retrain import TRAIN, full_loop, loop_settings

pytestmark = pytest.mark.slow
BASE = "tiny-qwen2:base"
# Every token's loss spans a 152k vocabulary: fewer, shorter examples than the SentencePiece loop test.
REAL_VOCAB_TRAIN = {**TRAIN, "max_steps": 4, "batch_size": 4, "max_length": 64, "max_new_tokens": 4,
                    "eval_generate": 1, "probes": [], "probe_eval_samples": 0}


@pytest.fixture
def qwen_base_server(ollama_server, real_qwen2_dir: Path, real_vocab_ggufs: dict[str, ConvertedBase]):
    """The Ollama-API test server with the real-vocabulary Qwen2 base "pulled" (family qwen2, like Qwen2.5)."""
    fmt = serving_format(hf_tokenizer(real_qwen2_dir).chat_template)
    ollama_server.add_base_model(BASE, real_vocab_ggufs["qwen2"].path, template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters(), family="qwen2")
    return ollama_server


def small_general_prompts(path: Path) -> Path:
    """Three general prompts in the shipped set's format (the gate answers each with both models)."""
    prompts = [{"lang": "en", "kind": "knowledge", "text": "What is the capital of China?"},
               {"lang": "zh", "kind": "knowledge", "text": "中国的首都是哪里？"},
               {"lang": "en", "kind": "writing", "text": "Write one sentence about rain."}]
    path.write_text(json.dumps({"name": "general-small", "version": 1, "prompts": prompts}), encoding="utf-8")
    return path


async def test_full_loop_on_real_qwen2_vocabulary(tmp_path, discord_api, qwen_base_server, real_qwen2_dir):
    # Short chat answers: an untrained-enough model may never say <|im_end|>, and each token costs 152k logits.
    # The gate's retention check compares the random base's "general answers" (noise) before and after a few
    # large steps: its limit is loosened here (to the worker's own bound, 1.0); the check itself is tested with the
    # gate.
    settings = loop_settings(
        tmp_path, qwen_base_server.url, real_qwen2_dir, dispatcher="local", ollama_base=BASE,
        retrain_train=dict(REAL_VOCAB_TRAIN), chat_max_tokens=16, deploy_eval_limit=1, gate_paraphrases=0,
        gate_consistency_n=0, gate_max_retention_drop=1.0,
        general_prompts_file=small_general_prompts(tmp_path / "general.json"),
    )
    await full_loop(settings, discord_api, qwen_base_server)
