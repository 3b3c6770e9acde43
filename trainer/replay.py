"""Replay: the base's own answers to general prompts, mixed into each retrain to keep general ability.

A LoRA fine-tune on a few dozen pairs drifts: the learning rate that makes new facts stick also pulls every
other answer toward the pairs' style (measured on SmolLM2-135M-Instruct: without replay, the run that learned
two thirds of the facts also answered "17 × 3 equals 50"). Practitioners counter it by mixing general data into
the fine-tune (LLaMA-Factory's dataset mixing, "rehearsal"). With no general dataset at hand, the base itself is
the source: before training it answers a fixed general prompt set (greedy, as it would), and those
(prompt, answer) pairs train beside the experts' pairs: the cheapest way to say "and keep answering the rest as
you did". The set is disjoint from the retention set (trainer/retention.py) the gate measures, so the measurement
sees forgetting on prompts that were never replayed.
"""

from __future__ import annotations

import math
from typing import Any

from data.conversation import Conversation
from data.general_prompts import REPLAY_FILE, GeneralPrompts, PromptSetError, load_general_prompts
from trainer.config import TrainConfig, TrainingRefused
from trainer.evaluate import answer_questions
from trainer.prepare import ChatFormat


def replay_prompt_set(cfg: TrainConfig) -> GeneralPrompts | None:
    """The configured replay set (None: replay off); TrainingRefused when it cannot be read."""
    if not cfg.replay_ratio:
        return None
    try:
        return load_general_prompts(cfg.replay_prompts_file or REPLAY_FILE)
    except PromptSetError as exc:
        raise TrainingRefused(str(exc)) from None


def replay_count(cfg: TrainConfig, n_train: int, available: int) -> int:
    """How many replayed answers train beside ``n_train`` taught examples (at most the set's size)."""
    return min(available, math.ceil(cfg.replay_ratio * n_train))


def base_answers(model: Any, fmt: ChatFormat, prompts: GeneralPrompts, count: int,
                 max_new_tokens: int) -> dict[str, Any]:
    """The base's greedy answers to ``count`` prompts spread over the set (call with the adapter disabled).

    Kept in the run folder, so a resumed run replays the very same answers."""
    chosen = list(prompts.spread(count))
    answers = answer_questions(model, fmt, chosen, max_new_tokens)
    return {"set": prompts.label, "sha256": prompts.sha256, "prompts": chosen, "answers": answers,
            "max_new_tokens": max_new_tokens}


def conversations(replayed: dict[str, Any], tokenizer: Any) -> list[Conversation]:
    """The replayed (prompt, answer) pairs that finished within ``max_new_tokens``: a cut answer, trained with its
    end-of-turn token, would teach the model to stop mid-sentence."""
    limit = int(replayed["max_new_tokens"]) - 1
    return [Conversation.qa(p, a) for p, a in zip(replayed["prompts"], replayed["answers"], strict=True)
            if a.strip() and len(tokenizer(a, add_special_tokens=False)["input_ids"]) < limit]
