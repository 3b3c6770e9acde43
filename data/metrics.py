"""Answer-quality metrics in pure Python: normalisation, exact match, ROUGE-L F1 and key-fact recall.

Shared by the trainer (generated eval answers) and deploy (comparing a served model's answers),
so both report the same numbers for the same text.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"“", "”", "‘", "’", "«", "»", "…", "–", "—"}


def normalise(text: str) -> str:
    """SQuAD-style normalisation: NFKC, lower case, punctuation and English articles removed, spaces folded."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """The normalised words of ``text``."""
    return normalise(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both normalise to the same text, else 0.0."""
    return float(normalise(prediction) == normalise(reference))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    # Classic dynamic programme, one row kept: O(len(a) * len(b)) time, O(len(b)) memory.
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over normalised words (longest common subsequence). Two empty texts score 1.0."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# Key facts: what an answer must carry to answer, whatever its wording. ROUGE-L rewards an answer's sentence shape
# ("The X is ..."): on SmolLM2-135M it ranked a run that had learned a quarter of the taught facts above one that
# had learned two thirds. A fact is a number or a name (a word with a capital letter past a sentence's start, or
# an address) of the reference that the question does not already contain; a reference without either is judged
# on its content words.
_NUMBER = re.compile(r"(?<![\w.\-])\d+(?:[.,:]\d+)*(?!\w)")  # not the 90 of BX-90; the 27 of 27-month
_WORD = re.compile(r"[^\W_][\w@.'’\-]*[^\W_]|[^\W_]")
_STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves also yes yeah sure please thanks thank hello hi okay ok get
got make made use used using one two may might must shall let lets it's i'm you're that's there's means mean called
named uses
""".split())


def _word(text: str) -> str:
    word = text.strip(".-'’")
    for suffix in ("'s", "’s"):
        if word.casefold().endswith(suffix):
            word = word[: -len(suffix)]
    return word


def key_facts(reference: str, question: str = "") -> list[str]:
    """The numbers and names in ``reference`` that ``question`` lacks; else its content words (both lists
    deduplicated, in order). Empty when the reference has no words (then only ROUGE-L can judge it)."""
    asked = {_word(w).casefold() for w in _WORD.findall(unicodedata.normalize("NFKC", question))}
    asked |= set(_NUMBER.findall(question))
    ref = unicodedata.normalize("NFKC", reference)
    facts = [n for n in _NUMBER.findall(ref) if n not in asked]
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", ref):
        for i, raw in enumerate(_WORD.findall(sentence)):
            word = _word(raw)
            if not word or word.casefold() in asked or word.casefold() in _STOPWORDS or _NUMBER.fullmatch(word):
                continue
            named = "@" in word or any(c.isupper() for c in (word if i else word[1:]))
            code = not word[0].isdigit() and any(c.isdigit() for c in word) and any(c.isalpha() for c in word)
            if named or code:  # a name, an address, or a code such as BX-90 (not 27-month: its number counts)
                facts.append(word)
    if not facts:  # no number or name: the content words carry the answer
        facts = [w for w in (_word(raw) for raw in _WORD.findall(ref))
                 if len(w) >= 3 and w.casefold() not in asked and w.casefold() not in _STOPWORDS]
    return list(dict.fromkeys(facts))


def has_fact(answer: str, fact: str) -> bool:
    """``fact`` appears in ``answer`` as whole words (case and punctuation folded)."""
    return f" {normalise(fact)} " in f" {normalise(answer)} " if normalise(fact) else False


def fact_recall(prediction: str, reference: str, question: str = "") -> float:
    """Share of the reference's key facts the prediction carries; ROUGE-L when it has none (e.g. no spaces)."""
    facts = key_facts(reference, question)
    if not facts or (len(facts) == 1 and not normalise(facts[0])):
        return rouge_l(prediction, reference)
    return sum(has_fact(prediction, f) for f in facts) / len(facts)


@dataclass(frozen=True, slots=True)
class AnswerScores:
    """Mean scores over a set of (prediction, reference) pairs."""

    rouge_l: float
    exact_match: float
    count: int
    facts: float = 0.0  # mean key-fact recall (fact_recall)

    def to_dict(self) -> dict[str, float | int]:
        return {"facts": self.facts, "rouge_l": self.rouge_l, "exact_match": self.exact_match, "count": self.count}


def score_answers(predictions: Sequence[str], references: Sequence[str],
                  questions: Sequence[str] | None = None) -> AnswerScores:
    """Mean key-fact recall, ROUGE-L F1 and exact match; the sequences must be the same length (``questions``
    tell which of a reference's words the question already gave away)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return AnswerScores(0.0, 0.0, 0)
    n = len(predictions)
    asked = list(questions) if questions is not None else [""] * n
    return AnswerScores(
        rouge_l=sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        exact_match=sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        count=n,
        facts=sum(fact_recall(p, r, q) for p, r, q in zip(predictions, references, asked, strict=True)) / n,
    )
