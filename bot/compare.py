"""Quality in Discord: the experts' blind side-by-side of a candidate and what answers now, and the alarm when
the active version's 👎 rate regresses (with the button that rolls back: /model rollback confirms with it too).
The numbers come from :mod:`data.quality`; this file only shows them.

A blind comparison is one public message in the experts channel (what is compared, how far the experts are, the
tally at quorum, and in manual promotion the Promote button, enabled only once the experts find the candidate
not worse). Each expert compares privately: "Compare" opens an ephemeral card per question with answers "A" and
"B" in an order drawn per question; which one was the candidate's is shown to them right after their vote.

Everything here belongs to one community: a comparison is its candidate's, the alarm watches its active version and
goes to its experts channel (``Settings.experts_channel_of``), a rollback switches its model only.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bot import permissions
from bot.permissions import IdButton, Only, say
from data import quality, runs
from data.errors import LoraloopError, NotFound
from data.models import Comparison, RetrainRun
from data.store import Store
from deploy.promotion import AlreadyActive, rollback

if TYPE_CHECKING:
    from bot.app import LoraloopBot
    from bot.permissions import Interaction

log = logging.getLogger("loraloop.bot.quality")
NONE = discord.AllowedMentions.none()
CONTENT_MAX = 2000
ANSWER_SHOWN = 700  # characters of each answer on a card: two answers and a question fit one message


def _quorum(bot: LoraloopBot) -> int:
    return bot.settings.retrain_quorum


def _clip(text: str, limit: int) -> str:
    text = text.strip() or "(empty answer)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines() or [""])


# ---- the public message -------------------------------------------------------------------------------------


def comparison_text(comparison: Comparison, tally: quality.Tally, run: RetrainRun | None = None) -> str:
    head = f"**Blind comparison #{comparison.id}**" + (f" for retrain #{run.id}" if run else "")
    lines = [head, f"A candidate against what answers now, on {len(comparison.items)} questions from its "
                   "evaluation. Each expert compares privately (press Compare): which model wrote which answer is "
                   "shown only after you voted.", tally.text()]
    if tally.complete:
        lines.append(f"The candidate was `{comparison.candidate_tag}`; the answers it was compared with came from "
                     f"`{comparison.opponent_tag}`.")
    return "\n".join(lines)[:CONTENT_MAX]


def comparison_view(comparison: Comparison, tally: quality.Tally, manual: bool,
                    run: RetrainRun | None) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CompareButton(comparison.id, "start", 0))
    if manual and run is not None and run.state == "evaluated":
        # RetrainCog's persistent RetrainButton answers these ids; Promote stays greyed out until the tally allows.
        view.add_item(discord.ui.Button(style=discord.ButtonStyle.success, label="Promote",
                                        custom_id=f"ll:rt:promote:{run.id}", disabled=not tally.not_worse))
        view.add_item(discord.ui.Button(style=discord.ButtonStyle.danger, label="Discard",
                                        custom_id=f"ll:rt:discard:{run.id}"))
    return view


async def post_comparison(bot: LoraloopBot, run: RetrainRun, channel: discord.abc.Messageable,
                          k: int | None = None) -> Comparison | None:
    """Make the blind comparison for an evaluated run from its gate table and post it; None when the gate rows
    hold no question the two models answered differently."""
    if run.model_version_id is None:
        return None
    store = bot.community_store(run.community)  # the run's community: its candidate, its experts
    version = await store.get_model_version(run.model_version_id)
    evaluation = version.evaluation or {}
    comparison = await quality.create_comparison(
        store, run_id=run.id, candidate=version, opponent_tag=str(evaluation.get("active") or ""),
        rows=evaluation.get("rows") or [], k=k or bot.settings.review.compare_questions)
    if comparison is None:
        return None
    tally = await quality.tally(store, comparison, _quorum(bot))
    manual = bot.settings.retrain_promotion == "manual"
    message = await channel.send(comparison_text(comparison, tally, run),
                                 view=comparison_view(comparison, tally, manual, run), allowed_mentions=NONE)
    await quality.set_comparison_message(store, comparison.id, getattr(channel, "id", None), message.id)
    return comparison


async def refresh_comparison(bot: LoraloopBot, store: Store, comparison: Comparison) -> None:
    """Show the current tally (and enable Promote once allowed) on the public message (``store``: the
    comparison's community's)."""
    if comparison.channel_id is None or comparison.message_id is None:
        return
    run = await runs.get_run(store, comparison.run_id) if comparison.run_id is not None else None
    tally = await quality.tally(store, comparison, _quorum(bot))
    manual = bot.settings.retrain_promotion == "manual"
    channel = bot.get_partial_messageable(comparison.channel_id)
    try:
        await channel.get_partial_message(comparison.message_id).edit(
            content=comparison_text(comparison, tally, run), view=comparison_view(comparison, tally, manual, run))
    except discord.HTTPException as exc:
        log.warning("could not update comparison #%d: %s", comparison.id, exc)


async def promotion_refusal(bot: LoraloopBot, store: Store, run_id: int) -> str | None:
    """Why an expert may not promote this run's candidate yet (its blind comparison), or None."""
    why = await quality.promotion_refusal(store, run_id, _quorum(bot))
    return None if why is None else f"Not promoted: {why}."


# ---- the private cards --------------------------------------------------------------------------------------


def card(comparison: Comparison, item: int, before: str = "") -> tuple[str, discord.ui.View]:
    it = comparison.items[item]
    lines = ([before, ""] if before else []) + [
        f"**Comparison #{comparison.id} · question {item + 1}/{len(comparison.items)}**",
        _quote(_clip(it["question"], 300)),
        "**Answer A**", _quote(_clip(it["a"], ANSWER_SHOWN)),
        "**Answer B**", _quote(_clip(it["b"], ANSWER_SHOWN)),
    ]
    view = discord.ui.View(timeout=None)
    for choice in quality.CHOICES:
        view.add_item(CompareButton(comparison.id, choice, item))
    return "\n".join(lines)[-CONTENT_MAX:], view


