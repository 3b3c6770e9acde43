"""The evaluation gate: the candidate and the active model answer the same prompts through Ollama.

Eval prompts come from the snapshot's eval split (each conversation up to its last answer; the answer is
the reference) and are scored with :mod:`data.metrics` (ROUGE-L F1, exact match) — the trainer's
numbers for the same text. Probe questions have no reference: both answers go into the table for people
to read. The candidate passes when it is not worse than the model that answers now (the active version, or
the base tag before any was promoted) by more than ``margin`` mean ROUGE-L over the eval prompts.

Both models answer with the gate's own deterministic options, sent per request: what is compared is the
weights, never the sampling.

Three more dimensions practitioners check on a fine-tune, each reported beside the score above:

- paraphrases: up to ``paraphrases`` eval questions are reworded by the paraphrasing model (the base tag, so the
  rewordings are the same for every version) with a fixed instruction and the deterministic options; both models
  answer the rewording and are scored against the same reference. A candidate whose reworded score falls more than
  ``OVERFIT_GAP`` below its score on the original wording is flagged over-fitted (it learned the wording, not the
  answer). Flagged, not rejected: a reworded question can legitimately ask something slightly different.
- consistency: each model answers every probe ``consistency_n`` times with the served (sampling) options; the mean
  pairwise ROUGE-L of those answers says how much its answer depends on the dice (1: always the same answer).
- retention: the trainer's measurement (trainer/retention.py, metrics.json ``retention``): how much less likely the
  candidate finds the base's own answers to general prompts. Above ``max_retention_drop`` the candidate is
  rejected: it learned its pairs and forgot how to answer anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

from data.conversation import Conversation
from data.metrics import rouge_l, score_answers
from deploy.ollama import OllamaClient

CHAT_ROLES = ("system", "user", "assistant")
DECIDED_BY = "rouge_l"
METRIC_NAMES = {"rouge_l": "ROUGE-L F1", "exact_match": "exact match"}
# The paraphrasing model's system prompt; the user message is the question alone. Fixed: a changed instruction
# changes every rewording, and with it the numbers versions are compared on.
PARAPHRASE_INSTRUCTION = ("Rewrite the user's question in different words with exactly the same meaning. "
                          "Reply with the rewritten question only: no answer, no quotes, no explanation.")
# A reworded score this far (absolute ROUGE-L) below the original-wording score flags the candidate over-fitted.
# The eval references are short, so a model that learned the answer loses a few words to a rewording, not a fifth.
OVERFIT_GAP = 0.2
MEANINGS = {
    "paraphrase": "the same eval questions reworded; far below the original wording: the wording was memorised",
    "consistency": "similarity of repeated answers at the served sampling (mean pairwise ROUGE-L); 1: always "
                   "the same, low: the dice decide",
    "retention": "how much less likely the base's answers to general questions became (nats/token); near 0: "
                 "general ability kept",
}


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
    # Reworded eval questions: count, paraphrased_by, per role {original, paraphrased}, overfitted (see module doc).
    paraphrase: dict[str, Any] = field(default_factory=dict)
    # Repeated probe answers at the served options: n, probes, options, per role the mean pairwise ROUGE-L.
    consistency: dict[str, Any] = field(default_factory=dict)
    # The trainer's retention record plus the limit it was judged against and whether it passed.
    retention: dict[str, Any] = field(default_factory=dict)
    # For information, never judged: the candidate on the same eval prompts with the expert answers the bot would
    # retrieve for it (bot/retrieval.py ``gate_with_retrieval``): scope, k, candidate scores, rows; or "error".
    with_retrieval: dict[str, Any] = field(default_factory=dict)

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
        lines += self._dimension_lines()
        if self.decided_by:
            lines.append(f"decided by mean {METRIC_NAMES.get(self.decided_by, self.decided_by)} over the eval "
                         f"prompts, margin {self.margin:g}" + (" and the retention limit" if self.retention else ""))
        lines.append(("PASS" if self.passed else "FAIL") + f": {self.reason}")
        lines += self.retrieval_lines()
        return "\n".join(lines)

    def retrieval_lines(self) -> list[str]:
        """The second table: the candidate's weights alone (what was judged) and with retrieval (information)."""
        info = self.with_retrieval
        if not info:
            return []
        head = ["", "with retrieval (for information; the verdict above judged the weights alone):"]
        if info.get("error") or info.get("skipped"):
            return [*head, f"  not measured: {info.get('error') or info.get('skipped')}"]
        lines = [*head, f"{'candidate':<22} {'ROUGE-L':>8} {'EM':>6} {'n':>4}"]
        for label, key in (("weights alone", "weights"), ("with expert answers", "candidate")):
            s = info.get(key)
            if s:
                lines.append(f"{label:<22} {s['rouge_l']:>8.3f} {s['exact_match']:>6.3f} {s['count']:>4}")
        lines.append(f"  {info.get('with_pairs', 0)} of {info.get('prompts', 0)} eval prompts got expert answers "
                     f"({info.get('pairs', 0)} distinct pairs; scope {info.get('scope')}, k {info.get('k')}, "
                     f"{info.get('search', 'lexical')}); the eval pairs themselves are never retrieved")
        return lines

    def _dimension_lines(self) -> list[str]:
        """One line per extra dimension that ran: its numbers, then what they mean."""
        other = "base" if self.active_is_base else "active"
        lines = []
        para = self.paraphrase
        if para.get("count"):
            parts = [f"{label} {para[role]['original']:.3f} → {para[role]['paraphrased']:.3f}"
                     for role, label in (("candidate", "candidate"), ("active", other)) if role in para]
            lines.append(f"reworded ({para['count']} eval questions, original → reworded ROUGE-L): "
                         + ", ".join(parts))
            lines.append(f"  {MEANINGS['paraphrase']}")
            if para.get("overfitted"):
                c = para["candidate"]
                lines.append(f"  OVER-FITTED? the candidate scores {c['original']:.3f} on the training wording but "
                             f"{c['paraphrased']:.3f} reworded (more than {para.get('gap', OVERFIT_GAP):g} lower)")
        cons = self.consistency
        if cons.get("n"):
            parts = [f"{label} {cons[role]:.3f}" for role, label in (("candidate", "candidate"), ("active", other))
                     if cons.get(role) is not None]
            lines.append(f"consistency ({cons['n']} answers to each of {cons['probes']} probes): " + ", ".join(parts))
            lines.append(f"  {MEANINGS['consistency']}")
        ret = self.retention
        if ret.get("increase") is not None:
            verdict = "within" if ret.get("passed") else "OVER"
            lines.append(f"retention ({ret.get('prompts')} general prompts, {ret.get('set')}): NLL "
                         f"{ret['nll_before']:.3f} → {ret['nll_after']:.3f}, {ret['increase']:+.3f} "
                         f"({verdict} the limit {ret.get('max_drop', 0):g})")
            lines.append(f"  {MEANINGS['retention']}")
        return lines

    def details(self) -> str:
        """Every prompt: question, reference, both answers and their ROUGE-L (the file behind the table)."""
        other = "base" if self.active_is_base else "active"
        out = [self.table(), ""]
        for i, row in enumerate(self.rows, 1):
            out.append(f"--- {i}. {row.get('kind', 'eval')} ---")
            if row.get("original") is not None:
                out.append(f"original:  {row['original']}")
            out.append(f"{'reworded' if row.get('original') is not None else 'question'}:  {row.get('question', '')}")
            if row.get("reference") is not None:
                out.append(f"reference: {row['reference']}")
            for role, label in (("candidate", "candidate"), ("active", other)):
                if role in row:
                    score = row.get(f"{role}_rouge_l")
                    out.append(f"{label}{'' if score is None else f' (ROUGE-L {score:.3f})'}: {row[role]}")
                samples = row.get(f"{role}_samples")
                if samples:
                    out.append(f"{label}, {len(samples)} sampled answers (consistency "
                               f"{row.get(f'{role}_consistency', 0):.3f}):")
                    out += [f"  - {s}" for s in samples]
            out.append("")
        for i, row in enumerate(self.with_retrieval.get("rows", []), 1):
            if row.get("pair_ids"):
                out += [f"--- {i}. eval with retrieval (pairs {', '.join(f'#{p}' for p in row['pair_ids'])}) ---",
                        f"question:  {row.get('question', '')}",
                        f"candidate (ROUGE-L {row.get('rouge_l', 0):.3f}): {row.get('answer', '')}", ""]
        ret = self.retention
        if ret.get("samples"):
            out.append("--- general prompts (retention): base answer, then the candidate's after training ---")
            for sample in ret["samples"]:
                out += [f"prompt: {sample.get('prompt')}", f"  base:      {sample.get('before')}",
                        f"  candidate: {sample.get('after')}"]
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
    paraphrases: int = 0,
    paraphraser: str | None = None,
    consistency_n: int = 0,
    sampling: Mapping[str, Any] | None = None,
    retention: Mapping[str, Any] | None = None,
    max_retention_drop: float | None = None,
) -> GateResult:
    """Answer everything with both models, score, and decide (``active`` None: nothing to compare with).

    ``paraphrases`` eval questions are reworded by ``paraphraser``; probes are answered ``consistency_n`` times
    with ``sampling``; ``retention`` (the trainer's record) is judged against ``max_retention_drop``."""
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
    para: dict[str, Any] = {}
    if paraphrases > 0 and prompts and paraphraser:
        para, para_rows = await _paraphrase_check(client, tags, prompts[:paraphrases], rows, paraphraser, options)
        rows += para_rows
    cons: dict[str, Any] = {}
    if consistency_n >= 2 and probes:
        cons = await _consistency_check(client, tags, probes, rows[len(prompts):len(prompts) + len(probes)],
                                        consistency_n, dict(sampling or options))
    kept = dict(retention or {})
    if kept.get("increase") is not None and max_retention_drop is not None:
        kept.update(max_drop=max_retention_drop, passed=retention_passes(kept, max_retention_drop))
    else:
        kept = {}  # not measured (an older run, or retention_prompts 0): nothing to judge or show

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
    if kept and not kept["passed"]:
        lost = (f"general ability lost: the base's answers to {kept.get('prompts')} general prompts became "
                f"{kept['increase']:.3f} nats/token less likely (limit {max_retention_drop:g})")
        reason = lost if passed else f"{reason}; {lost}"
        passed = False
    return GateResult(candidate, active, margin, passed, reason, scores, rows, active_is_base=opponent_is_base,
                      decided_by=decided_by, options=dict(options), paraphrase=para, consistency=cons,
                      retention=kept)


