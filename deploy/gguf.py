"""PEFT LoRA adapter → GGUF LoRA adapter (what llama.cpp, and so Ollama, applies on a GGUF base); and llama.cpp's
own converter and quantizer, found on this host, for the gguf deploy path (a merged model → one GGUF file).

Built on the ``gguf`` package: tensor names come from its name maps, so ``model.layers.3.self_attn.q_proj``
becomes ``blk.3.attn_q.weight`` and the adapter's tensors ``blk.3.attn_q.weight.lora_a`` / ``.lora_b``.
llama.cpp permutes the rows of Llama-architecture Q and K weights when it converts a base model; ΔW = B·A
must be permuted the same way, which means permuting the rows of ``lora_B``. Qwen2 has no such permutation.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import LoraloopError
from trainer.cache import built_once
from trainer.record import read_run

# HF architecture → (gguf arch name, whether Q/K rows are permuted by llama.cpp's base converter)
SUPPORTED = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}
_REFUSED_TARGETS = ("embed_tokens", "lm_head", "wte", "embed_out")


class ConversionError(LoraloopError):
    """The adapter cannot be converted (or served by llama.cpp); the message says why."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConversionError(f"{path} is missing")
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from None


def check_adapter_config(config: dict[str, Any]) -> float:
    """Refuse what a GGUF LoRA cannot represent; returns the alpha llama.cpp must store."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ConversionError(f"only LoRA adapters can be converted, not {config.get('peft_type')}")
    if config.get("use_dora"):
        raise ConversionError("DoRA adapters have no GGUF representation (llama.cpp applies plain LoRA only)")
    if config.get("modules_to_save"):
        raise ConversionError(f"modules_to_save ({', '.join(config['modules_to_save'])}) cannot be served "
                              "as a LoRA adapter: train without them")
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        raise ConversionError("per-module alpha_pattern/rank_pattern cannot be stored in a GGUF LoRA")
    if config.get("lora_bias"):
        raise ConversionError("LoRA bias terms cannot be stored in a GGUF LoRA")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    refused = [t for t in targets if any(r in t for r in _REFUSED_TARGETS)]
    if refused:
        raise ConversionError(f"embedding/lm_head targets ({', '.join(refused)}) cannot be served as a GGUF LoRA")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r < 1:
        raise ConversionError(f"adapter_config.json has no valid rank r ({r!r})")
    if not isinstance(alpha, int | float) or float(alpha) != int(alpha):
        raise ConversionError(f"lora_alpha must be a whole number, not {alpha!r}")
    if config.get("use_rslora"):
        # PEFT scales rsLoRA by alpha/sqrt(r); llama.cpp by alpha/r: store alpha*sqrt(r) to get the same scale.
        return float(alpha) * math.sqrt(r)
    return float(alpha)


def _permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order (interleaved rotary halves → split halves), applied to dim 0."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _load_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise ConversionError(f"{path} is missing (only safetensors adapters are supported)")
    out: dict[str, np.ndarray] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            out[key] = f.get_tensor(key).float().numpy()
    return out


def _base_name(key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' → ('model.layers.0…q_proj.weight', 'a')."""
    name = key.removeprefix("base_model.model.")
    for part, tag in ((".lora_A.", "a"), (".lora_B.", "b")):
        if part in name:
            module = name.split(part)[0]
            return f"{module}.weight", tag
    raise ConversionError(f"unexpected tensor {key!r} in the adapter (not a lora_A/lora_B weight)")


# What must agree between the base an adapter was trained on and the one it is converted against.
_BASE_FACTS = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "vocab_size")


def recorded_base(adapter_dir: Path | str) -> Path | None:
    """The base model directory the adapter was trained on: run.json's base_dir (a loraloop run), else the
    adapter_config.json's base_model_name_or_path when that is a local directory; None when neither is known."""
    adapter_dir = Path(adapter_dir)
    try:
        run = read_run(adapter_dir)
    except (OSError, ValueError):
        run = None
    if run is not None and run.base_dir is not None and run.base_dir.is_dir():
        return run.base_dir
    try:
        value = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, str) and value and Path(value).is_dir():
        return Path(value)
    return None


def check_base(adapter_dir: Path, base_dir: Path, base: dict[str, Any]) -> None:
    """Refuse a base whose architecture or shape differs from the one the adapter was trained on."""
    recorded = recorded_base(adapter_dir)
    if recorded is None or recorded.resolve() == base_dir.resolve() or not (recorded / "config.json").is_file():
        return
    trained = _read_json(recorded / "config.json")
    differences = [f"{key} {trained.get(key)!r} vs {base.get(key)!r}" for key in _BASE_FACTS
                   if trained.get(key) != base.get(key)]
    if differences:
        raise ConversionError(f"{base_dir} is not the base this adapter was trained on ({recorded}): "
                              f"{'; '.join(differences)}. Convert against {recorded} (the default)")


