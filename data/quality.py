"""How good a model is for the people using it: 👍/👎 per version, the regression alarm, experts' blind
comparison of a candidate with what answers now, and the 👎 answers still waiting for a better one.

The numbers:

- Votes are people, not clicks: each person counts once per version, with the majority of their 👍/👎 on that
  version's answers (each answer's last click); as many 👍 as 👎 is no vote. A person's clicks on answers to
  their own questions are not counted at all: one account asking and praising its own answers cannot hide a
  regression, and one member's twenty 👎 are one 👎.
- A version's *👍 rate* is 👍 / (👍 + 👎) over those people, with a 95% Wilson interval: with few voters the
  interval is wide and says so.
- The regression alarm compares the active version's 👎 rate with the version that answered before it (the
  base tag for the first fine-tune) by a pooled two-proportion z-test, two-sided at 95% (|z| ≥ 1.96), and only
  once both have at least ``min_votes`` distinct voters: a handful of 👎 on a new version is noise, not a
  regression.
- A blind comparison's *win rate* is the candidate's share of expert votes, a tie counting half, with a 95%
  Wilson interval; the candidate is *not worse* when that rate is at least one half.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from data.errors import LoraloopError
from data.models import Answer, Comparison, ComparisonVote, Example, Feedback, ModelVersion, Promotion, QualityAlert

if TYPE_CHECKING:
    from data.store import Store

Z95 = 1.959964  # two-sided 95%
CHOICES = ("a", "b", "tie")


class QualityError(LoraloopError):
    """A vote or comparison request that cannot be taken; the message can be shown as is."""


# ---- statistics ---------------------------------------------------------------------------------------------


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (0, 1 when there is nothing to go on)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float:
    """The pooled two-proportion z statistic of x1/n1 against x2/n2 (positive: the first is higher)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 0.0 if se == 0 else (x1 / n1 - x2 / n2) / se


@dataclass(frozen=True)
class Rate:
    """👍 and 👎 on one version's answers, in people (feedback_by_version)."""

    up: int = 0
    down: int = 0

    @property
    def votes(self) -> int:
        return self.up + self.down

    @property
    def up_rate(self) -> float | None:
        return self.up / self.votes if self.votes else None

    @property
    def down_rate(self) -> float | None:
        return self.down / self.votes if self.votes else None

    @property
    def interval(self) -> tuple[float, float]:
        """95% Wilson interval of the 👍 rate."""
        return wilson(self.up, self.votes)

    def text(self) -> str:
        if not self.votes:
            return "👍 0 / 👎 0 (no votes yet)"
        lo, hi = self.interval
        return f"👍 {self.up} / 👎 {self.down} · {self.up_rate:.0%} 👍 (95% CI {lo:.0%}–{hi:.0%})"

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"up": self.up, "down": self.down, "votes": self.votes, "up_rate": self.up_rate,
                "up_rate_ci95": [round(lo, 4), round(hi, 4)] if self.votes else None}


async def feedback_by_version(store: Store) -> dict[int | None, Rate]:
    """👍/👎 per model version id (None: answers the base tag gave), counted in people (see the module's notes)."""
    # Each person's net vote on each version, their votes on answers to their own questions left out.
    net = (select(Answer.model_version_id.label("version"), func.sum(Feedback.value).label("net"))
           .join(Feedback, Feedback.answer_id == Answer.id)
           .where(or_(Answer.user_id.is_(None), Answer.user_id != Feedback.user_id),
                  Answer.community == store.community)
           .group_by(Answer.model_version_id, Feedback.user_id).subquery())
    async with store.session() as s:
        rows = (await s.execute(
            select(net.c.version, func.count().filter(net.c.net > 0), func.count().filter(net.c.net < 0))
            .group_by(net.c.version))).all()
    return {version_id: Rate(up, down) for version_id, up, down in rows if up or down}


async def previous_version(store: Store) -> tuple[bool, ModelVersion | None]:
    """The version that answered before the active one: (True, version), (True, None) for the base tag, or
    (False, None) when nothing is active (the base answers and has no predecessor)."""
    async with store.session() as s:
        history = list(await s.scalars(select(Promotion.model_version_id)
                                       .where(Promotion.community == store.community).order_by(Promotion.id.desc())))
        if not history:
            return False, None
        active = history[0]
        earlier = next((v for v in history[1:] if v != active), None)
        return True, (await s.get(ModelVersion, earlier) if earlier is not None else None)


