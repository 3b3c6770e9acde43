"""The evaluation gate: the candidate and the active model answer the same prompts through Ollama.

Eval prompts come from the snapshot's eval split (each conversation up to its last answer; the answer is
the reference) and are scored with :mod:`data.metrics` (ROUGE-L F1, exact match) — the trainer's
numbers for the same text. Probe questions have no reference: both answers go into the table for people
to read. The candidate passes when it is not worse than the model that answers now (the active version, or
the base tag before any was promoted) by more than ``margin`` mean ROUGE-L over the eval prompts.

Both models answer with the gate's own deterministic options, sent per request: what is compared is the
weights, never the sampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from data.conversation import Conversation
from data.metrics import score_answers
from deploy.ollama import OllamaClient

CHAT_ROLES = ("system", "user", "assistant")
DECIDED_BY = "rouge_l"
METRIC_NAMES = {"rouge_l": "ROUGE-L F1", "exact_match": "exact match"}


@dataclass(frozen=True, slots=True)
class EvalPrompt:
    """A chat to answer and, for snapshot eval examples, the reference answer."""

    messages: tuple[Mapping[str, str], ...]
    reference: str | None = None

    @property
    def question(self) -> str:
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


@dataclass(slots=True)
class GateResult:
    """The table stored on the model version and shown to people."""

    candidate: str
    active: str | None
    margin: float
    passed: bool
    reason: str
    scores: dict[str, dict[str, float | int]] = field(default_factory=dict)  # model role -> metrics
    rows: list[dict[str, Any]] = field(default_factory=list)  # per prompt: question, reference, answers, scores
    active_is_base: bool = False  # ``active`` is the base tag: no fine-tuned version answered yet
    decided_by: str = DECIDED_BY  # the metric the verdict compared ("" when nothing was compared)
    options: dict[str, Any] = field(default_factory=dict)  # the decoding options both models answered with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> GateResult:
        """A stored table (``to_dict()``), tolerating ones written before a field existed."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in stored.items() if k in names})

    def table(self) -> str:
        """A small plain-text table of the scores and which metric decided."""
        lines = [f"{'model':<10} {'tag':<32} {'ROUGE-L':>8} {'EM':>6} {'n':>4}"]
        for role, tag in (("candidate", self.candidate), ("active", self.active)):
            if tag is None or role not in self.scores:
                continue
            s = self.scores[role]
            label = "base" if role == "active" and self.active_is_base else role
            lines.append(f"{label:<10} {tag:<32} {s['rouge_l']:>8.3f} {s['exact_match']:>6.3f} {s['count']:>4}")
        if self.decided_by:
            lines.append(f"decided by mean {METRIC_NAMES.get(self.decided_by, self.decided_by)} over the eval "
                         f"prompts, margin {self.margin:g}")
        lines.append(("PASS" if self.passed else "FAIL") + f": {self.reason}")
        return "\n".join(lines)

    def details(self) -> str:
        """Every prompt: question, reference, both answers and their ROUGE-L (the file behind the table)."""
        other = "base" if self.active_is_base else "active"
        out = [self.table(), ""]
        for i, row in enumerate(self.rows, 1):
            out.append(f"--- {i}. {row.get('kind', 'eval')} ---")
            out.append(f"question:  {row.get('question', '')}")
            if row.get("reference") is not None:
                out.append(f"reference: {row['reference']}")
            for role, label in (("candidate", "candidate"), ("active", other)):
                if role in row:
                    score = row.get(f"{role}_rouge_l")
                    out.append(f"{label}{'' if score is None else f' (ROUGE-L {score:.3f})'}: {row[role]}")
            out.append("")
        return "\n".join(out)


def eval_prompts(conversations: Sequence[Conversation], limit: int) -> list[EvalPrompt]:
    """Turn eval conversations into (chat up to the last answer, that answer); tool chats are skipped."""
    prompts: list[EvalPrompt] = []
    for conv in conversations:
        msgs = [m.to_dict() for m in conv.messages]
        if any(m["role"] not in CHAT_ROLES for m in msgs):
            continue
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            continue
        prompts.append(EvalPrompt(tuple(msgs[:last]), msgs[last]["content"]))
        if len(prompts) >= limit:
            break
    return prompts


def probe_prompts(questions: Sequence[str]) -> list[EvalPrompt]:
    return [EvalPrompt(({"role": "user", "content": q},)) for q in questions]


async def answer_all(client: OllamaClient, tag: str, prompts: Sequence[EvalPrompt],
                     options: Mapping[str, Any]) -> list[str]:
    """Answers in prompt order (one request at a time: Ollama serialises per model anyway)."""
    return [await client.chat(tag, list(p.messages), options) for p in prompts]


async def run_gate(
    client: OllamaClient,
    candidate: str,
    active: str | None,
    prompts: Sequence[EvalPrompt],
    probes: Sequence[EvalPrompt],
    margin: float,
    options: Mapping[str, Any],
    *,
    opponent_is_base: bool = False,
) -> GateResult:
    """Answer everything with both models, score, and decide (``active`` None: nothing to compare with)."""
    tags = {"candidate": candidate} | ({"active": active} if active else {})
    answers = {role: await answer_all(client, tag, [*prompts, *probes], options) for role, tag in tags.items()}
    refs = [p.reference or "" for p in prompts]
    scores = {role: score_answers(a[: len(prompts)], refs).to_dict() for role, a in answers.items()}
    rows = []
    for i, p in enumerate([*prompts, *probes]):
        row: dict[str, Any] = {"kind": "eval" if i < len(prompts) else "probe", "question": p.question,
                               "reference": p.reference}
        for role in tags:
            row[role] = answers[role][i]
        if p.reference is not None:
            for role in tags:
                row[f"{role}_rouge_l"] = round(score_answers([answers[role][i]], [p.reference]).rouge_l, 4)
        rows.append(row)
    other = f"base {active}" if opponent_is_base else "active"
    decided_by = DECIDED_BY
    if active is None:
        passed, reason, decided_by = True, "no active model to compare with", ""
    elif not prompts:
        passed, reason, decided_by = True, "no eval prompts in the snapshot; nothing to compare on", ""
    else:
        cand, act = scores["candidate"][DECIDED_BY], scores["active"][DECIDED_BY]
        passed = cand >= act - margin
        reason = f"candidate ROUGE-L {cand:.3f} worse than {other} {act:.3f} by more than margin {margin:g}"
        if passed:
            reason = f"candidate ROUGE-L {cand:.3f} vs {other} {act:.3f} (margin {margin:g})"
    return GateResult(candidate, active, margin, passed, reason, scores, rows, active_is_base=opponent_is_base,
                      decided_by=decided_by, options=dict(options))
