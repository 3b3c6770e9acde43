"""The evaluation gate: the candidate and the active model answer the same prompts through Ollama.

Eval prompts come from the snapshot's eval split (each conversation up to its last answer; the answer is
the reference: held-out rewordings experts tagged ``holdout``, and the hash-split share) and are scored with
:mod:`data.metrics` — key-fact recall (the numbers and names of the reference the question does not give away:
did the answer carry the taught fact?), ROUGE-L F1 and exact match, the trainer's numbers for the same text.
Probe questions have no reference: both answers go into the table for people to read. The candidate passes when
its key-fact recall is not below the model that answers now (the active version, or the base tag before any was
promoted) by more than ``margin`` over the eval prompts. With fewer than ``MIN_EVAL`` eval prompts that
comparison is not made (a handful of questions cannot tell two models apart): the table says so and the verdict
rests on the other checks.

Both models answer with the gate's own deterministic options, sent per request: what is compared is the
weights, never the sampling. A reasoning model is asked not to think (``think: false``, sent only to models that
can): its answer, not its reasoning, is judged, and reasoning would spend the gate's short ``num_predict``.

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
from typing import Any, Literal, TypedDict

from data.conversation import Conversation
from data.metrics import fact_recall, key_facts, rouge_l, score_answers
from deploy.config import MIN_EVAL
from deploy.ollama import OllamaClient

CHAT_ROLES = ("system", "user", "assistant")
DECIDED_BY = "facts"
METRIC_NAMES = {"facts": "key-fact recall", "rouge_l": "ROUGE-L F1", "exact_match": "exact match"}
# The paraphrasing model's system prompt; the user message is the question alone. Fixed: a changed instruction
# changes every rewording, and with it the numbers versions are compared on.
PARAPHRASE_INSTRUCTION = ("Rewrite the user's question in different words with exactly the same meaning. "
                          "Reply with the rewritten question only: no answer, no quotes, no explanation.")
# A reworded key-fact recall this far below the original-wording recall flags the candidate over-fitted: it gives
# the fact to the words it was taught with and not to the same question asked otherwise. Never when it rises.
OVERFIT_GAP = 0.25
MEANINGS = {
    "paraphrase": "the same eval questions reworded by the base; a candidate far below its own original-wording "
                  "score would have learned the wording rather than the fact",
    "consistency": "similarity of repeated answers at the served sampling (mean pairwise ROUGE-L); 1: always "
                   "the same, low: the dice decide",
    "retention": "how much less likely the base's answers to general questions became (nats/token); near 0: "
                 "general ability kept",
}


Role = Literal["candidate", "active"]  # the two models the gate compares


class ParaphraseScores(TypedDict):
    """One model's mean key-fact recall on the reworded eval questions, worded as in the data and reworded."""

    original: float
    paraphrased: float


class Paraphrase(TypedDict, total=False):
    """The reworded eval questions (see the module doc): {} when the check did not run; ``count`` 0 and
    ``paraphrased_by`` alone when the paraphraser gave no rewording back."""

    count: int
    paraphrased_by: str
    gap: float  # OVERFIT_GAP when it was judged
    meaning: str
    metric: str  # the metric ``candidate`` and ``active`` are in
    candidate: ParaphraseScores
    active: ParaphraseScores
    overfitted: bool


class Consistency(TypedDict, total=False):
    """Repeated probe answers at the served sampling options (see the module doc): {} when the check did not run;
    per role the mean pairwise ROUGE-L of its answers."""

    n: int
    probes: int
    options: dict[str, Any]  # the sampling options the answers were drawn with
    meaning: str
    candidate: float
    active: float


class RetrievalRow(TypedDict):
    """One eval prompt answered by the candidate with the expert answers retrieval gave it."""

    question: str
    pair_ids: list[int]
    answer: str
    rouge_l: float


