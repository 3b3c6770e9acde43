"""Merged fallback: fold the adapter into the base weights and hand Ollama a full safetensors model.

For bases or Ollama versions that do not serve a LoRA adapter. The base is loaded in full precision (never
4-bit: merging into a quantised base changes the answers); Ollama converts and may quantize it on create.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt")


class MergeError(Exception):
    """The adapter could not be merged; the message says why."""


def merge_adapter(adapter_dir: Path | str, base_dir: Path | str, out_dir: Path | str,
                  dtype: str = "float32") -> Path:
    """Write the merged model (safetensors, config, tokenizer files) into ``out_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"{adapter_dir} is not a PEFT adapter (adapter_config.json is missing)")
    if not (base_dir / "config.json").is_file():
        raise MergeError(f"{base_dir} is not a model directory (config.json is missing)")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise MergeError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        source = adapter_dir / name if (adapter_dir / name).is_file() else base_dir / name
        if source.is_file():
            shutil.copyfile(source, out_dir / name)
    return out_dir
