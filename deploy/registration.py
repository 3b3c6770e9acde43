"""Which way a fine-tune reaches Ollama: a LoRA adapter on the clean base, one merged GGUF file, or merged safetensors.

The choice is made from what the daemon says about itself (``/api/version``) and about the base
(``/api/show``: engine architecture, capabilities, renderer), before anything is converted. ``auto`` takes the
adapter path (the smallest upload) wherever the daemon may create and load an adapter model for that base, and the
gguf path otherwise: the adapter merged into the base here, converted and quantized with llama.cpp's own tools, and
handed to Ollama as one GGUF file — the one import every Ollama release accepts. When the daemon refuses an adapter
anyway (0.34.1 removed adapters from its CLI; whether its server still creates them depends on the build), the
deploy falls back to gguf once and :class:`PathMemory` remembers that for the daemon and base until the daemon's
version changes. The explicit modes never fall back: they fail with the reason. ``merged`` (safetensors, converted
and quantized by Ollama) relies on Ollama's own converter, which 0.34.1 removed; ``auto`` never takes it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from data.errors import LoraloopError

Path_ = Literal["adapter", "gguf", "merged"]
Mode = Literal["auto", "adapter", "gguf", "merged"]
MODES = ("auto", "adapter", "gguf", "merged")

# Ollama 0.34.1 (ollama PR #14969) removed ADAPTER from Modelfiles in its CLI; older-built adapter models still serve.
# The PR's server create handler still took GGUF adapters: which variant a 0.34.1+ daemon is, only trying tells.
ADAPTER_CREATE_REMOVED_IN = (0, 34, 1)
# From v0.30.0 every GGUF model runs under llama-server with adapters passed as --lora (llm/llama_server.go): the
# new engine's refusal of LoRA below is gone.
LORA_ON_LLAMA_SERVER_SINCE = (0, 30, 0)
# `"_debug_render_only": true` on /api/chat returns the rendered prompt without generating.
DEBUG_RENDER_SINCE = (0, 13, 0)
# Architectures that ran on Ollama's new engine up to the 0.2x releases, which refused adapters at load ("loras are
# not yet implemented"); from fs/ggml's OllamaEngineRequired. Older-engine bases (llama, qwen2, mistral…) apply them.
NEW_ENGINE_ARCHITECTURES = frozenset({
    "bert", "deepseek2", "deepseekocr", "gemma3", "gemma3n", "gemma4", "gptoss", "gpt-oss", "laguna", "llama4",
    "mistral3", "mllama", "nemotron_h", "nemotron_h_moe", "nemotron_h_omni", "nomic-bert", "olmo3", "qwen25vl",
    "qwen3", "qwen3moe", "qwen35", "qwen35moe", "qwen3next", "qwen3vl", "qwen3vlmoe", "glm4moelite", "glmocr",
    "lfm2", "lfm2moe",
})
# What /api/create's `quantize` accepts (server/quantization.go), in the spelling the settings use.
QUANTIZE_TYPES = ("q4_K_M", "q4_K_S", "q8_0", "f16", "f32", "bf16")
LORA_NOT_IMPLEMENTED = "loras are not yet implemented"

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


class PathUnavailable(LoraloopError):
    """The configured registration path cannot work on this daemon and base; the message says why."""


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``0.13.0``, ``v0.12.6-rc1`` → (0, 13, 0); None for a build without a release number (``0.0.0``, dev)."""
    m = _VERSION.match(text.strip())
    if not m:
        return None
    version = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return None if version == (0, 0, 0) else version


def quantize_type(value: str) -> str:
    """The accepted spelling of a quantization type (case-insensitive, as Ollama reads it); ValueError otherwise."""
    for known in QUANTIZE_TYPES:
        if value.strip().lower() == known.lower():
            return known
    raise ValueError(f"Ollama cannot quantize to {value!r}; it accepts {', '.join(QUANTIZE_TYPES)}")


@dataclass(frozen=True, slots=True)
class DaemonFacts:
    """What an Ollama daemon says about itself and about one base tag."""

    host: str
    version: str
    base: str
    family: str = ""  # details.family
    architecture: str = ""  # model_info general.architecture
    capabilities: tuple[str, ...] = ()
    renderer: str = ""  # a built-in renderer: Ollama then ignores TEMPLATE
    parser: str = ""

    @classmethod
    def from_show(cls, host: str, version: str, base: str, shown: dict[str, Any]) -> DaemonFacts:
        details = shown.get("details") or {}
        info = shown.get("model_info") or {}
        return cls(host=host, version=version, base=base, family=str(details.get("family") or ""),
                   architecture=str(info.get("general.architecture") or ""),
                   capabilities=tuple(str(c) for c in shown.get("capabilities") or ()),
                   renderer=str(shown.get("renderer") or ""), parser=str(shown.get("parser") or ""))

    @property
    def release(self) -> tuple[int, int, int] | None:
        return parse_version(self.version)

    @property
    def new_engine(self) -> bool:
        return bool({self.architecture, self.family} & NEW_ENGINE_ARCHITECTURES)

    @property
    def renders_debug(self) -> bool:
        """Whether /api/chat answers ``_debug_render_only`` (a dev build is taken to be recent)."""
        return self.release is None or self.release >= DEBUG_RENDER_SINCE

    def adapter_refusal(self) -> str | None:
        """Why this daemon is known to refuse an adapter model for this base (a new-engine base before 0.30.0),
        or None."""
        if self.new_engine and self.release is not None and self.release < LORA_ON_LLAMA_SERVER_SINCE:
            return (f"{self.base} ({self.architecture or self.family}) runs on Ollama {self.version}'s new engine, "
                    f"which refuses LoRA adapters when it loads the model ({LORA_NOT_IMPLEMENTED!r}; fixed in 0.30.0)")
        return None

    def adapter_doubt(self) -> str | None:
        """Why this daemon may refuse to create an adapter model (0.34.1 and later, or a dev build), or None."""
        if self.release is None or self.release >= ADAPTER_CREATE_REMOVED_IN:
            return (f"Ollama {self.version or '(unknown version)'} may not create models with LoRA adapters "
                    "(removed from its CLI in 0.34.1)")
        return None

    def template_ignored(self) -> str | None:
        """Why a model created from this base would not be prompted with our TEMPLATE, or None."""
        if self.renderer:
            return (f"{self.base} has Ollama's built-in renderer {self.renderer!r}, which a model created from it "
                    "inherits and which replaces our TEMPLATE")
        return None

    def summary(self) -> str:
        new = self.new_engine and self.release is not None and self.release < LORA_ON_LLAMA_SERVER_SINCE
        engine = "new engine" if new else "llama.cpp engine"
        renderer = f"renderer {self.renderer}" if self.renderer else "no renderer (TEMPLATE decides)"
        caps = ", ".join(self.capabilities) or "none listed"
        arch = self.architecture or self.family or "?"
        return f"{self.base}: {arch} on the {engine}, {renderer}, capabilities {caps}"


