"""The optional preference stage after SFT: TRL's DPOTrainer continues the SFT adapter on preference records.

Reference model: the SFT model itself. The recipe hands DPOTrainer the PeftModel whose "default" adapter SFT just
trained, without a ``peft_config``; TRL 1.16 then copies that adapter into a frozen "ref" adapter and computes the
reference log-probs with it (``use_adapter(model, "ref")``), never with the bare base. The stage's "before"
evaluation proves it: with policy = reference every reward is exactly 0 (a bare-base reference would not give 0
after SFT). The "ref" copy is deleted before saving, so one adapter comes out, as from SFT alone.

Scoring is the SFT stage's: the sequences are our ChatFormat's renderings (the serving template, system prompt and
end-of-turn token), tokenised by us, and only the last assistant turn — its text and end-of-turn token — is the
scored completion; the conversation before it is the prompt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# trl's lazy __init__ imports these without re-exporting them (no __all__, no "as"); they are its public names.
from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

from trainer.config import TrainConfig
from trainer.prepare import IGNORE, ChatFormat, UnrenderableConversation

if TYPE_CHECKING:
    from datasets import IterableDataset
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

log = logging.getLogger("loraloop.trainer.dpo")

# transformers 5.2x renamed gradient_checkpointing (see trainer.recipe): the field that exists.
_CHECKPOINTING_ARG = ("activation_checkpointing" if "activation_checkpointing" in DPOConfig.__dataclass_fields__
                      else "gradient_checkpointing")


@dataclass
class PreparedPreferences:
    """Tokenised preference pairs of one split: prompt_ids / chosen_ids / rejected_ids (TRL's pre-tokenised shape)."""

    examples: list[dict[str, list[int]]] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0
    unrenderable: int = 0


def prepare_preferences(fmt: ChatFormat, prefs: Sequence[Any], max_length: int) -> PreparedPreferences:
    """Each pair as token ids: the shared prompt, then each side's last assistant span (answer + end-of-turn).

    Both sides are tokenised whole, as SFT's examples are; the prompt is their common prefix, cut at the start of
    the last assistant span, so the two completions are scored in exactly the same context.
    """
    out = PreparedPreferences()
    for pref in prefs:
        try:
            ids_c, labels_c = fmt.tokenize(pref.chosen_conversation())
            ids_r, labels_r = fmt.tokenize(pref.rejected_conversation())
        except UnrenderableConversation:
            out.unrenderable += 1
            continue
        span_c, span_r = _last_span(labels_c), _last_span(labels_r)
        if span_c is None or span_r is None:
            out.dropped += 1
            continue
        shared = 0
        limit = min(span_c[0], span_r[0])
        while shared < limit and ids_c[shared] == ids_r[shared]:
            shared += 1
        prompt, chosen, rejected = ids_c[:shared], ids_c[shared:span_c[1]], ids_r[shared:span_r[1]]
        if len(prompt) >= max_length:
            out.dropped += 1  # nothing of either answer would be left to score
            continue
        if len(prompt) + max(len(chosen), len(rejected)) > max_length:
            out.truncated += 1
            room = max_length - len(prompt)
            chosen, rejected = chosen[:room], rejected[:room]
        out.examples.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    return out


def _last_span(labels: list[int]) -> tuple[int, int] | None:
    """[start, end) of the last run of scored (non-IGNORE) tokens: the last assistant turn."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE:
        end -= 1
    if end == 0:
        return None
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return start, end


class _PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on datasets we tokenised ourselves (our ChatFormat: the serving template, assistant-only spans).

    TRL's own preparation would render with the tokenizer's template and find the completion by prefix matching;
    ours is what the SFT stage and the served model use, so the preparation step is skipped.
    """

    def _prepare_dataset(self, dataset: Dataset | IterableDataset,
                         processing_class: PreTrainedTokenizerBase | ProcessorMixin, args: DPOConfig,
                         dataset_name: str) -> Dataset | IterableDataset:  # noqa: D401 (TRL's hook)
        return dataset


def dpo_config(cfg: TrainConfig, output_dir: Path, cuda: bool, n_eval: int) -> DPOConfig:
    d = cfg.dpo
    checkpointing: dict[str, Any] = {_CHECKPOINTING_ARG: False}  # whichever name this transformers has
    return DPOConfig(
        output_dir=str(output_dir),
        num_train_epochs=d.epochs,
        max_steps=d.max_steps or -1,
        per_device_train_batch_size=d.batch_size,
        # One batch for the held-out pairs when they fit: the reported accuracy is then exactly the share of pairs.
        per_device_eval_batch_size=max(1, min(n_eval, 32)),
        gradient_accumulation_steps=d.grad_accum,
        learning_rate=d.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.1,
        max_grad_norm=cfg.max_grad_norm,
        beta=d.beta,
        loss_type=[d.loss_type],
        label_smoothing=d.label_smoothing,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=cuda and not torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        **checkpointing,
        precompute_ref_log_probs=False,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def run_dpo(model: Any, fmt: ChatFormat, snapshot: Any, cfg: TrainConfig, out: Path, cuda: bool,
            progress: Any = None) -> dict[str, Any]:
    """The DPO stage on ``model`` (the SFT PeftModel, changed in place); returns metrics.json's ``dpo`` entry.

    Skipped — ``{"ran": False, "reason": …}`` — when fewer than ``dpo.min_pairs`` approved preference records are
    in the snapshot, or none of them can be rendered.
    """
    d = cfg.dpo
    prefs = snapshot.preferences
    available = len(prefs["train"]) + len(prefs["eval"])
    if available < d.min_pairs:
        return {"ran": False, "reason": f"{available} approved preference records in the snapshot, fewer than "
                                        f"dpo.min_pairs ({d.min_pairs})", "pairs": {"available": available}}
    train = prepare_preferences(fmt, prefs["train"], cfg.max_length)
    held_out = prepare_preferences(fmt, prefs["eval"], cfg.max_length)
    if not train.examples:
        return {"ran": False, "reason": "no preference record of the train split can be rendered within "
                                        f"max_length {cfg.max_length}", "pairs": {"available": available}}
    if progress is not None:
        progress.phase("dpo", f"preference training on {len(train.examples)} pairs (β {d.beta:g}), "
                              f"{len(held_out.examples)} held out")
    has_eval = bool(held_out.examples)
    trainer = _PretokenizedDPOTrainer(
        model=model, ref_model=None, args=dpo_config(cfg, out / "dpo-checkpoints", cuda, len(held_out.examples)),
        train_dataset=Dataset.from_list(train.examples),
        eval_dataset=Dataset.from_list(held_out.examples) if has_eval else None,
        processing_class=fmt.tokenizer, callbacks=[progress] if progress is not None else None,
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout (reserved for progress JSON)
    trainer.remove_callback(ProgressCallback)
    reference = "sft-adapter" if "ref" in model.peft_config else "base"
    if reference != "sft-adapter":  # TRL did not copy the SFT adapter: the reference would be the bare base
        raise RuntimeError("DPO: TRL did not set the SFT adapter up as the reference model")
    before = _held_out(trainer) if has_eval else {}
    result = trainer.train()
    history = list(trainer.state.log_history)
    after = _held_out(trainer) if has_eval else {}
    # One adapter comes out, as from SFT: drop the frozen reference copy, keep training's "default" active.
    model.delete_adapter("ref")
    model.set_adapter("default")
    with contextlib.suppress(OSError):  # nothing is checkpointed (save_strategy "no"): no empty folder left
        (out / "dpo-checkpoints").rmdir()
    curve = [{"step": h["step"], "loss": h["loss"], "reward_accuracy": h.get("rewards/accuracies"),
              "reward_margin": h.get("rewards/margins")} for h in history if "loss" in h]
    log.info("DPO: %d steps, held-out reward accuracy %s → %s", trainer.state.global_step,
             before.get("reward_accuracy"), after.get("reward_accuracy"))
    return {
        "ran": True,
        "reference": "the SFT model (a frozen copy of the SFT adapter)",
        "beta": d.beta,
        "loss_type": d.loss_type,
        "learning_rate": d.learning_rate,
        "epochs": d.epochs,
        "steps": trainer.state.global_step,
        "pairs": {"available": available, "train": len(train.examples), "eval": len(held_out.examples),
                  "truncated": train.truncated + held_out.truncated, "dropped": train.dropped + held_out.dropped,
                  "unrenderable": train.unrenderable + held_out.unrenderable},
        "train_loss": result.metrics.get("train_loss"),
        "train_runtime_s": round(result.metrics.get("train_runtime") or 0.0, 3),
        "before": before,
        "after": after,
        "train_curve": curve,
    }


def _held_out(trainer: DPOTrainer) -> dict[str, float | None]:
    """DPO loss, reward accuracy and margin, and the chosen-minus-rejected log-probability margin on held-out pairs.

    Rewards are β·(log π(y|x) − log π_ref(y|x)); accuracy is the share of pairs whose chosen reward is higher.
    """
    m = trainer.evaluate()
    chosen, rejected = m.get("eval_logps/chosen"), m.get("eval_logps/rejected")
    return {"loss": m.get("eval_loss"), "reward_accuracy": m.get("eval_rewards/accuracies"),
            "reward_margin": m.get("eval_rewards/margins"),
            "logp_chosen": chosen, "logp_rejected": rejected,
            "logp_margin": chosen - rejected if chosen is not None and rejected is not None else None}
