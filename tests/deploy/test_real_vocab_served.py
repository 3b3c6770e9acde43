"""Train/serve fidelity on the real Qwen2.5 / Llama 3 vocabularies: the token ids llama.cpp gets from Ollama's
rendering of the TEMPLATE/SYSTEM the deploy writes equal the ids the trainer builds for the same conversation."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from data.conversation import Conversation
from deploy.modelfile import serving_format_for
from deploy.ollama import OllamaClient
from tests.harness.models import ConvertedBase, hf_tokenizer
from tests.harness.ollama_server import OllamaTestServer
from trainer.prepare import ChatFormat, end_of_turn_tokens

pytestmark = pytest.mark.slow

CHATS = [
    [{"role": "user", "content": "What colour is the cat?"}],
    [{"role": "system", "content": "Réponds en français."}, {"role": "user", "content": "Où est la tour Eiffel ?"}],
    [
        {"role": "user", "content": "东京是哪个国家的首都？"},
        {"role": "assistant", "content": "日本 🇯🇵 — 東京は首都です。"},
        {"role": "user", "content": "And Seoul? 서울은? 🙂👍🏽\nTwo lines."},
    ],
    [
        {"role": "system", "content": "You are terse. Use emoji ✅"},
        {"role": "user", "content": "x_1 = 42  # what is x_1?"},
        {"role": "assistant", "content": "`x_1` is 42 👨‍👩‍👧"},
        {"role": "user", "content": "Привет! مرحبا? naïve café…"},
    ],
]


@pytest.fixture(params=["qwen2", "llama3"])
def served_base(request, real_vocab_ggufs: dict[str, ConvertedBase]) -> tuple[str, Path, Path]:
    return request.param, request.getfixturevalue(f"real_{request.param}_dir"), real_vocab_ggufs[request.param].path


def deployed_format(model_dir: Path, run_dir: Path, system_prompt: str | None):
    """The serving format the deploy derives from a training run's run.json (as the recipe writes it)."""
    run_dir.mkdir(exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({
        "base_dir": str(model_dir), "chat_template": hf_tokenizer(model_dir).chat_template,
        "system_prompt": system_prompt,
    }), encoding="utf-8")
    return serving_format_for(run_dir)


def trained_format(model_dir: Path, system_prompt: str | None) -> ChatFormat:
    from transformers import GenerationConfig

    tok = hf_tokenizer(model_dir)
    return ChatFormat(tok, None, system_prompt, end_of_turn_tokens(tok, GenerationConfig.from_pretrained(model_dir)))


async def served_and_trained(server: OllamaTestServer, tag: str, fmt: ChatFormat, chat: list[dict[str, str]]):
    async with OllamaClient(server.url) as client:
        await client.chat(tag, chat, {"temperature": 0, "num_predict": 1})
    served = server.prompts[-1]
    trained = fmt.encode_prompt(Conversation.from_dicts([*chat, {"role": "assistant", "content": "x"}]))
    return served, trained


@pytest.mark.parametrize("system_prompt", [None, "You are a helpful assistant."])
async def test_served_prompt_is_the_training_prompt(
    served_base, system_prompt: str | None, ollama_server: OllamaTestServer, tmp_path: Path
) -> None:
    name, model_dir, gguf = served_base
    serving = deployed_format(model_dir, tmp_path / "run", system_prompt)
    if name == "qwen2" and system_prompt is None:
        # Qwen2.5's template adds its default system prompt to every conversation without one: training saw it,
        # so the served model must get it too.
        assert serving.system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    ollama_server.add_base_model("base:1", gguf, template=serving.template, system=serving.system,
                                 parameters=serving.parameters(), family=name)
    fmt = trained_format(model_dir, system_prompt)
    for chat in CHATS:
        served, trained = await served_and_trained(ollama_server, "base:1", fmt, chat)
        assert served["tokens"] == trained, (served["prompt"], chat)
    assert fmt.end_of_turn[0] in serving.stop  # the end of turn the model learned also stops Ollama


# Qwen2's HF tokenizer NFC-normalises text, llama.cpp does not: a decomposed 'é' (e + U+0301) was trained as one
# token sequence and served as another. Both sides now send NFC (deploy/ollama.py _messages, trainer/prepare.py).
async def test_decomposed_unicode_is_served_as_trained(
    real_qwen2_dir: Path, real_vocab_ggufs: dict[str, ConvertedBase], ollama_server: OllamaTestServer,
    tmp_path: Path,
) -> None:
    serving = deployed_format(real_qwen2_dir, tmp_path / "run", None)
    ollama_server.add_base_model("base:1", real_vocab_ggufs["qwen2"].path, template=serving.template,
                                 system=serving.system, parameters=serving.parameters(), family="qwen2")
    text = unicodedata.normalize("NFD", "Café crème à Genève ?")
    served, trained = await served_and_trained(ollama_server, "base:1", trained_format(real_qwen2_dir, None),
                                               [{"role": "user", "content": text}])
    assert served["tokens"] == trained
