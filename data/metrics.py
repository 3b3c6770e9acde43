"""Answer-quality metrics in pure Python: normalisation, exact match and ROUGE-L F1.

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


@dataclass(frozen=True, slots=True)
class AnswerScores:
    """Mean scores over a set of (prediction, reference) pairs."""

    rouge_l: float
    exact_match: float
    count: int

    def to_dict(self) -> dict[str, float | int]:
        return {"rouge_l": self.rouge_l, "exact_match": self.exact_match, "count": self.count}


def score_answers(predictions: Sequence[str], references: Sequence[str]) -> AnswerScores:
    """Mean ROUGE-L F1 and exact match; the two sequences must be the same length."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return AnswerScores(0.0, 0.0, 0)
    n = len(predictions)
    return AnswerScores(
        rouge_l=sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        exact_match=sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / n,
        count=n,
    )