def reveal(comparison: Comparison, item: int, choice: str) -> str:
    it = comparison.items[item]
    chose = "a tie" if choice == "tie" else f"answer {choice.upper()}"
    whose = "the candidate" if choice == it["candidate"] else ("neither" if choice == "tie" else "what answers now")
    return (f"Question {item + 1}: you chose {chose} ({whose}). Answer {it['candidate'].upper()} was the "
            "candidate's.")


class CompareButton(IdButton, template=r"ll:cmp:(?P<comparison>\d+):(?P<action>start|a|b|tie):(?P<item>\d+)"):
    only = Only(permissions.is_expert, "Only experts compare models.")
    LABELS = {"start": ("Compare", discord.ButtonStyle.primary), "a": ("A better", discord.ButtonStyle.secondary),
              "b": ("B better", discord.ButtonStyle.secondary), "tie": ("Tie", discord.ButtonStyle.secondary)}

    def __init__(self, comparison_id: int, action: str, item: int) -> None:
        label, style = self.LABELS[action]
        super().__init__(discord.ui.Button(style=style, label=label,
                                           custom_id=f"ll:cmp:{comparison_id}:{action}:{item}"))
        self.comparison_id, self.action, self.question = comparison_id, action, item

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> CompareButton:
        return cls(int(match["comparison"]), match["action"], int(match["item"]))

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        try:
            comparison = await quality.get_comparison(store, self.comparison_id)
            before = ""
            if self.action != "start":
                counted = await quality.vote(store, comparison.id, self.question, interaction.user.id,
                                             self.action)
                before = reveal(comparison, self.question, self.action) if counted else \
                    f"Question {self.question + 1}: you had voted on it already; your first vote stands."
            nxt = await quality.next_item(store, comparison, interaction.user.id)
        except (quality.QualityError, NotFound) as exc:
            return await say(interaction, str(exc))
        if nxt is None:
            text, view = (before + "\n\n" if before else "") + "You have compared every question — thank you.", None
        else:
            text, view = card(comparison, nxt, before)
        if self.action == "start":
            await interaction.response.send_message(text, view=view or discord.utils.MISSING, ephemeral=True,
                                                    allowed_mentions=NONE)
        else:
            await interaction.response.edit_message(content=text, view=view, allowed_mentions=NONE)
        if self.action != "start" and nxt is None:  # this expert finished: the tally may have reached quorum
            await refresh_comparison(bot, store, comparison)


# ---- the regression alarm -----------------------------------------------------------------------------------


async def alert_if_regressed(bot: LoraloopBot, store: Store) -> bool:
    """Tell the community's experts channel, once per version, that its active version's 👎 rate regressed; True
    if told. Nothing outside every community (only the base answers there)."""
    if store.community is None:
        return False
    channel_id = bot.settings.experts_channel_of(store.community)
    if channel_id is None:
        return False
    regression = await quality.detect_regression(store, bot.settings.ollama_base,
                                                 bot.settings.review.quality_min_votes)
    if regression is None or not await quality.claim_alert(store, regression):
        return False
    target = await store.rollback_target()
    view = discord.ui.View(timeout=None)
    view.add_item(RollbackButton(target.id if target is not None else BASE))
    advice = (f"Admins can roll back to `{target.tag}`." if target is not None else
              f"There is no earlier fine-tuned version; admins can roll back to the base model "
              f"`{bot.settings.ollama_base}`.")
    await bot.get_partial_messageable(channel_id).send(f"{regression.text()}\n{advice}", view=view,
                                                       allowed_mentions=NONE)
    return True



# ---- rolling back -------------------------------------------------------------------------------------------


BASE = "base"  # the rollback target when no earlier fine-tune is: the clean base model


async def roll_back_to(bot: LoraloopBot, store: Store, to: int | str) -> str:
    """Roll ``store``'s community back to the named version (or BASE); the answer to show. Naming the target
    makes a retry harmless."""
    try:
        if to == BASE:
            # deploy.promotion.rollback without a target falls back to the base only when no earlier good version
            # exists: one that appeared since the confirmation was shown is not what the admin confirmed.
            target = await store.rollback_target()
            if target is not None:
                return f"Not rolled back: `{target.tag}` is the rollback target now; run /model rollback again."
            answering = await rollback(store, bot.ollama)
        else:
            answering = await rollback(store, bot.ollama, to=to)
    except AlreadyActive as exc:
        return f"Nothing to do: {exc}."
    except LoraloopError as exc:
        return f"Rollback refused: {exc}"
    return f"Rolled back: now answering with `{answering.tag}`."


class RollbackButton(IdButton, template=r"ll:rb:(?P<version>\d+|base)"):
    """Confirms a rollback to the version it carries, or to the base model (not "one back", which a second click
    would repeat)."""

    only = Only(permissions.is_admin, "Only admins can roll the model back.")

    def __init__(self, version_id: int | str) -> None:
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.danger, label="Roll back",
                                           custom_id=f"ll:rb:{version_id}"))
        self.version_id = version_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> RollbackButton:
        return cls(BASE if match["version"] == BASE else int(match["version"]))

    async def callback(self, interaction: Interaction) -> None:  # type: ignore[override]  # see Interaction
        bot = interaction.client
        await interaction.response.defer(ephemeral=True, thinking=True)  # Ollama may take longer than 3 s
        store = await bot.store_for(interaction.guild_id, interaction.user.id)
        await say(interaction, await roll_back_to(bot, store, self.version_id))
