"""What the project's GGUF conversions are checked against: a PEFT LoRA adapter on a tiny base, and the logits
llama.cpp (the engine Ollama runs) computes with it. Importing this skips the importing test module where
llama-cpp-python is not installed."""

from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what colour is the cat?"},
        {"role": "assistant", "content": "the cat is blue."}, {"role": "user", "content": "and the dog?"}]


def peft_adapter(base_dir, out, seed=0, **lora):
    """A random non-zero LoRA (r=8, all linear layers) on ``base_dir``, saved to ``out``; returns the PEFT model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM", **lora)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return peft_model.eval()


def llama_logits(base_gguf, ids, lora=None):
    """llama.cpp's logits for every position of ``ids`` (with the GGUF adapter ``lora`` applied, if given)."""
    llm = llama_cpp.Llama(model_path=str(base_gguf), lora_path=str(lora) if lora else None, logits_all=True,
                          n_ctx=256, type_k=0, type_v=0, n_threads=2, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])
