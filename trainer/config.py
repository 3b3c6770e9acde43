"""The one typed training configuration: defaults, YAML/flag loading, and the settings we refuse up front.

Like TRL's ``SFTConfig``, a run is described by one object that is written next to the adapter
(``config.yaml`` in the run directory) so the run can be reproduced.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from data.errors import LoraloopError

# Modules the GGUF LoRA format (and therefore Ollama) cannot carry an adapter for.
EMBEDDING_OR_HEAD = ("embed_tokens", "lm_head", "wte", "wpe", "embed_out", "word_embeddings", "output")

# The bot's default system prompt (bot/settings.py reads it from here): a run whose data has none trains with it,
# so the model learns under the prompt it will be served with.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_PROBES = (
    "Hello! Who are you?",
    "What can you help me with?",
    "Explain in one sentence what you know best.",
)


class TrainingRefused(LoraloopError, ValueError):
    """A setting or input the trainer will not run with; the message is one clear line for the user."""


class TrainingInterrupted(LoraloopError):
    """The run was interrupted (Ctrl-C); ``checkpoint``: the one ``--resume`` continues from, None when none."""

    def __init__(self, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class DPOSettings(BaseModel):
    """The optional preference stage after SFT (trainer/dpo.py): TRL's DPOTrainer on the SFT adapter."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(default=False, description="Run the preference stage after SFT.")
    beta: float = Field(default=0.1, gt=0, description="How far the policy may move from the SFT model.")
    epochs: int = Field(default=1, ge=1, description="Epochs over the preference pairs.")
    max_steps: int | None = Field(default=None, ge=1, description="Overrides epochs when set.")
    min_pairs: int = Field(default=20, ge=1, description="Fewer approved preference records: the stage is skipped.")
    # LoRA moves a few weights: it needs a higher rate than full-model DPO (5e-7 … 5e-6).
    learning_rate: float = Field(default=5e-5, gt=0, description="Peak learning rate of the preference stage.")
    batch_size: int = Field(default=4, ge=1, description="Preference pairs per micro-batch (each is two sequences).")
    grad_accum: int = Field(default=1, ge=1, description="Gradient accumulation steps.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(default="sigmoid", description="TRL's DPO loss.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5, description="Share of preference labels taken as noise.")


class TrainConfig(BaseModel):
    """Hyper-parameters and run options. ``None`` means "choose automatically" where noted."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # LoRA (practitioners' defaults: r 16, alpha 2r, light dropout, every linear projection).
    lora_r: int = Field(default=16, ge=1, description="LoRA rank.")
    # A float here so that 16.5 is refused with our own message rather than silently cast.
    lora_alpha: float = Field(default=32, gt=0, description="LoRA alpha, a whole number (GGUF stores an integer).")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: str | list[str] = Field(
        default="all-linear", description="The modules given adapters: all-linear (every linear projection) or names.")
    use_dora: bool = Field(default=False, description="DoRA; refused: its magnitude vectors have no GGUF form.")
    use_rslora: bool = Field(default=False, description="rsLoRA; refused: llama.cpp scales adapters by alpha/r.")
    modules_to_save: list[str] = Field(
        default_factory=list, description="Modules trained in full; refused: a GGUF LoRA adapter cannot carry them.")
    qlora: bool = Field(default=False, description="4-bit NF4 base (QLoRA); needs a CUDA GPU.")

    # Optimisation. Measured on SmolLM2-135M-Instruct teaching 20 made-up facts (README "Learning that sticks"):
    # at 2e-4 (LLaMA-Factory's usual value for thousands of pairs) 40 steps taught none of them; 1e-3 over 8 epochs
    # of batches of 4, with replay, learned every trained question and 14 of 15 held-out rewordings.
    learning_rate: float = Field(default=1e-3, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after the warmup.")
    warmup_ratio: float = Field(default=0.05, ge=0, le=0.5, description="Share of the steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradients are clipped to this norm.")
    batch_size: int = Field(default=4, ge=1, description="Per-device examples per micro-batch.")
    grad_accum: int = Field(default=1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(default=1024, ge=8, description="Tokens per example; longer ones are truncated.")
    epochs: int | None = Field(default=None, ge=1, description="Epochs; None: chosen from the dataset size.")
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps; overrides epochs when set.")
    seed: int = Field(default=42, description="Random seed.")
    batching: Literal["auto", "padding_free", "packing", "padded"] = Field(
        default="auto", description="How examples are batched; auto: padding-free on CPU and CUDA (measured fastest, "
                                    "see bench/bench_train.py).")
    gradient_checkpointing: bool | None = Field(
        default=None, description="Gradient checkpointing; None: on for CUDA bases over 1B params.")
    # torch's default (every core) oversubscribes a busy machine: 2 threads ran 8x slower than 1 on a loaded 2-core
    # host.
    cpu_threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads; None: the cores not already busy (at least one).")

    # Evaluation, checkpoints, early stopping.
    eval_steps: int | None = Field(
        default=None, ge=1, description="Evaluate (and checkpoint) every N steps; None: each epoch.")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Stop after N evaluations without improvement; None: never early.")
    early_stopping_threshold: float = Field(
        default=0.0, ge=0, description="How much the eval loss must fall to count as an improvement.")
    load_best_at_end: bool = Field(default=True, description="End with the checkpoint of the best eval loss.")
    save_total_limit: int = Field(default=2, ge=1, description="Checkpoints kept.")
    eval_generate: int = Field(default=32, ge=0, description="Eval prompts answered and scored (ROUGE-L, EM).")
    max_new_tokens: int = Field(default=96, ge=1, description="Length of the eval and probe answers.")

    # Chat format: must match what the serving side renders.
    chat_template: str | None = Field(
        default=None, description="Jinja text or a path to a .jinja file; None: the base's own template.")
    system_prompt: str | None = Field(
        default=None, description="Added to conversations without one (serving must send the same system prompt).")
    probes: list[str] = Field(default_factory=lambda: list(DEFAULT_PROBES),
                              description="Questions answered before and after training (probes.json).")
    probe_eval_samples: int = Field(default=3, ge=0, description="Eval prompts added to the probes.")

    # Retention (trainer/retention.py): the base's own answers to general prompts, scored before and after.
    general_prompts_file: str | None = Field(
        default=None, description="JSON prompt set on this host; None: the shipped data/general_prompts set.")
    general_prompts: list[str] | None = Field(
        default=None, description="The prompts themselves (overrides the file; how a bot's set reaches a worker).")
    retention_prompts: int = Field(
        default=50, ge=0, description="General prompts measured, spread over the set; 0: retention not measured.")
    retention_max_new_tokens: int = Field(default=48, ge=1, description="Length of the base's general answers.")
    retention_samples: int = Field(default=3, ge=0, description="General answers shown before/after training.")

    # Replay (trainer/replay.py): the base's own answers to general prompts mixed into training, so the fine-tune
    # keeps answering like the base outside its pairs (measured on SmolLM2-135M: README "Learning that sticks").
    replay_ratio: float = Field(
        default=1.0, ge=0, le=8, description="Replayed general answers per taught example (the base's own greedy "
                                             "answers to the replay prompt set, mixed into training); 0: off.")
    replay_prompts_file: str | None = Field(
        default=None, description="JSON prompt set for replay on this host; None: the shipped "
                                  "data/general_prompts/replay-v1.json (disjoint from the retention set).")
    replay_max_new_tokens: int = Field(default=64, ge=1, description="Length of the base's replayed answers.")

    # Preference learning after SFT (off unless enabled).
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="The preference stage after SFT (DPO).")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _all_linear_alone(cls, value: Any) -> Any:
        # PEFT knows the all-linear shorthand only as a string; a list of it alone (one --target-modules) means it.
        return "all-linear" if value == ["all-linear"] else value

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
                            "on this machine" + (" (the DPO stage too)" if self.dpo.enabled else ""))
        if self.dpo.enabled and self.batching == "packing":
            problems.append("dpo.enabled with batching: packing is refused: DPO scores each chosen and rejected "
                            "answer as a sequence of its own and cannot pack them; use batching auto")
        return problems

    def check(self, cuda: bool) -> None:
        """Raise TrainingRefused listing every refusal, one line each."""
        problems = self.refusals(cuda)
        if problems:
            raise TrainingRefused("\n".join(problems))

    def resolved_epochs(self, n_train: int) -> int:
        """Epochs to run: the configured number, or more passes for small datasets. A fact taught in two phrasings
        needs about eight passes to stick (README "Learning that sticks"); thousands of pairs need one or two."""
        if self.epochs is not None:
            return self.epochs
        if n_train < 100:
            return 8
        if n_train < 300:
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
        text: str = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
        return text


# LLaMA-Factory's names for our settings, with how a value is translated (None: as it is).
def _lf_target(value: Any) -> Any:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        return "all-linear" if parts == ["all"] else parts
    return value


def _lf_epochs(value: Any) -> Any:
    # LLaMA-Factory writes 3.0; a fraction of an epoch has no meaning here (use max_steps).
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _lf_quantization(value: Any) -> Any:
    if value in (None, 4, "4"):
        return value is not None
    raise TrainingRefused(f"quantization_bit {value!r} is refused: loraloop trains LoRA on a full-precision base or "
                          "QLoRA on a 4-bit one (quantization_bit: 4)")


LF_ALIASES: dict[str, tuple[str, Any]] = {
    "lora_rank": ("lora_r", None),
    "lora_target": ("target_modules", _lf_target),
    "cutoff_len": ("max_length", None),
    "num_train_epochs": ("epochs", _lf_epochs),
    "per_device_train_batch_size": ("batch_size", None),
    "gradient_accumulation_steps": ("grad_accum", None),
    "lr_scheduler_type": ("lr_scheduler", None),
    "quantization_bit": ("qlora", _lf_quantization),
    "additional_target": ("modules_to_save", _lf_target),
    "load_best_model_at_end": ("load_best_at_end", None),
    "early_stopping_steps": ("early_stopping_patience", None),
}
# LLaMA-Factory settings that mean nothing here, and what to do instead.
LF_IGNORED = {
    "stage": "loraloop runs supervised fine-tuning (sft)",
    "do_train": "training is what `loraloop train` does",
    "finetuning_type": "loraloop trains LoRA adapters",
    "eval_dataset": "the eval split comes from the data (LORALOOP_EVAL_FRACTION)",
    "val_size": "the eval split is LORALOOP_EVAL_FRACTION, chosen by content hash so it stays stable",
    "max_samples": "trim the dataset file instead",
    "template": "the base model's own chat template is used; set chat_template for another",
    "overwrite_output_dir": "use a new --out directory (or --resume)",
    "overwrite_cache": "nothing is cached between runs",
    "preprocessing_num_workers": "preparation runs in-process",
    "dataloader_num_workers": "loading runs in-process",
    "logging_steps": "every step is reported",
    "save_steps": "use eval_steps (each evaluation saves a checkpoint)",
    "plot_loss": "loss.png is always written",
    "save_only_model": "checkpoints keep the optimizer so --resume works",
    "report_to": "progress goes to stdout (--json-progress) and train.log",
    "bf16": "the precision follows the GPU",
    "fp16": "the precision follows the GPU",
    "pure_bf16": "the precision follows the GPU",
    "ddp_timeout": "one GPU per run",
    "deepspeed": "one GPU per run",
    "per_device_eval_batch_size": "evaluation uses batch_size",
    "eval_strategy": "use eval_steps (default: each epoch)",
    "evaluation_strategy": "use eval_steps (default: each epoch)",
    "save_strategy": "checkpoints follow eval_steps",
    "resume_from_checkpoint": "use --resume",
    "trust_remote_code": "remote code is never run",
    "flash_attn": "flash attention is used when installed",
    "enable_liger_kernel": "Liger kernels are used when installed",
    "enable_thinking": "the base family's reasoning convention is used",
    "do_eval": "evaluation always runs before and after training",
    "push_to_hub": "deploy with `loraloop deploy`",
}


# LLaMA-Factory's keys that name the run rather than a setting, as `llamafactory-cli train config.yaml` reads them:
# `loraloop train config.yaml` takes them as --base, --out and the data (the command line's own options win).
LF_RUN_KEYS = ("model_name_or_path", "output_dir", "dataset", "dataset_dir")


@dataclass(frozen=True)
class RunInputs:
    """What a LLaMA-Factory YAML names besides the settings: the base model, the run directory and the datasets."""

    base: str | None = None
    out: Path | None = None
    datasets: tuple[str, ...] = ()  # names in dataset_dir's dataset_info.json
    dataset_dir: Path = Path("data")  # LLaMA-Factory's default, relative to the working directory as there

    @property
    def dataset_info(self) -> Path:
        return self.dataset_dir / "dataset_info.json"


@dataclass(frozen=True)
class LoadedConfig:
    """A configuration, the run inputs its file named, and the notices its loading produced (LLaMA-Factory keys
    translated, ignored, or its defaults taken)."""

    config: TrainConfig
    notices: list[str] = field(default_factory=list)
    inputs: RunInputs = field(default_factory=RunInputs)


def _run_inputs(values: dict[str, Any], where: str) -> RunInputs:
    """The LLaMA-Factory run keys of a YAML file (removed from ``values``), checked."""
    found = {key: values.pop(key) for key in LF_RUN_KEYS if key in values}

    def text(key: str) -> str | None:
        value = found.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise TrainingRefused(f"{key}{where} must be a non-empty string (got {value!r})")
        return value.strip()

    datasets = found.get("dataset")
    if isinstance(datasets, str):  # LLaMA-Factory's comma-separated list
        datasets = [name.strip() for name in datasets.split(",") if name.strip()]
    if datasets is not None and (not isinstance(datasets, list) or not datasets
                                 or not all(isinstance(n, str) and n.strip() for n in datasets)):
        raise TrainingRefused(f"dataset{where} must name datasets: a comma-separated string or a list of names "
                              f"(got {found['dataset']!r})")
    out, dataset_dir = text("output_dir"), text("dataset_dir")
    return RunInputs(base=text("model_name_or_path"), out=Path(out).expanduser() if out else None,
                     datasets=tuple(n.strip() for n in datasets or ()),
                     dataset_dir=Path(dataset_dir).expanduser() if dataset_dir else RunInputs.dataset_dir)


def _lf_defaults(values: dict[str, Any], lf_keys: list[str], path: Path) -> str | None:
    """LLaMA-Factory's LoRA defaults set into ``values`` where the file and the command line leave them out (its
    lora_alpha is 2 × the rank, its lora_dropout 0); the notice saying which were taken, or None."""
    taken = []
    rank = values.get("lora_r", TrainConfig.model_fields["lora_r"].default)
    if values.get("lora_alpha") is None and isinstance(rank, int):  # a bad rank is refused by validation
        values["lora_alpha"] = 2 * rank
        taken.append(f"lora_alpha {2 * rank} (2 × lora_rank {rank})")
    if values.get("lora_dropout") is None:
        values["lora_dropout"] = 0.0
        taken.append("lora_dropout 0")
    if not taken:
        return None
    shown = ", ".join(lf_keys[:3]) + (", …" if len(lf_keys) > 3 else "")
    return (f"{path} is written in LLaMA-Factory's names ({shown}): its defaults taken, as LLaMA-Factory would "
            f"train it: {', '.join(taken)} (set them to choose others)")


def translate_lf_keys(values: dict[str, Any], where: str = "") -> tuple[dict[str, Any], list[str]]:
    """Our names for LLaMA-Factory's keys: one notice per translated key, one for all those ignored."""
    out: dict[str, Any] = {}
    notices: list[str] = []
    ignored: list[str] = []
    for key, value in values.items():
        if key in LF_ALIASES and LF_ALIASES[key][0] != key:
            ours, translate = LF_ALIASES[key]
            if ours in values:
                raise TrainingRefused(f"{key} and {ours} are the same setting{where}: keep one")
            new = translate(value) if translate is not None else value
            out[ours] = new
            shown = f"{ours}: {new!r}" if new != value else ours
            notices.append(f"{key}{where} is LLaMA-Factory's name: read as {shown}")
        elif key in LF_IGNORED:
            ignored.append(key)
        else:
            out[key] = value
    if ignored:
        notices.append(f"ignored{where}, no meaning here: "
                       + "; ".join(f"{key} ({LF_IGNORED[key]})" for key in ignored))
    return out, notices