class WithRetrieval(TypedDict, total=False):
    """For information, never judged: the candidate on the gate's eval prompts with the expert answers the bot would
    retrieve for it (bot/retrieval.py ``gate_with_retrieval``). {} when not asked for; only ``skipped`` (why it was
    not measured) or ``error`` (what failed); else the measurement."""

    skipped: str
    error: str
    scope: str
    k: int
    max_chars: int
    search: str
    prompts: int
    with_pairs: int  # eval prompts that got at least one expert answer
    pairs: int  # distinct expert answers given
    weights: dict[str, float | int]  # the candidate's gate scores: its weights alone
    candidate: dict[str, float | int]  # the same prompts answered with retrieval
    rows: list[RetrievalRow]


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
    paraphrase: Paraphrase = field(default_factory=Paraphrase)
    consistency: Consistency = field(default_factory=Consistency)
    # The trainer's retention record plus the limit it was judged against and whether it passed.
    retention: dict[str, Any] = field(default_factory=dict)
    with_retrieval: WithRetrieval = field(default_factory=WithRetrieval)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> GateResult:
        """A stored table (``to_dict()``), tolerating ones written before a field existed."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in stored.items() if k in names})

    def table(self) -> str:
        """A small plain-text table of the scores and which metric decided."""
        lines = [f"{'model':<10} {'tag':<32} {'facts':>6} {'ROUGE-L':>8} {'EM':>6} {'n':>4}"]
        for role, tag in (("candidate", self.candidate), ("active", self.active)):
            if tag is None or role not in self.scores:
                continue
            s = self.scores[role]
            label = "base" if role == "active" and self.active_is_base else role
            facts = f"{s['facts']:>6.3f}" if "facts" in s else f"{'–':>6}"  # a table stored before facts existed
            lines.append(f"{label:<10} {tag:<32} {facts} {s['rouge_l']:>8.3f} {s['exact_match']:>6.3f} "
                         f"{s['count']:>4}")
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
        lines = [*head, f"{'candidate':<22} {'facts':>6} {'ROUGE-L':>8} {'EM':>6} {'n':>4}"]
        for label, s in (("weights alone", info.get("weights")), ("with expert answers", info.get("candidate"))):
            if s:
                facts = f"{s['facts']:>6.3f}" if "facts" in s else f"{'–':>6}"
                lines.append(f"{label:<22} {facts} {s['rouge_l']:>8.3f} {s['exact_match']:>6.3f} {s['count']:>4}")
        lines.append(f"  {info.get('with_pairs', 0)} of {info.get('prompts', 0)} eval prompts got expert answers "
                     f"({info.get('pairs', 0)} distinct pairs; scope {info.get('scope')}, k {info.get('k')}, "
                     f"{info.get('search', 'lexical')}); the eval pairs themselves are never retrieved")
        return lines

    def _dimension_lines(self) -> list[str]:
        """One line per extra dimension that ran: its numbers, then what they mean."""
        other = "base" if self.active_is_base else "active"
        roles: tuple[tuple[Role, str], ...] = (("candidate", "candidate"), ("active", other))
        lines = []
        para = self.paraphrase
        if para.get("count"):
            metric = METRIC_NAMES.get(para.get("metric", "rouge_l"), "ROUGE-L F1")
            parts = [f"{label} {para[role]['original']:.3f} → {para[role]['paraphrased']:.3f}"
                     for role, label in roles if role in para]
            lines.append(f"reworded ({para['count']} eval questions, original → reworded {metric}): "
                         + ", ".join(parts))
            lines.append(f"  {MEANINGS['paraphrase']}")
            if para.get("overfitted"):
                c = para["candidate"]
                lines.append(f"  OVER-FITTED? the candidate scores {c['original']:.3f} on the eval wording but "
                             f"{c['paraphrased']:.3f} reworded (more than {para.get('gap', OVERFIT_GAP):g} lower)")
        cons = self.consistency
        if cons.get("n"):
            parts = [f"{label} {cons[role]:.3f}" for role, label in roles if cons.get(role) is not None]
            lines.append(f"consistency ({cons['n']} answers to each of {cons['probes']} probes): " + ", ".join(parts))
            lines.append(f"  {MEANINGS['consistency']}")
        ret = self.retention
        if ret.get("increase") is not None:
            verdict = "within" if ret.get("passed") else "OVER"
            share = f", {ret['increase'] / ret['nll_before']:+.0%}" if ret.get("nll_before") else ""
            lines.append(f"retention ({ret.get('prompts')} general prompts, {ret.get('set')}): NLL "
                         f"{ret['nll_before']:.3f} → {ret['nll_after']:.3f}, {ret['increase']:+.3f}{share} "
                         f"({verdict} the limit {ret.get('max_drop', 0):g})")
            lines.append(f"  {MEANINGS['retention']}")
        return lines

    def details(self) -> str:
        """Every prompt: question, reference and its key facts, both answers and their scores (the file behind the
        table)."""
        other = "base" if self.active_is_base else "active"
        out = [self.table(), ""]
        for i, row in enumerate(self.rows, 1):
            out.append(f"--- {i}. {row.get('kind', 'eval')} ---")
            if row.get("original") is not None:
                out.append(f"original:  {row['original']}")
            out.append(f"{'reworded' if row.get('original') is not None else 'question'}:  {row.get('question', '')}")
            if row.get("reference") is not None:
                out.append(f"reference: {row['reference']}")
            if row.get("key_facts"):
                out.append(f"key facts: {', '.join(row['key_facts'])}")
            for role, label in (("candidate", "candidate"), ("active", other)):
                if role in row:
                    rl, facts = row.get(f"{role}_rouge_l"), row.get(f"{role}_facts")
                    score = ("" if rl is None else f" (ROUGE-L {rl:.3f}" +
                             ("" if facts is None else f", facts {facts:.2f}") + ")")
                    out.append(f"{label}{score}: {row[role]}")
                samples = row.get(f"{role}_samples")
                if samples:
                    out.append(f"{label}, {len(samples)} sampled answers (consistency "
                               f"{row.get(f'{role}_consistency', 0):.3f}):")
                    out += [f"  - {s}" for s in samples]
            out.append("")
        for i, answered in enumerate(self.with_retrieval.get("rows", []), 1):
            if answered.get("pair_ids"):
                out += [f"--- {i}. eval with retrieval (pairs {', '.join(f'#{p}' for p in answered['pair_ids'])}) ---",
                        f"question:  {answered.get('question', '')}",
                        f"candidate (ROUGE-L {answered.get('rouge_l', 0):.3f}): {answered.get('answer', '')}", ""]
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
    return [await client.chat(tag, list(p.messages), options, think=False) for p in prompts]


@dataclass(frozen=True)
class GateConfig:
    """How the gate judges a candidate (deploy/candidate.py judge_candidate builds it from DeployConfig).

    ``margin``: the key-fact recall the candidate may lose against its opponent; ``options``: the deterministic
    options every answer is generated with; ``paraphrases`` eval questions are reworded by ``paraphraser``;
    probes are answered ``consistency_n`` times with ``sampling``; a trainer's retention record is judged against
    ``max_retention_drop``; below ``min_eval`` eval prompts the scores are shown, not compared."""

    margin: float
    options: Mapping[str, Any]
    paraphrases: int = 0
    paraphraser: str | None = None
    consistency_n: int = 0
    sampling: Mapping[str, Any] | None = None
    max_retention_drop: float | None = None
    min_eval: int = MIN_EVAL


async def run_gate(
    client: OllamaClient,
    candidate: str,
    active: str | None,
    prompts: Sequence[EvalPrompt],
    probes: Sequence[EvalPrompt],
    config: GateConfig,
    *,
    opponent_is_base: bool = False,
    retention: Mapping[str, Any] | None = None,
) -> GateResult:
    """Answer everything with both models, score, and decide (``active`` None: nothing to compare with);
    ``retention``: the trainer's record of general ability (judged by ``config.max_retention_drop``)."""
    margin, options, min_eval = config.margin, config.options, config.min_eval
    paraphrases, paraphraser, consistency_n = config.paraphrases, config.paraphraser, config.consistency_n
    sampling, max_retention_drop = config.sampling, config.max_retention_drop
    tags: dict[Role, str] = {"candidate": candidate}
    if active:
        tags["active"] = active
    answers = {role: await answer_all(client, tag, [*prompts, *probes], options) for role, tag in tags.items()}
    refs = [p.reference or "" for p in prompts]
    questions = [p.question for p in prompts]
    scores: dict[str, dict[str, float | int]] = {role: score_answers(a[: len(prompts)], refs, questions).to_dict()
                                                 for role, a in answers.items()}
    rows = []
    for i, p in enumerate([*prompts, *probes]):
        row: dict[str, Any] = {"kind": "eval" if i < len(prompts) else "probe", "question": p.question,
                               "reference": p.reference}
        for role in tags:
            row[role] = answers[role][i]
        if p.reference is not None:
            row["key_facts"] = key_facts(p.reference, p.question)
            for role in tags:
                row[f"{role}_facts"] = round(fact_recall(answers[role][i], p.reference, p.question), 4)
                row[f"{role}_rouge_l"] = round(rouge_l(answers[role][i], p.reference), 4)
        rows.append(row)
    para: Paraphrase = {}
    if paraphrases > 0 and prompts and paraphraser:
        para, para_rows = await _paraphrase_check(client, tags, prompts[:paraphrases], rows, paraphraser, options)
        rows += para_rows
    cons: Consistency = {}
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
    elif len(prompts) < min_eval:
        passed, decided_by = True, ""
        reason = (f"eval set too small to judge: {len(prompts)} eval prompts, fewer than {min_eval} (tag held-out "
                  "rewordings of taught questions `holdout` to judge what was learned); scores shown, not compared")
    else:
        cand, act = scores["candidate"][DECIDED_BY], scores["active"][DECIDED_BY]
        passed = cand >= act - margin
        reason = f"candidate key-fact recall {cand:.3f} below {other} {act:.3f} by more than margin {margin:g}"
        if passed:
            reason = f"candidate key-fact recall {cand:.3f} vs {other} {act:.3f} (margin {margin:g})"
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
    """``question`` reworded by ``model`` (the fixed instruction, deterministic options); "" when it gave no
    question back."""
    reply = await client.chat(model, [{"role": "system", "content": PARAPHRASE_INSTRUCTION},
                                      {"role": "user", "content": question}], options, think=False)
    lines = [ln.strip().strip("\"'“”「」").strip() for ln in reply.strip().splitlines()]
    # Only a question is a rewording: small bases often answer instead (SmolLM2-135M: "By default, Brightwater's
    # Relay uses port 8080."), which would test the candidate on a wrong statement. Explanations follow a blank line.
    return next((ln for ln in lines if ln.endswith(("?", "？"))), "")


