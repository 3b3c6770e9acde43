"""Retention: how much of its general ability the model keeps through training.

A fixed, versioned set of general prompts (:mod:`data.general_prompts`: knowledge, writing, reasoning and plain
instructions, in English and Chinese) is answered once by the base model itself, in the trainer, before
training: greedy, ``retention_max_new_tokens`` new tokens (the trainer runs on the GPU host, which has no
Ollama). The mean per-token negative log-likelihood of those base answers is then measured under the model
before and after training, with the same chat template and tokenisation as training (answer tokens and the
end-of-turn token, as training labels them). The increase is the number: how much less likely the trained model
finds what the base says to general questions. A fine-tune that memorises its pairs and forgets the rest
raises it by a lot; the gate rejects a candidate whose increase exceeds ``deploy.max_retention_drop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from data.conversation import Conversation
from data.general_prompts import GeneralPrompts, PromptSetError, load_general_prompts
from trainer.config import TrainConfig, TrainingRefused
from trainer.evaluate import answer_questions
from trainer.prepare import IGNORE, ChatFormat

MEANING = ("increase in mean per-token NLL (nats) of the base's own answers to general prompts; "
           "near 0: general ability kept, large: forgotten")


def general_prompt_set(cfg: TrainConfig) -> GeneralPrompts | None:
    """The configured prompt set (None: retention not measured); TrainingRefused when it cannot be read."""
    if not cfg.retention_prompts:
        return None
    try:
        return load_general_prompts(cfg.general_prompts_file, cfg.general_prompts)
    except PromptSetError as exc:
        raise TrainingRefused(str(exc)) from None


@torch.no_grad()
def answer_nll(model: Any, fmt: ChatFormat, prompts: Sequence[str], answers: Sequence[str],
               max_length: int = 1024, batch_size: int = 8) -> tuple[float, int]:
    """(mean per-token NLL, tokens scored) of ``answers`` to ``prompts`` under ``model``, labelled as training
    labels them (the answer and its end-of-turn token; the prompt and system prompt unscored)."""
    rows = [fmt.tokenize(Conversation.qa(p, a)) for p, a in zip(prompts, answers, strict=True)]
    rows = [(ids[:max_length], labels[:max_length]) for ids, labels in rows]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in range(0, len(rows), batch_size):
        batch = rows[b:b + batch_size]
        width = max(len(ids) for ids, _ in batch)
        pad = fmt.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad if pad is not None else 0, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (i, lab) in enumerate(batch):
            ids[row, :len(i)], labels[row, :len(lab)], mask[row, :len(i)] = (
                torch.tensor(i), torch.tensor(lab), 1)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        target = labels[:, 1:].to(device)
        picked = target != IGNORE  # only the scored positions go through the softmax (the vocabulary is large)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][picked], target[picked], reduction="sum")
        total += float(loss)
        count += int(picked.sum())
    model.train(was_training)
    return (total / count if count else 0.0), count


def measure_base(model: Any, fmt: ChatFormat, prompts: GeneralPrompts, count: int, max_new_tokens: int,
                 max_length: int = 1024) -> dict[str, Any]:
    """Before training (call with the adapter disabled): the base's greedy answers and their NLL under it.

    Kept in before.json, so a resumed run scores the very same answers after training."""
    chosen = list(prompts.spread(count))
    answers = answer_questions(model, fmt, chosen, max_new_tokens)
    nll, tokens = answer_nll(model, fmt, chosen, answers, max_length)
    return {"set": prompts.label, "sha256": prompts.sha256, "prompts": chosen, "base_answers": answers,
            "nll_before": round(nll, 4), "tokens": tokens, "max_new_tokens": max_new_tokens}


def measure_trained(model: Any, fmt: ChatFormat, before: dict[str, Any], samples: int,
                    max_length: int = 1024) -> dict[str, Any]:
    """After training: the same base answers' NLL under the trained model, and a few general answers before/after.

    Returns metrics.json's ``retention`` entry."""
    prompts, answers = before["prompts"], before["base_answers"]
    nll, tokens = answer_nll(model, fmt, prompts, answers, max_length)
    shown = [i * len(prompts) // samples for i in range(min(samples, len(prompts)))] if samples else []
    after = answer_questions(model, fmt, [prompts[i] for i in shown], before["max_new_tokens"]) if shown else []
    return {
        "set": before["set"], "sha256": before["sha256"], "prompts": len(prompts), "tokens": tokens,
        "answered_by": f"the base model, greedy, at most {before['max_new_tokens']} new tokens, before training",
        "nll_before": before["nll_before"], "nll_after": round(nll, 4),
        "increase": round(nll - before["nll_before"], 4), "meaning": MEANING,
        "samples": [{"prompt": prompts[i], "before": answers[i], "after": a} for i, a in zip(shown, after,
                                                                                               strict=True)],
    }
