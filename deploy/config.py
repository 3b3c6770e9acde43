"""What a deploy is given: the ``deploy:`` settings and :class:`DeployConfig`, the whole of one deploy's configuration.

:class:`DeploySettings` is how a version is registered, judged and kept, each default defined here once: it is the
bot's ``deploy:`` settings group (bot/settings.py ``Settings.deploy``), and :class:`DeployConfig` extends it with
the model it applies to, for ``loraloop deploy run`` and for a retrain job (worker/job.py ``JobSpec``), which
carries it as JSON. Light on purpose (pydantic, the option checks): the bot's settings import it without the gate
or an HTTP client.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from deploy.options import SERVE_OPTIONS, check_options
from deploy.registration import quantize_type
from trainer.config import DEFAULT_PROBES  # the trainer's probes: same questions in both tables

# Fewer eval prompts than this and the score comparison is not judged: on SmolLM2-135M a 3-prompt eval split ranked
# the run that had learned the fewest facts first. Held-out rewordings (tag ``holdout``) raise the count.
MIN_EVAL = 8
# The gate's decoding (DeployConfig.gate_options): deterministic and short.
GATE_OPTIONS: dict[str, Any] = {"temperature": 0.0, "seed": 0, "num_predict": 128}


class DeploySettings(BaseModel):
    """How a version is registered, judged and kept: the ``deploy:`` settings (``LORALOOP_DEPLOY__<NAME>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # auto: the adapter path where the daemon may create and load adapter models for the base, else (or when it
    # refuses one) gguf (see deploy/registration.py); adapter / gguf / merged: that path only, failing with the
    # reason where it cannot work.
    mode: Literal["auto", "adapter", "gguf", "merged"] = Field(
        default="auto", description="auto: adapter where the Ollama daemon may serve one for the base, gguf where it "
                                    "cannot or refuses (remembered); adapter: a GGUF LoRA on the clean base; gguf: "
                                    "the merged model as one GGUF file made with llama.cpp; merged: merged "
                                    "safetensors that Ollama converts (removed in Ollama 0.34.1).")
    quantize: str | None = Field(
        default=None, description="gguf and merged paths: q4_K_M, q4_K_S, q8_0, f16, f32 or bf16 (gguf: quantized "
                                  "by llama.cpp on the worker; merged: by Ollama; the adapter path ignores it); "
                                  "unset: outtype")
    outtype: Literal["f16", "f32"] = Field(
        default="f16", description="The adapter GGUF's type, and the merged model's when it is not quantized.")
    gate_margin: float = Field(default=0.02, ge=0, description="allowed key-fact recall drop vs the active model")
    eval_limit: int = Field(default=32, ge=0, description="eval prompts answered by each model in the gate")
    min_eval: int = Field(
        default=MIN_EVAL, ge=1, description="Fewer eval prompts than this and the gate shows the scores without "
                                            "comparing them (a handful of questions cannot tell two models apart).")
    # The gate's other dimensions (deploy/gate.py; README "What the gate checks"). Retention: set on
    # SmolLM2-135M-Instruct (its own answers at 1.00 nats/token): runs that learned the taught facts with replay rose
    # 0.26-0.39, the same without replay 0.71, over-trained ones 1.5-4.0; tiny random test models rise 0.05-0.20
    # normally. Another base family: re-measure with bench/bench_quality.py.
    max_retention_drop: float = Field(
        default=0.4, ge=0, description="Rejects a candidate whose NLL of the base's answers to general prompts rose "
                                       "by more than this (nats/token): general ability lost.")
    # Paraphrases and consistency cost extra chats per deploy.
    paraphrases: int = Field(
        default=4, ge=0, description="Eval questions reworded by the base and answered again (0: off); a large "
                                     "drop on the rewording flags over-fitting.")
    consistency_n: int = Field(
        default=3, ge=0, description="Answers per probe at the served sampling options, compared pairwise "
                                     "(below 2: off).")
    keep_versions: int = Field(
        default=3, ge=1, description="fine-tuned tags kept in Ollama (besides the active and rollback target)")

    @field_validator("quantize")
    @classmethod
    def _ollama_quantize_type(cls, value: str | None) -> str | None:
        # Ollama refuses any other type only when the merged model is created (at 3 a.m.): refuse it here.
        return quantize_type(value) if value else None


class DeployConfig(DeploySettings):
    """One deploy's whole configuration: the ``deploy:`` settings plus the model they apply to (bot/settings.py
    ``Settings.deploy_config``). It travels inside a retrain job (worker/job.py JobSpec), where pydantic validates
    it from JSON and writes it back, unknown fields refused."""

    model_name: str
    ollama_base: str  # the clean base tag in Ollama, e.g. qwen2.5:0.5b-instruct
    probes: tuple[str, ...] = DEFAULT_PROBES
    # The gate's decoding, sent with each of its requests and never written into a model: deterministic and
    # short, so that two models are compared on the same footing run after run.
    gate_options: dict[str, Any] = Field(default_factory=lambda: dict(GATE_OPTIONS))
    # What users get: written into every fine-tune as its PARAMETERs (with the stop tokens), and sent with each
    # chat while the bot answers with the base, whose own parameters are not ours (see bot/chat.py).
    serve_options: dict[str, Any] = Field(default_factory=lambda: dict(SERVE_OPTIONS))
    # The system prompt the bot sends with every chat (None: it sends none). It must be the one training used,
    # else the served prompt differs from the trained one for every conversation without its own system prompt.
    chat_system_prompt: str | None = None

    @field_validator("serve_options", "gate_options")
    @classmethod
    def _ollama_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        check_options(value, str(info.field_name))
        return value
