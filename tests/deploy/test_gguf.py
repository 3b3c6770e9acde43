"""The project's LoRA → GGUF converter, checked against llama.cpp itself (the engine Ollama runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bot.cli import app
from deploy.gguf import ConversionError, check_adapter_config, convert_adapter
from tests.harness.parity import CHAT, llama_cpp, llama_logits, peft_adapter


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_parity_with_peft(arch, request, tmp_path, capsys):
    import torch
    from transformers import AutoTokenizer

    base_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    base_gguf = request.getfixturevalue(f"tiny_{arch}_gguf")
    peft_model = peft_adapter(base_dir, tmp_path / "adapter")
    adapter_gguf = convert_adapter(tmp_path / "adapter", base_dir, tmp_path / "adapter.gguf", outtype="f32")
    prompt = AutoTokenizer.from_pretrained(base_dir).apply_chat_template(CHAT, tokenize=False,
                                                                        add_generation_prompt=True)
    vocab = llama_cpp.Llama(model_path=str(base_gguf), vocab_only=True, verbose=False)
    ids = vocab.tokenize(prompt.encode(), add_bos=False, special=True)
    with torch.no_grad():
        ours = peft_model(torch.tensor([ids])).logits[0].numpy()
        with peft_model.disable_adapter():
            base_hf = peft_model(torch.tensor([ids])).logits[0].numpy()
    theirs = llama_logits(base_gguf, ids, adapter_gguf)
    base_cpp = llama_logits(base_gguf, ids)
    diff = float(np.abs(ours - theirs).max())
    effect = float(np.abs(theirs - base_cpp).max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    with capsys.disabled():
        print(f"\n[{arch}] PEFT vs llama.cpp+LoRA: max|Δ|={diff:.2e}, argmax agreement {agree:.0%}; "
              f"LoRA effect max|Δ|={effect:.2f}; base HF vs llama.cpp max|Δ|={np.abs(base_hf - base_cpp).max():.2e}")
    assert diff <= 1e-2 and agree == 1.0
    assert effect > 0.5  # the adapter really moves the logits, so the check above can fail


LOAD_SCRIPT = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], lora_path=sys.argv[2], n_ctx=64, verbose=True)
print("LOADED")
"""


def load_in_subprocess(base_gguf, adapter_gguf):
    # llama-cpp-python 0.3.36 logs llama.cpp's refusal of an adapter but carries on, and the next eval can
    # crash the process: load in a child process and read llama.cpp's own verdict from its log.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(base_gguf), str(adapter_gguf)],
                          capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_mismatched_base_is_refused_by_llama_cpp(tmp_path, tiny_qwen2_dir, tiny_llama_dir, tiny_llama_gguf):
    peft_adapter(tiny_qwen2_dir, tmp_path / "qwen-adapter")
    wrong = convert_adapter(tmp_path / "qwen-adapter", tiny_qwen2_dir, tmp_path / "q.gguf")
    assert "model arch and LoRA arch mismatch" in load_in_subprocess(tiny_llama_gguf, wrong)
    peft_adapter(tiny_llama_dir, tmp_path / "llama-adapter")
    right = convert_adapter(tmp_path / "llama-adapter", tiny_llama_dir, tmp_path / "l.gguf")
    log = load_in_subprocess(tiny_llama_gguf, right)
    assert "failed to apply lora adapter" not in log and "LOADED" in log


def test_f16_output_is_smaller_and_close(tmp_path, tiny_llama_dir, tiny_llama_gguf):
    peft_adapter(tiny_llama_dir, tmp_path / "a", seed=1)
    f32 = convert_adapter(tmp_path / "a", tiny_llama_dir, tmp_path / "a32.gguf", outtype="f32")
    f16 = convert_adapter(tmp_path / "a", tiny_llama_dir, tmp_path / "a16.gguf", outtype="f16")
    assert f16.stat().st_size < f32.stat().st_size
    ids = [4, 300, 301, 302, 5]
    assert np.abs(llama_logits(tiny_llama_gguf, ids, f32) - llama_logits(tiny_llama_gguf, ids, f16)).max() < 5e-2


@pytest.mark.parametrize(("change", "message"), [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "embedding/lm_head"),
    ({"lora_alpha": 16.5}, "whole number"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),
])
def test_unservable_adapters_are_refused(change, message):
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], **change}
    with pytest.raises(ConversionError, match=message):
        check_adapter_config(config)


def test_rslora_alpha_is_rescaled():
    assert check_adapter_config({"r": 16, "lora_alpha": 32, "use_rslora": True}) == pytest.approx(128.0)


def test_cli_convert(tmp_path, tiny_llama_dir):
    peft_adapter(tiny_llama_dir, tmp_path / "a")
    runner = CliRunner()
    ok = runner.invoke(app, ["deploy", "convert", "--adapter", str(tmp_path / "a"), "--base", str(tiny_llama_dir),
                             "--out", str(tmp_path / "a.gguf"), "--outtype", "f32"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "a.gguf").stat().st_size > 0
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    config["use_dora"] = True
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    bad = runner.invoke(app, ["deploy", "convert", "--adapter", str(tmp_path / "a"), "--base", str(tiny_llama_dir),
                              "--out", str(tmp_path / "b.gguf")])
    assert bad.exit_code == 1 and "DoRA" in bad.output and not (tmp_path / "b.gguf").exists()
