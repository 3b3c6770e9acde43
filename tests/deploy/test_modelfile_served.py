"""Train/serve consistency for real: the token ids llama.cpp gets through Ollama's rendering of our TEMPLATE/SYSTEM
equal the ids the trainer builds for the same conversation (tiny models carrying the real Qwen2.5 / Llama 3 templates).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from data.conversation import Conversation
from deploy.modelfile import serving_format
from deploy.ollama import OllamaClient
from tests.fixtures.models import convert_base_to_gguf
from tests.ollama_server import OllamaTestServer

pytestmark = pytest.mark.slow

CHATS = [
    [{"role": "user", "content": "what colour is the cat?"}],
    [{"role": "system", "content": "be brief."}, {"role": "user", "content": "how many dogs are there?"}],
    [
        {"role": "user", "content": "tell me about the river."},
        {"role": "assistant", "content": "the river is blue."},
        {"role": "user", "content": "and the two rivers?"},
    ],
    [
        {"role": "system", "content": "you answer in lower case."},
        {"role": "user", "content": "a?"},
        {"role": "assistant", "content": "b."},
        {"role": "user", "content": "c?"},
    ],
]


@pytest.fixture(scope="module")
def tiny_llama3_gguf(llama_cpp_sources: Path, tiny_llama3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_base_to_gguf(llama_cpp_sources, tiny_llama3_dir, tmp_path_factory.mktemp("gguf") / "llama3.gguf")


@pytest.fixture(scope="module")
def tiny_qwen_template_gguf(llama_cpp_sources: Path, tiny_qwen_template_dir: Path,
                            tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_base_to_gguf(llama_cpp_sources, tiny_qwen_template_dir,
                                tmp_path_factory.mktemp("gguf") / "qwen-template.gguf")


@pytest.fixture(params=["qwen2.5", "llama3"])
def served_base(request):
    """(template name, HF model dir, GGUF) of a tiny model carrying the real chat template.

    Both use the llama architecture: transformers 5 forces its byte-level Qwen2Tokenizer on any qwen2 model,
    which the tiny SentencePiece vocabulary does not fit (see trainer/tiny.py); the template is what matters.
    """
    if request.param == "qwen2.5":
        return ("qwen2.5", request.getfixturevalue("tiny_qwen_template_dir"),
                request.getfixturevalue("tiny_qwen_template_gguf"))
    return "llama3", request.getfixturevalue("tiny_llama3_dir"), request.getfixturevalue("tiny_llama3_gguf")


@pytest.mark.parametrize("system_prompt", [None, "you are a helpful assistant."])
async def test_served_prompt_tokens_equal_trained_tokens(
    served_base, system_prompt: str | None, ollama_server: OllamaTestServer
) -> None:
    from transformers import AutoTokenizer

    from trainer.prepare import ChatFormat

    template, model_dir, gguf = served_base
    tok = AutoTokenizer.from_pretrained(model_dir)
    fmt = serving_format(tok.chat_template, system_prompt, tok.bos_token or "")
    if template == "qwen2.5" and system_prompt is None:
        assert fmt.system.startswith("You are Qwen")  # the stock template's default, which training saw
    ollama_server.add_base_model("base:1", gguf, template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters())
    chat_format = ChatFormat(tok, None, system_prompt, fmt.stop)
    async with OllamaClient(ollama_server.url) as client:
        for chat in CHATS:
            await client.chat("base:1", chat, {"temperature": 0, "num_predict": 1})
            served = ollama_server.prompts[-1]
            trained_ids = chat_format.encode_prompt(Conversation.from_dicts([*chat, {"role": "assistant",
                                                                                   "content": "x"}]))
            assert served["tokens"] == trained_ids, (served["prompt"], chat)