def _closest(name: str) -> str:
    known = list(TrainConfig.model_fields) + list(LF_ALIASES) + list(LF_IGNORED) + list(LF_RUN_KEYS)
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) then flag overrides (``None`` values ignored; a nested setting's, such as ``dpo``'s,
    merged into the file's); every problem in one clear error."""
    return read_config(path, overrides).config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """': line L, column C: what is wrong', from PyYAML's error (whose own text names "<unicode string>")."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{at}: {' '.join(str(problem).split())}"


def _overridden(overrides: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Whether the setting at ``loc`` (a pydantic error's) came from a flag, not the file."""
    value: Any = overrides
    for part in loc:
        if not isinstance(value, dict):  # inside a list or value the flag gave whole
            break
        if value.get(part) is None:
            return False
        value = value[part]
    return bool(loc)


def read_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Like ``load_config``, with the notices to show and the run inputs the file names: LLaMA-Factory key names
    are read as ours, its run keys (``model_name_or_path``, ``output_dir``, ``dataset``) as ``inputs``, and a file
    written in its names gets its LoRA defaults where ours differ: the same file trains the same adapter as there
    (ours would be twice its scaling, with dropout)."""
    values: dict[str, Any] = {}
    notices: list[str] = []
    inputs = RunInputs()
    lf_keys: list[str] = []
    where = f" in {path}" if path is not None else ""
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainingRefused(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
            raise TrainingRefused(f"config file {path} cannot be read: {why}") from None
        except yaml.YAMLError as exc:
            raise TrainingRefused(f"config file {path} is not valid YAML{_yaml_problem(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TrainingRefused(f"config file {path} must be a mapping of setting: value")
        lf_keys = [key for key in loaded if key in LF_ALIASES or key in LF_IGNORED or key in LF_RUN_KEYS]
        inputs = _run_inputs(loaded, where)
        loaded, notices = translate_lf_keys(loaded, where)
        values.update(loaded)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            values[key] = value
    if path is not None and lf_keys and (notice := _lf_defaults(values, lf_keys, path)):
        notices.append(notice)
    try:
        return LoadedConfig(TrainConfig(**values), notices, inputs)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "config"
            origin = " from the command line" if _overridden(overrides or {}, err["loc"]) else where
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown setting {name!r}{origin}{_closest(name)}")
            else:
                lines.append(f"setting {name}{origin}: {err['msg']} (got {err.get('input')!r})")
        raise TrainingRefused("\n".join(lines)) from None
