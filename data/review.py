"""Expert review rules: when a rated example is approved or rejected, and how much the raters agree."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class ReviewPolicy:
    """An example is decided once it has ``quorum`` ratings: approved at mean ≥ ``approve_mean``,
    rejected at mean ≤ ``reject_mean``; in between it stays pending and waits for more ratings."""

    quorum: int = 2
    approve_mean: float = 4.0
    reject_mean: float = 2.5

    def __post_init__(self) -> None:
        if self.quorum < 1:
            raise ValueError("the rating quorum must be at least 1")
        if not 1 <= self.reject_mean < self.approve_mean <= 5:
            raise ValueError("need 1 ≤ reject_mean < approve_mean ≤ 5")

    def decide(self, scores: Sequence[int]) -> str | None:
        """'approved', 'rejected', or None (undecided)."""
        if len(scores) < self.quorum:
            return None
        mean = statistics.fmean(scores)
        if mean >= self.approve_mean:
            return "approved"
        if mean <= self.reject_mean:
            return "rejected"
        return None


def disagreement(scores: Sequence[int]) -> float:
    """Population standard deviation of the scores (0 = unanimous; 2 = split between 1 and 5)."""
    return statistics.pstdev(scores) if len(scores) > 1 else 0.0


def agreement(score_lists: Iterable[Sequence[int]]) -> float | None:
    """Share of rater pairs, over all examples with ≥ 2 ratings, whose scores differ by at most one point.

    None when no example has two ratings yet.
    """
    close = total = 0
    for scores in score_lists:
        for a, b in combinations(scores, 2):
            total += 1
            close += abs(a - b) <= 1
    return close / total if total else None
