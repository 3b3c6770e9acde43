"""The one typed training configuration: defaults, YAML/flag loading, and the settings we refuse up front.

Like TRL's ``SFTConfig``, a run is described by one object that is written next to the adapter
(``config.yaml`` in the run directory) so the run can be reproduced.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Modules the GGUF LoRA format (and therefore Ollama) cannot carry an adapter for.
EMBEDDING_OR_HEAD = ("embed_tokens", "lm_head", "wte", "wpe", "embed_out", "word_embeddings", "output")

DEFAULT_PROBES = (
    "Hello! Who are you?",
    "What can you help me with?",
    "Explain in one sentence what you know best.",
)


class TrainingRefused(ValueError):
    """A setting or input the trainer will not run with; the message is one clear line for the user."""


class TrainConfig(BaseModel):
    """Hyper-parameters and run options. ``None`` means "choose automatically" where noted."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # LoRA (practitioners' defaults: r 16, alpha 2r, light dropout, every linear projection).
    lora_r: int = Field(default=16, ge=1)
    # A float here so that 16.5 is refused with our own message rather than silently cast.
    lora_alpha: float = Field(default=32, gt=0)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: list[str] = Field(default_factory=list)
    qlora: bool = False

    # Optimisation.
    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.05, ge=0, le=0.5)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, ge=1, description="Per-device examples per micro-batch.")
    grad_accum: int = Field(default=1, ge=1)
    max_length: int = Field(default=1024, ge=8, description="Tokens per example; longer ones are truncated.")
    epochs: int | None = Field(default=None, ge=1, description="None: chosen from the dataset size.")
    max_steps: int | None = Field(default=None, ge=1, description="Overrides epochs when set.")
    seed: int = 42
    # How examples are batched. "auto": padding-free on CPU and CUDA (measured fastest, see bench/bench_train.py).
    batching: Literal["auto", "padding_free", "packing", "padded"] = "auto"
    gradient_checkpointing: bool | None = Field(default=None, description="None: on for CUDA bases over 1B params.")
    # Tiny models on a busy CPU run faster on one thread (measured 2x under contention); None: torch's default.
    cpu_threads: int | None = Field(default=None, ge=1)

    # Evaluation, checkpoints, early stopping.
    eval_steps: int | None = Field(default=None, ge=1, description="None: evaluate (and checkpoint) each epoch.")
    early_stopping_patience: int | None = Field(default=None, ge=1, description="Evaluations without improvement.")
    early_stopping_threshold: float = Field(default=0.0, ge=0)
    load_best_at_end: bool = True
    save_total_limit: int = Field(default=2, ge=1)
    eval_generate: int = Field(default=32, ge=0, description="Eval prompts answered and scored (ROUGE-L, EM).")
    max_new_tokens: int = Field(default=96, ge=1)

    # Chat format: must match what the serving side renders.
    chat_template: str | None = Field(default=None, description="Jinja text or a path to a .jinja file.")
    system_prompt: str | None = Field(
        default=None, description="Added to conversations without one (serving must send the same system prompt)."
    )
    probes: list[str] = Field(default_factory=lambda: list(DEFAULT_PROBES))
    probe_eval_samples: int = Field(default=3, ge=0, description="Eval prompts added to the probes.")

    def refusals(self, cuda: bool) -> list[str]:
        """Every reason this configuration cannot be trained and served through GGUF/Ollama (empty: fine)."""
        problems = []
        if self.use_dora:
            problems.append("DoRA is refused: its magnitude vectors have no GGUF LoRA representation, Ollama could "
                            "not serve the adapter")
        if self.use_rslora:
            problems.append("rsLoRA is refused: llama.cpp scales adapters by alpha/r, not alpha/sqrt(r), so the "
                            "served model would differ from the trained one")
        if self.modules_to_save:
            problems.append(f"modules_to_save ({', '.join(self.modules_to_save)}) is refused: fully trained modules "
                            "cannot be carried by a GGUF LoRA adapter")
        targets = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        bad = [t for t in targets if t.split(".")[-1] in EMBEDDING_OR_HEAD]
        if bad:
            problems.append(f"target_modules {', '.join(bad)} refused: embedding and lm_head adapters cannot be "
                            "converted to a GGUF LoRA adapter; target the linear projections (default all-linear)")
        if not float(self.lora_alpha).is_integer():
            problems.append(f"lora_alpha {self.lora_alpha:g} is refused: GGUF stores the LoRA alpha as an integer; "
                            "use a whole number such as 32")
        if self.qlora and not cuda:
            problems.append("QLoRA needs a CUDA GPU (bitsandbytes 4-bit); none is available here, train plain LoRA "
                            "on this machine")
        return problems

    def check(self, cuda: bool) -> None:
        """Raise TrainingRefused listing every refusal, one line each."""
        problems = self.refusals(cuda)
        if problems:
            raise TrainingRefused("\n".join(problems))

    def resolved_epochs(self, n_train: int) -> int:
        """Epochs to run: the configured number, or more passes for small datasets (a few hundred steps' worth)."""
        if self.epochs is not None:
            return self.epochs
        if n_train < 200:
            return 5
        if n_train < 1000:
            return 3
        if n_train < 10_000:
            return 2
        return 1

    def steps_per_epoch(self, n_train: int) -> int:
        return max(1, math.ceil(n_train / (self.batch_size * self.grad_accum)))

    def template_text(self) -> str | None:
        """The configured chat template's Jinja text (read from the file when a path is given)."""
        if self.chat_template is None:
            return None
        if "{" not in self.chat_template:
            path = Path(self.chat_template).expanduser()
            if not path.is_file():
                raise TrainingRefused(f"chat_template {self.chat_template!r} is neither Jinja text nor a readable file")
            return path.read_text(encoding="utf-8")
        return self.chat_template

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) then flag overrides (``None`` values ignored); every problem in one clear error."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainingRefused(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise TrainingRefused(f"config file {path} is not valid YAML: {exc}".replace("\n", " ")) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TrainingRefused(f"config file {path} must be a mapping of setting: value")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        where = f" in {path}" if path is not None else ""
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "config"
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown setting {name!r}{where}")
            else:
                lines.append(f"setting {name}{where}: {err['msg']} (got {err.get('input')!r})")
        raise TrainingRefused("\n".join(lines)) from None
