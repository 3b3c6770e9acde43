"""Fold the adapter into the base weights, for bases or Ollama versions that do not serve a LoRA adapter.

The merge is computed in full precision (never into a 4-bit base: that changes the answers) and saved in the
base's own dtype (bf16 for most bases: half the bytes of f32). Two ways on from there:

- the gguf path (:func:`merge_to_gguf`): llama.cpp's own converter writes one GGUF file and llama.cpp quantizes
  it here; Ollama only has to import a GGUF model file, which every release does;
- the merged path: the safetensors themselves go to Ollama, which converts and may quantize them on create (its
  converter, removed in 0.34.1). Tokenizer files are copied byte for byte, so their blobs are the same from one
  retrain to the next.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.errors import LoraloopError
from deploy import gguf

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt")


class MergeError(LoraloopError):
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


# What deploy_quantize may name for the gguf path, by the spelling deploy/registration.py QUANTIZE_TYPES uses.
GGUF_TYPES = (*gguf.CONVERTER_TYPES, *gguf.QUANTIZED_TYPES)


@dataclass(frozen=True, slots=True)
class GgufBuild:
    """One GGUF file made from an adapter and its base, with what making it cost."""

    path: Path
    file_type: str
    seconds: dict[str, float] = field(default_factory=dict)  # merge_s, convert_s, quantize_s
    peak_disk: int = 0  # bytes the work folder held at most (merged model + intermediate GGUF + final)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def merge_to_gguf(adapter_dir: Path | str, base_dir: Path | str, out: Path | str, file_type: str,
                  llama_cpp: Path) -> GgufBuild:
    """Write ``out``: the adapter merged into the base, converted by llama.cpp's converter (in ``llama_cpp``, see
    deploy/gguf.py llama_cpp_sources) and, for q8_0 / q4_K_S / q4_K_M, quantized by llama.cpp; f32/f16/bf16 are
    the converter's own output. Intermediate files are removed as soon as the next step has read them."""
    adapter_dir, base_dir, out = Path(adapter_dir), Path(base_dir), Path(out)
    if file_type not in GGUF_TYPES:
        raise MergeError(f"the gguf path writes {', '.join(GGUF_TYPES)}, not {file_type!r}")
    work = out.with_name(f".{out.name}.work")
    shutil.rmtree(work, ignore_errors=True)
    seconds: dict[str, float] = {}
    peak = 0
    try:
        t0 = time.monotonic()
        # f32 asked: nothing rounded on the way; otherwise the base's dtype, as the converter would read it anyway.
        hf = merge_adapter(adapter_dir, base_dir, work / "hf", save_dtype="float32" if file_type == "f32" else None)
        seconds["merge_s"] = round(time.monotonic() - t0, 3)
        direct = file_type in gguf.CONVERTER_TYPES
        outtype = file_type if direct else ("bf16" if saved_dtype(base_dir) == "bfloat16" else "f16")
        converted = work / f"model-{outtype}.gguf"
        t0 = time.monotonic()
        gguf.convert_model(hf, converted, llama_cpp, outtype)
        seconds["convert_s"] = round(time.monotonic() - t0, 3)
        peak = _size(work)  # the merged model and its GGUF, side by side
        shutil.rmtree(hf)
        if not direct:
            t0 = time.monotonic()
            quantized = work / f"model-{file_type}.gguf"
            gguf.quantize_model(converted, quantized, file_type)
            seconds["quantize_s"] = round(time.monotonic() - t0, 3)
            peak = max(peak, _size(work))
            converted.unlink()
            converted = quantized
        converted.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return GgufBuild(out, file_type, seconds, peak)