@dataclass(frozen=True)
class Regression:
    """The active version's 👎 rate is higher than its predecessor's, beyond chance."""

    version: ModelVersion
    previous_tag: str
    now: Rate
    before: Rate
    z: float

    def text(self) -> str:
        return (f"⚠️ `{self.version.tag}` gets more 👎 than `{self.previous_tag}` did: "
                f"{self.now.down_rate:.0%} of {self.now.votes} people against {self.before.down_rate:.0%} of "
                f"{self.before.votes} (two-proportion z = {self.z:.2f}, beyond 1.96: not chance at 95%).")


async def detect_regression(store: Store, base_tag: str, min_votes: int) -> Regression | None:
    """The active version's regression against the one before it, when both have ``min_votes`` distinct voters
    and the two-proportion test says so; else None."""
    any_active, before_version = await previous_version(store)
    active = await store.active_model_version()
    if not any_active or active is None:
        return None
    rates = await feedback_by_version(store)
    now = rates.get(active.id, Rate())
    before = rates.get(before_version.id if before_version else None, Rate())
    if now.votes < min_votes or before.votes < min_votes:
        return None
    z = two_proportion_z(now.down, now.votes, before.down, before.votes)
    if z < Z95:
        return None
    return Regression(active, before_version.tag if before_version else base_tag, now, before, z)


async def claim_alert(store: Store, regression: Regression) -> bool:
    """Record that experts are told about this version's regression; False when they were already."""
    row = QualityAlert(model_version_id=regression.version.id, compared_with=regression.previous_tag,
                       details={"now": regression.now.to_dict(), "before": regression.before.to_dict(),
                                "z": round(regression.z, 3)})
    try:
        async with store.session() as s, s.begin():
            s.add(row)
    except IntegrityError:
        return False
    return True


# ---- answers waiting for a better one -----------------------------------------------------------------------


async def answers_needing_better(store: Store, limit: int = 5) -> list[Answer]:
    """Answers someone gave 👎 that no suggestion or correction answers yet, oldest first."""
    thumbs_down = exists().where(Feedback.answer_id == Answer.id, Feedback.value == -1)
    corrected = exists().where(Example.answer_id == Answer.id)
    async with store.session() as s:
        return list(await s.scalars(select(Answer).where(thumbs_down, ~corrected, Answer.community == store.community)
                                    .order_by(Answer.id).limit(limit)))


def question_of(answer: Answer) -> str:
    return next((m["content"] for m in reversed(answer.prompt) if m["role"] == "user"), "")


# ---- blind comparison ---------------------------------------------------------------------------------------


