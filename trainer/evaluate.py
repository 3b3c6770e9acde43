"""Generated answers for eval prompts and probe questions, scored with key-fact recall, ROUGE-L and exact match."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from data.conversation import Conversation
from data.metrics import exact_match, fact_recall, rouge_l, score_answers
from trainer.prepare import ChatFormat


@dataclass(frozen=True, slots=True)
class Answer:
    prompt: str
    reference: str | None
    answer: str


@torch.no_grad()
def generate(model: Any, fmt: ChatFormat, prompts: Sequence[list[int]], max_new_tokens: int,
             batch_size: int = 8) -> list[str]:
    """Greedy answers for tokenised serving prompts (left-padded batches, stop at any end-of-turn token)."""
    tokenizer = fmt.tokenizer
    stop_ids = [i for i in tokenizer.convert_tokens_to_ids(list(fmt.end_of_turn)) if i is not None]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    for b in range(0, len(prompts), batch_size):
        batch = prompts[b:b + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, use_cache=True, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, width:]:
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    model.train(was_training)
    return answers


def eval_prompts(fmt: ChatFormat, conversations: Sequence[Conversation]) -> list[tuple[str, list[int], str]]:
    """(last user message, serving prompt ids, reference answer) for each eval conversation."""
    rows = []
    for c in conversations:
        question = next((m.content for m in reversed(c.messages[:-1]) if m.role == "user"), "")
        rows.append((question, fmt.encode_prompt(c), c.messages[-1].content))
    return rows


def question_prompt(fmt: ChatFormat, question: str) -> list[int]:
    """Serving prompt ids for a single user question (with the configured system prompt)."""
    return fmt.encode_prompt(Conversation.qa(question, ""))


def answer_eval(model: Any, fmt: ChatFormat, conversations: Sequence[Conversation], max_new_tokens: int,
                batch_size: int = 8) -> list[Answer]:
    rows = eval_prompts(fmt, conversations)
    texts = generate(model, fmt, [r[1] for r in rows], max_new_tokens, batch_size)
    return [Answer(q, ref, a) for (q, _, ref), a in zip(rows, texts, strict=True)]


def answer_questions(model: Any, fmt: ChatFormat, questions: Sequence[str], max_new_tokens: int,
                     batch_size: int = 8) -> list[str]:
    return generate(model, fmt, [question_prompt(fmt, q) for q in questions], max_new_tokens, batch_size)


def answer_table(before: Sequence[Answer], after: Sequence[Answer]
                 ) -> tuple[dict[str, dict[str, float | int]], list[dict[str, Any]]]:
    """Scores before/after and the per-prompt table (prompt, reference, both answers, their ROUGE-L)."""
    refs = [a.reference or "" for a in after]
    questions = [a.prompt for a in after]
    scores = {
        "before": score_answers([a.answer for a in before], refs, questions).to_dict(),
        "after": score_answers([a.answer for a in after], refs, questions).to_dict(),
    }
    table = [
        {"prompt": a.prompt, "reference": a.reference, "before": b.answer, "after": a.answer,
         "facts_before": round(fact_recall(b.answer, a.reference or "", a.prompt), 4),
         "facts_after": round(fact_recall(a.answer, a.reference or "", a.prompt), 4),
         "rouge_l_before": round(rouge_l(b.answer, a.reference or ""), 4),
         "rouge_l_after": round(rouge_l(a.answer, a.reference or ""), 4),
         "exact_match_after": exact_match(a.answer, a.reference or "")}
        for b, a in zip(before, after, strict=True)
    ]
    return scores, table