def _expected_shape(base_name: str, base: dict[str, Any]) -> tuple[int, int] | None:
    """(out, in) features of a projection of ``base``, for the modules whose size the config gives."""
    hidden, n_head = int(base["hidden_size"]), int(base["num_attention_heads"])
    head_dim = int(base.get("head_dim") or hidden // n_head)
    n_kv = int(base.get("num_key_value_heads") or n_head)
    inter = int(base.get("intermediate_size") or 0)
    shapes = {"q_proj": (n_head * head_dim, hidden), "k_proj": (n_kv * head_dim, hidden),
              "v_proj": (n_kv * head_dim, hidden), "o_proj": (hidden, n_head * head_dim),
              "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    return shapes.get(base_name.removesuffix(".weight").rsplit(".", 1)[-1])


def convert_adapter(adapter_dir: Path | str, base_dir: Path | str, out: Path | str, outtype: str = "f16") -> Path:
    """Write ``out`` (a GGUF LoRA adapter for the GGUF conversion of ``base_dir``)."""
    import gguf

    adapter_dir, base_dir, out = Path(adapter_dir), Path(base_dir), Path(out)
    if outtype not in ("f16", "f32"):
        raise ConversionError(f"--outtype must be f16 or f32, not {outtype!r}")
    if out.is_dir():
        raise ConversionError(f"{out} is an existing folder: --out names the GGUF file to write "
                              f"(e.g. {out / 'adapter.gguf'})")
    config = _read_json(adapter_dir / "adapter_config.json")
    alpha = check_adapter_config(config)
    base = _read_json(base_dir / "config.json")
    architectures = base.get("architectures") or []
    hf_arch = next((a for a in architectures if a in SUPPORTED), None)
    if hf_arch is None:
        raise ConversionError(f"unsupported base architecture {', '.join(architectures) or '?'} "
                              f"(supported: {', '.join(SUPPORTED)})")
    check_base(adapter_dir, base_dir, base)
    arch_name, permute_qk = SUPPORTED[hf_arch]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    n_head = int(base["num_attention_heads"])
    n_kv = int(base.get("num_key_value_heads") or n_head)
    name_map = gguf.get_tensor_name_map(arch, int(base["num_hidden_layers"]))

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _load_tensors(adapter_dir).items():
        base_name, tag = _base_name(key)
        pairs.setdefault(base_name, {})[tag] = value
    if not pairs:
        raise ConversionError(f"{adapter_dir} holds no LoRA tensors")
    dtype = np.float16 if outtype == "f16" else np.float32
    writer = gguf.GGUFWriter(str(out), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for base_name in sorted(pairs):
        parts = pairs[base_name]
        if set(parts) != {"a", "b"}:
            raise ConversionError(f"{base_name}: lora_A and lora_B must both be present")
        gguf_name = name_map.get_name(base_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ConversionError(f"{base_name} has no counterpart in llama.cpp's {arch_name} tensors")
        a, b = parts["a"], parts["b"]
        if a.shape[0] != b.shape[1]:
            raise ConversionError(f"{base_name}: lora_A rank {a.shape[0]} does not match lora_B rank {b.shape[1]}")
        expected = _expected_shape(base_name, base)
        if expected is not None and (b.shape[0], a.shape[1]) != expected:
            raise ConversionError(f"{base_name}: the adapter is {b.shape[0]}x{a.shape[1]}, the base's weight is "
                                  f"{expected[0]}x{expected[1]}: {base_dir} is not the base it was trained on")
        if permute_qk and base_name.endswith("q_proj.weight"):
            b = _permute_rows(b, n_head)
        elif permute_qk and base_name.endswith("k_proj.weight"):
            b = _permute_rows(b, n_kv)
        writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(a, dtype=dtype))
        writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(b, dtype=dtype))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# ---- llama.cpp's converter and quantizer (the gguf deploy path) ---------------------------------------------

CONVERTER = "convert_hf_to_gguf.py"
# What the converter needs beside itself: newer llama.cpp split it into conversion/, and it must import the gguf-py
# of its own version (PyPI's gguf fails with it).
_CONVERTER_PARTS = (CONVERTER, "conversion/", "gguf-py/")
# Where `make install` keeps llama-cpp-python's source archive (it vendors llama.cpp), and where it is unpacked.
SDIST_DIR = Path.home() / ".cache" / "loraloop" / "wheels"
SOURCES_CACHE = Path.home() / ".cache" / "loraloop" / "llama.cpp"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
# File types the converter writes itself; the others are quantized from its f16/bf16 output by llama.cpp.
CONVERTER_TYPES = ("f32", "f16", "bf16")
# llama.cpp's llama_ftype numbers (include/llama.h) for the types deploy_quantize accepts beyond those.
QUANTIZED_TYPES = {"q8_0": 7, "q4_K_S": 14, "q4_K_M": 15}


class LlamaCppMissing(ConversionError):
    """llama.cpp's converter (or llama-cpp-python, for quantizing) is not on this host; the message says what to
    install."""


def _sdist_version(path: Path) -> tuple[int, ...]:
    found = re.search(r"-(\d+(?:\.\d+)*)\.tar\.gz$", path.name)
    return tuple(int(x) for x in found.group(1).split(".")) if found else ()


def llama_cpp_sources(configured: Path | str | None = None, *, sdist_dir: Path = SDIST_DIR,
                      cache: Path = SOURCES_CACHE) -> Path:
    """The llama.cpp source directory holding ``convert_hf_to_gguf.py`` and its ``gguf-py/``.

    ``configured`` (the ``llama_cpp_dir`` setting) wins; else the newest llama-cpp-python source archive in
    ``sdist_dir``, unpacked once into ``cache`` (kept there: an archive deleted later is not missed).
    LlamaCppMissing (one line, naming what to install) otherwise."""
    if configured is not None:
        sources = Path(configured)
        if (sources / CONVERTER).is_file() and (sources / "gguf-py").is_dir():
            return sources
        raise LlamaCppMissing(f"llama_cpp_dir {sources} holds no {CONVERTER} with its gguf-py/: point it at a "
                              "llama.cpp source checkout")
    archives = sorted(sdist_dir.glob("llama_cpp_python-*.tar.gz"), key=_sdist_version)
    if not archives:
        unpacked = sorted((d for d in cache.glob("llama_cpp_python-*") if (d / CONVERTER).is_file()),
                          key=lambda d: _sdist_version(d.with_name(d.name + ".tar.gz")))
        if unpacked:
            return unpacked[-1]
        raise LlamaCppMissing(
            f"the gguf deploy path needs llama.cpp's {CONVERTER}: set llama_cpp_dir (LORALOOP_LLAMA_CPP_DIR) to a "
            f"llama.cpp checkout, or put llama-cpp-python's source archive in {sdist_dir} (`pip download "
            f"--no-binary :all: --no-deps {LLAMA_CPP_PYTHON} -d {sdist_dir}`; make install does)")
    archive = archives[-1]

    def unpack(work: Path) -> None:
        prefix = archive.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_CONVERTER_PARTS)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(work, members=members, filter="data")
        if not (work / CONVERTER).is_file():
            raise LlamaCppMissing(f"{archive} holds no vendor/llama.cpp/{CONVERTER}: set llama_cpp_dir to a "
                                  "llama.cpp checkout")

    # Atomic: a concurrent deploy either wins or finds the finished directory.
    return built_once(cache / archive.name.removesuffix(".tar.gz"), CONVERTER, unpack)


def convert_model(model_dir: Path | str, out: Path | str, sources: Path, outtype: str = "f16") -> Path:
    """Write ``out``: the HF model in ``model_dir`` as one GGUF file, by llama.cpp's own converter (a subprocess;
    ``outtype`` f32, f16 or bf16)."""
    model_dir, out = Path(model_dir), Path(out)
    if outtype not in CONVERTER_TYPES:
        raise ConversionError(f"the converter writes {', '.join(CONVERTER_TYPES)}, not {outtype!r}")
    paths = [str(sources / "gguf-py"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1"}
    log_path = out.with_name(out.name + ".log")
    cmd = [sys.executable, str(sources / CONVERTER), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    with log_path.open("wb") as log:  # a file, not a pipe: the converter never blocks on a full one
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    log_path.unlink()
    if done.returncode != 0 or not out.is_file():
        lines = [line for line in text.splitlines() if line.strip()]
        raise ConversionError(f"llama.cpp's {CONVERTER} failed ({done.returncode}): {' | '.join(lines[-3:])}")
    return out


def quantize_model(source: Path | str, out: Path | str, file_type: str, threads: int | None = None) -> Path:
    """Write ``out``: the f16/bf16/f32 GGUF ``source`` quantized to ``file_type`` (q8_0, q4_K_S, q4_K_M) by
    llama.cpp (llama-cpp-python's ``llama_model_quantize``). Rows too short for a k-quant get llama.cpp's
    fallback type; the file's type is still the one asked for."""
    if file_type not in QUANTIZED_TYPES:
        raise ConversionError(f"llama.cpp quantizes to {', '.join(QUANTIZED_TYPES)} here, not {file_type!r}")
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppMissing(f"quantizing to {file_type} needs llama-cpp-python: pip install {LLAMA_CPP_PYTHON} "
                              "(or set deploy_quantize to f16/bf16/f32)") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZED_TYPES[file_type]
    params.nthread = threads or os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0 or not Path(out).is_file():
        raise ConversionError(f"llama.cpp could not quantize {source} to {file_type} (status {status})")
    return Path(out)


def gguf_file_type(path: Path | str) -> str:
    """The file type a GGUF's header declares (``general.file_type``), as llama.cpp names it: MOSTLY_Q4_K_M…"""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = reader.get_field(gguf.Keys.General.FILE_TYPE)
    if field is None:
        return "unknown"
    return gguf.LlamaFileType(int(field.contents())).name
