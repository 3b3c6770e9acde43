"""The merged fallback gives the same logits as base + adapter in PEFT."""

from __future__ import annotations

import pytest

from deploy.merge import MergeError, merge_adapter
from tests.harness.parity import peft_adapter


def test_merged_model_matches_peft(tmp_path, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    peft_model = peft_adapter(tiny_llama_dir, tmp_path / "adapter")
    out = merge_adapter(tmp_path / "adapter", tiny_llama_dir, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.model").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[4, 300, 301, 302, 5, 16]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        got = merged(ids).logits
        with peft_model.disable_adapter():
            base = peft_model(ids).logits
    assert torch.allclose(expected, got, atol=1e-4)
    assert (expected - base).abs().max() > 0.5


def test_merge_refuses_non_adapter(tmp_path, tiny_llama_dir):
    with pytest.raises(MergeError, match="adapter_config.json is missing"):
        merge_adapter(tmp_path, tiny_llama_dir, tmp_path / "out")
