"""Train/serve consistency for real: the token ids llama.cpp gets through Ollama's rendering of our TEMPLATE/SYSTEM
equal the ids the trainer builds for the same conversation (tiny models carrying the real Qwen2.5 / Llama 3 templates).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from data.conversation import Conversation
from deploy.modelfile import serving_format
from deploy.ollama import OllamaClient
from tests.harness.models import convert_base_to_gguf
from tests.harness.ollama_server import OllamaTestServer

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


# ---- golden prompts rendered by Go's own text/template (tests/goldens) ------------------------------------------

def _goldens() -> dict[str, str]:
    from tests.goldens.cases import PROMPTS

    # Bytes, not read_text: universal newlines would turn a rendered "\r\n" into "\n".
    return {p.name: p.read_bytes().decode("utf-8") for p in sorted(PROMPTS.glob("*.txt"))}


def test_golden_cases_are_the_templates_deploy_serves() -> None:
    import json

    from tests.goldens.cases import CASES, cases

    assert json.loads(CASES.read_text(encoding="utf-8")) == cases(), "run python -m tests.goldens.cases, then go run"
    expected = {f"{model}--{chat}.txt" for model in cases()["models"] for chat in cases()["chats"]}
    assert set(_goldens()) == expected


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (Debian: apt-get install golang-go) to run render.go")
def test_go_text_template_renders_the_committed_goldens(tmp_path: Path) -> None:
    from tests.goldens.cases import CASES, HERE

    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"),
           "GOTOOLCHAIN": "local", "GOFLAGS": ""}
    out = tmp_path / "prompts"
    subprocess.run(["go", "run", str(HERE / "render.go"), str(CASES), str(out)], check=True, env=env,
                   capture_output=True, timeout=300)
    regenerated = {p.name: p.read_bytes().decode("utf-8") for p in sorted(out.glob("*.txt"))}
    assert regenerated == _goldens()


def test_the_interpreter_reproduces_every_golden_exactly() -> None:
    from deploy.go_template import ollama_prompt
    from tests.goldens.cases import cases

    spec = cases()
    for model, m in spec["models"].items():
        for name, chat in spec["chats"].items():
            golden = _goldens()[f"{model}--{name}.txt"]
            assert ollama_prompt(m["template"], m["system"], chat) == golden, (model, name)


async def test_the_test_server_renders_every_golden(ollama_server: OllamaTestServer) -> None:
    from tests.goldens.cases import cases

    spec = cases()
    goldens = _goldens()
    async with OllamaClient(ollama_server.url) as client:
        for model, m in spec["models"].items():
            ollama_server.add_scripted_model(f"golden-{model}:1", template=m["template"], system=m["system"])
            for name, chat in spec["chats"].items():
                assert await client.render_prompt(f"golden-{model}:1", chat) == goldens[f"{model}--{name}.txt"]