def comparison_items(rows: Sequence[dict[str, Any]], k: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
    """Up to ``k`` questions from a gate table (eval questions first, then probes) with both answers as "a" and
    "b" in an order drawn per question. Rows where both answers are the same text are skipped: nothing to judge."""
    rng = rng or random.SystemRandom()
    usable = [r for r in rows if r.get("candidate") is not None and r.get("active") is not None
              and r["candidate"].strip() != r["active"].strip()]
    usable.sort(key=lambda r: r.get("kind") != "eval")
    items = []
    for row in usable[:k]:
        candidate_first = rng.random() < 0.5
        a, b = (row["candidate"], row["active"]) if candidate_first else (row["active"], row["candidate"])
        items.append({"question": row.get("question", ""), "a": a, "b": b, "candidate": "a" if candidate_first else "b",
                      "kind": row.get("kind", "eval")})
    return items


async def create_comparison(store: Store, *, run_id: int | None, candidate: ModelVersion, opponent_tag: str,
                            rows: Sequence[dict[str, Any]], k: int, rng: random.Random | None = None
                            ) -> Comparison | None:
    """A blind comparison for ``candidate`` from its gate rows, or None when no question has two different
    answers."""
    items = comparison_items(rows, k, rng)
    if not items:
        return None
    row = Comparison(run_id=run_id, candidate_version_id=candidate.id, candidate_tag=candidate.tag,
                     opponent_tag=opponent_tag, items=items, community=store.owner())
    async with store.session() as s, s.begin():
        s.add(row)
    return row


async def get_comparison(store: Store, comparison_id: int) -> Comparison:
    """The community's comparison; NotFound for none (another community's too)."""
    async with store.session() as s:
        return await store.get_or_404(s, Comparison, comparison_id)


async def comparison_for_run(store: Store, run_id: int) -> Comparison | None:
    async with store.session() as s:
        return await s.scalar(select(Comparison).where(Comparison.run_id == run_id,
                                                       Comparison.community == store.community)
                              .order_by(Comparison.id.desc())
                              .limit(1))


async def set_comparison_message(store: Store, comparison_id: int, channel_id: int | None, message_id: int) -> None:
    """Where the comparison's public message is (nothing for another community's comparison)."""
    async with store.session() as s, s.begin():
        await s.execute(update(Comparison)
                        .where(Comparison.id == comparison_id, Comparison.community == store.community)
                        .values(channel_id=channel_id, message_id=message_id))


async def user_votes(store: Store, comparison_id: int, user_id: int) -> dict[int, str]:
    async with store.session() as s:
        rows = await s.execute(select(ComparisonVote.item, ComparisonVote.choice).where(
            ComparisonVote.comparison_id == comparison_id, ComparisonVote.user_id == user_id))
        return dict(rows.all())


async def next_item(store: Store, comparison: Comparison, user_id: int) -> int | None:
    """The first question this expert has not voted on, or None when they are done."""
    done = await user_votes(store, comparison.id, user_id)
    return next((i for i in range(len(comparison.items)) if i not in done), None)


async def vote(store: Store, comparison_id: int, item: int, user_id: int, choice: str) -> bool:
    """One expert's verdict on one question. False (nothing changed) when they had voted on it already: a vote
    is final, since the expert has seen which answer was whose right after it."""
    if choice not in CHOICES:
        raise QualityError(f"a vote is one of {', '.join(CHOICES)}")
    comparison = await get_comparison(store, comparison_id)
    if not 0 <= item < len(comparison.items):
        raise QualityError(f"comparison #{comparison_id} has no question {item + 1}")
    try:
        async with store.session() as s, s.begin():
            s.add(ComparisonVote(comparison_id=comparison_id, item=item, user_id=user_id, choice=choice))
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True)
class Tally:
    """Where a blind comparison stands: votes, experts who finished, and the candidate's win rate."""

    wins: int
    losses: int
    ties: int
    experts_done: int
    quorum: int

    @property
    def votes(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def complete(self) -> bool:
        return self.experts_done >= self.quorum

    @property
    def win_rate(self) -> float | None:
        return (self.wins + self.ties / 2) / self.votes if self.votes else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.wins + self.ties / 2, self.votes)

    @property
    def not_worse(self) -> bool:
        """The experts did not prefer what answers now: a win rate of at least one half, once quorum voted."""
        return self.complete and self.win_rate is not None and self.win_rate >= 0.5

    def text(self) -> str:
        if not self.complete:
            return f"{self.experts_done}/{self.quorum} experts have compared; the tally shows at quorum."
        lo, hi = self.interval
        verdict = "not worse than" if self.not_worse else "worse than"
        return (f"Candidate wins {self.wins}, loses {self.losses}, ties {self.ties} over {self.votes} votes of "
                f"{self.experts_done} experts: win rate {self.win_rate:.0%} (95% CI {lo:.0%}–{hi:.0%}) → "
                f"the experts find it {verdict} what answers now.")

    def to_dict(self) -> dict[str, Any]:
        return {"wins": self.wins, "losses": self.losses, "ties": self.ties, "experts_done": self.experts_done,
                "quorum": self.quorum, "win_rate": self.win_rate, "not_worse": self.not_worse,
                "ci95": list(self.interval) if self.votes else None}


async def tally(store: Store, comparison: Comparison, quorum: int) -> Tally:
    async with store.session() as s:
        votes = list((await s.execute(select(ComparisonVote.user_id, ComparisonVote.item, ComparisonVote.choice)
                                      .where(ComparisonVote.comparison_id == comparison.id))).all())
    wins = losses = ties = 0
    per_user: dict[int, int] = {}
    for user_id, item, choice in votes:
        per_user[user_id] = per_user.get(user_id, 0) + 1
        if choice == "tie":
            ties += 1
        elif choice == comparison.items[item]["candidate"]:
            wins += 1
        else:
            losses += 1
    done = sum(1 for n in per_user.values() if n >= len(comparison.items))
    return Tally(wins, losses, ties, done, quorum)


async def promotion_refusal(store: Store, run_id: int, quorum: int) -> str | None:
    """Why this run's candidate may not be promoted yet because of its blind comparison, or None."""
    comparison = await comparison_for_run(store, run_id)
    if comparison is None:
        return None
    result = await tally(store, comparison, quorum)
    if not result.complete:
        return (f"the blind comparison #{comparison.id} needs {result.quorum - result.experts_done} "
                "more expert(s) first")
    if not result.not_worse:
        return f"the experts found the candidate worse in the blind comparison. {result.text()}"
    return None