@dataclass(frozen=True, slots=True)
class PathChoice:
    """The path a deploy takes, and why (shown in the version's record and by ``loraloop doctor``)."""

    path: Path_
    mode: Mode
    reason: str
    remembered: bool = False


class PathMemory:
    """Fallbacks to gguf the daemons forced, by daemon and base; forgotten when the daemon's version changes.

    With a ``file`` it survives restarts (JSON); without one it lasts as long as the process.
    """

    def __init__(self, file: Path | None = None) -> None:
        self.file = Path(file) if file else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, str]] = {}
        if self.file is not None and self.file.is_file():
            try:
                loaded = json.loads(self.file.read_text(encoding="utf-8"))
            except ValueError:
                loaded = {}  # a damaged memory only costs one more adapter attempt
            self._entries = {k: v for k, v in loaded.items() if isinstance(v, dict)} if isinstance(loaded, dict) else {}

    @staticmethod
    def _key(facts: DaemonFacts) -> str:
        return f"{facts.host.rstrip('/')}|{facts.base.lower()}"

    def recall(self, facts: DaemonFacts) -> str | None:
        """Why this daemon (at this version) refused an adapter for this base before, or None."""
        with self._lock:
            entry = self._entries.get(self._key(facts))
        if entry and entry.get("version") == facts.version:
            return entry.get("reason") or "the daemon refused an adapter before"
        return None

    def remember(self, facts: DaemonFacts, reason: str) -> None:
        with self._lock:
            self._entries[self._key(facts)] = {"version": facts.version, "reason": reason}
            if self.file is not None:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(self._entries, indent=1, sort_keys=True), encoding="utf-8")
                tmp.replace(self.file)


# Remembered for the life of the process when the caller keeps no memory of its own.
PROCESS_MEMORY = PathMemory()


def choose_path(mode: str, facts: DaemonFacts, memory: PathMemory | None = None) -> PathChoice:
    """The registration path for ``mode`` on this daemon and base; PathUnavailable when an explicit adapter
    mode cannot work there (it never falls back)."""
    if "completion" not in facts.capabilities and facts.capabilities:
        raise PathUnavailable(f"{facts.base} cannot chat (capabilities: {', '.join(facts.capabilities)}); "
                              "use an instruct or chat base")
    if mode == "merged":
        return PathChoice("merged", "merged", "deploy_mode is merged (Ollama converts and quantizes the safetensors)")
    if mode == "gguf":
        return PathChoice("gguf", "gguf", "deploy_mode is gguf")
    refusal = facts.adapter_refusal() or (facts.adapter_doubt() if mode == "adapter" else None)
    if mode == "adapter":
        if refusal:
            raise PathUnavailable(f"deploy_mode is adapter but {refusal}; set deploy_mode to gguf, merged or auto "
                                  "(auto tries the adapter and falls back to gguf)")
        return PathChoice("adapter", "adapter", "deploy_mode is adapter")
    if mode != "auto":
        raise ValueError(f"deploy mode must be {', '.join(MODES)}, not {mode!r}")
    if refusal:
        return PathChoice("gguf", "auto", refusal)
    if remembered := memory.recall(facts) if memory is not None else None:
        return PathChoice("gguf", "auto", f"this daemon refused an adapter for {facts.base} before: {remembered}",
                          remembered=True)
    if ignored := facts.template_ignored():
        return PathChoice("gguf", "auto", ignored)
    if doubt := facts.adapter_doubt():
        return PathChoice("adapter", "auto", f"{doubt}: the adapter is tried first, the gguf path if it is refused")
    return PathChoice("adapter", "auto", f"Ollama {facts.version} creates and loads adapter models for {facts.base}")


def is_adapter_refusal(message: str) -> bool:
    """Whether an Ollama error is the daemon refusing a LoRA adapter (at create or when it loads the model)."""
    # Only a refusal of adapters as such: an adapter that does not fit its base ("failed to load LoRA adapter")
    # is a broken candidate, and merging it would hide that.
    text = message.lower()
    refused = any(p in text for p in ("not yet implemented", "not supported", "no longer supported", "unsupported"))
    return refused and ("lora" in text or "adapter" in text)