async def _paraphrase_check(client: OllamaClient, tags: Mapping[Role, str], prompts: Sequence[EvalPrompt],
                            rows: list[dict[str, Any]], paraphraser: str,
                            options: Mapping[str, Any]) -> tuple[Paraphrase, list[dict[str, Any]]]:
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
    result: Paraphrase = {"count": len(reworded), "paraphrased_by": paraphraser, "gap": OVERFIT_GAP,
                          "meaning": MEANINGS["paraphrase"]}
    para_rows = []
    result["metric"] = DECIDED_BY
    for j, (i, p) in enumerate(reworded):
        row: dict[str, Any] = {"kind": "paraphrase", "question": p.question, "original": prompts[i].question,
                               "reference": p.reference}
        for role in tags:
            row[role] = answers[role][j]
            # Facts the original question gave away stay given away: the rewording is scored on the same facts.
            row[f"{role}_facts"] = round(fact_recall(answers[role][j], p.reference or "", prompts[i].question), 4)
            row[f"{role}_rouge_l"] = round(rouge_l(answers[role][j], p.reference or ""), 4)
        para_rows.append(row)
    for role in tags:
        original = sum(rows[i][f"{role}_{DECIDED_BY}"] for i, _ in reworded) / len(reworded)
        again = sum(r[f"{role}_{DECIDED_BY}"] for r in para_rows) / len(para_rows)
        result[role] = {"original": round(original, 4), "paraphrased": round(again, 4)}
    cand = result["candidate"]
    result["overfitted"] = cand["original"] - cand["paraphrased"] > OVERFIT_GAP
    return result, para_rows


async def _consistency_check(client: OllamaClient, tags: Mapping[Role, str], probes: Sequence[EvalPrompt],
                             probe_rows: list[dict[str, Any]], n: int, sampling: dict[str, Any]) -> Consistency:
    """Each model answers each probe ``n`` times at the served sampling options; mean pairwise ROUGE-L."""
    result: Consistency = {"n": n, "probes": len(probes), "options": sampling, "meaning": MEANINGS["consistency"]}
    for role, tag in tags.items():
        per_probe = []
        for p, row in zip(probes, probe_rows, strict=True):
            samples = [await client.chat(tag, list(p.messages), sampling, think=False) for _ in range(n)]
            similarity = sum(rouge_l(a, b) for a, b in combinations(samples, 2)) / (n * (n - 1) / 2)
            row[f"{role}_samples"], row[f"{role}_consistency"] = samples, round(similarity, 4)
            per_probe.append(similarity)
        result[role] = round(sum(per_probe) / len(per_probe), 4)
    return result