def retention_passes(retention: Mapping[str, Any] | None, max_drop: float) -> bool:
    """Whether a trainer's retention record is within ``max_drop`` (a run that did not measure it passes)."""
    increase = (retention or {}).get("increase")
    return increase is None or increase <= max_drop


async def paraphrase(client: OllamaClient, model: str, question: str, options: Mapping[str, Any]) -> str:
    """``question`` reworded by ``model`` (the fixed instruction, deterministic options); "" when it gave nothing."""
    reply = await client.chat(model, [{"role": "system", "content": PARAPHRASE_INSTRUCTION},
                                      {"role": "user", "content": question}], options)
    lines = [ln.strip().strip("\"'“”「」").strip() for ln in reply.strip().splitlines()]
    return next((ln for ln in lines if ln), "")  # small models add an explanation after a blank line


async def _paraphrase_check(client: OllamaClient, tags: Mapping[str, str], prompts: Sequence[EvalPrompt],
                            rows: list[dict[str, Any]], paraphraser: str,
                            options: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Both models on reworded eval questions, beside their score on the same questions as worded in the data."""
    reworded: list[tuple[int, EvalPrompt]] = []
    for i, p in enumerate(prompts):
        text = await paraphrase(client, paraphraser, p.question, options)
        if text and text.casefold() != p.question.strip().casefold():  # an echo measures nothing
            last = max(k for k, m in enumerate(p.messages) if m["role"] == "user")
            messages = tuple({**m, "content": text} if k == last else m for k, m in enumerate(p.messages))
            reworded.append((i, EvalPrompt(messages, p.reference)))
    if not reworded:
        return {"count": 0, "paraphrased_by": paraphraser}, []
    answers = {role: await answer_all(client, tag, [p for _, p in reworded], options) for role, tag in tags.items()}
    result: dict[str, Any] = {"count": len(reworded), "paraphrased_by": paraphraser, "gap": OVERFIT_GAP,
                              "meaning": MEANINGS["paraphrase"]}
    para_rows = []
    for j, (i, p) in enumerate(reworded):
        row: dict[str, Any] = {"kind": "paraphrase", "question": p.question, "original": prompts[i].question,
                               "reference": p.reference}
        for role in tags:
            row[role] = answers[role][j]
            row[f"{role}_rouge_l"] = round(rouge_l(answers[role][j], p.reference or ""), 4)
        para_rows.append(row)
    for role in tags:
        original = sum(rows[i][f"{role}_rouge_l"] for i, _ in reworded) / len(reworded)
        again = sum(r[f"{role}_rouge_l"] for r in para_rows) / len(para_rows)
        result[role] = {"original": round(original, 4), "paraphrased": round(again, 4)}
    cand = result["candidate"]
    result["overfitted"] = cand["original"] - cand["paraphrased"] > OVERFIT_GAP
    return result, para_rows


async def _consistency_check(client: OllamaClient, tags: Mapping[str, str], probes: Sequence[EvalPrompt],
                             probe_rows: list[dict[str, Any]], n: int, sampling: dict[str, Any]) -> dict[str, Any]:
    """Each model answers each probe ``n`` times at the served sampling options; mean pairwise ROUGE-L."""
    result: dict[str, Any] = {"n": n, "probes": len(probes), "options": sampling, "meaning": MEANINGS["consistency"]}
    for role, tag in tags.items():
        per_probe = []
        for p, row in zip(probes, probe_rows, strict=True):
            samples = [await client.chat(tag, list(p.messages), sampling) for _ in range(n)]
            similarity = sum(rouge_l(a, b) for a, b in combinations(samples, 2)) / (n * (n - 1) / 2)
            row[f"{role}_samples"], row[f"{role}_consistency"] = samples, round(similarity, 4)
            per_probe.append(similarity)
        result[role] = round(sum(per_probe) / len(per_probe), 4)
    return result
