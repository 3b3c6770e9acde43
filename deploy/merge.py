"""Merged fallback: fold the adapter into the base weights and hand Ollama a full safetensors model.

For bases or Ollama versions that do not serve a LoRA adapter. The merge is computed in full precision (never
into a 4-bit base: that changes the answers) and saved in the base's own dtype (bf16 for most bases: half the
bytes of f32 to upload, and Ollama's converter writes F16 from either); Ollama converts and may quantize it on
create. Tokenizer files are copied byte for byte, so their blobs are the same from one retrain to the next.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt")


class MergeError(Exception):
    """The adapter could not be merged; the message says why."""


_DTYPES = ("float32", "bfloat16", "float16")


def saved_dtype(base_dir: Path) -> str:
    """The dtype the base's weights are stored in (config.json), float32 when it does not say."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return dtype if dtype in _DTYPES else "float32"


def merge_adapter(adapter_dir: Path | str, base_dir: Path | str, out_dir: Path | str,
                  dtype: str = "float32", save_dtype: str | None = None) -> Path:
    """Write the merged model (safetensors, config, tokenizer files) into ``out_dir``: merged in ``dtype``,
    saved in ``save_dtype`` (default: the base's stored dtype)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir, base_dir, out_dir = Path(adapter_dir), Path(base_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"{adapter_dir} is not a PEFT adapter (adapter_config.json is missing)")
    if not (base_dir / "config.json").is_file():
        raise MergeError(f"{base_dir} is not a model directory (config.json is missing)")
    torch_dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    save_dtype = save_dtype or saved_dtype(base_dir)
    if dtype not in torch_dtypes or save_dtype not in torch_dtypes:
        raise MergeError(f"dtype must be float32, bfloat16 or float16, not {dtype!r} / {save_dtype!r}")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtypes[dtype])
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().to(torch_dtypes[save_dtype])
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        source = adapter_dir / name if (adapter_dir / name).is_file() else base_dir / name
        if source.is_file():
            shutil.copyfile(source, out_dir / name)
    return out_dir
