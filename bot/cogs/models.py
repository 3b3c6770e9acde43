"""/model status, /model history, /model rollback (admins; its confirm button is bot/compare.py's, which the
regression alarm offers too).

Status and history show what users get and what they think of it: the served parameters, the gate's table
(its per-prompt rows attached as a file), and each version's 👍/👎 since promotion with a 95% interval next to the
version that answered before it (data/quality.py says what the numbers mean).

Each is about the community of the server it is used in (its model lineage, its active model, its feedback), and
is refused in a server the settings do not configure."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.compare import BASE, CompareButton, RollbackButton, roll_back_to
from bot.permissions import admins_only, require_community, say
from data import quality
from data.models import ModelVersion
from data.store import Store
from deploy.gate import GateResult
from deploy.options import serve_options_from

if TYPE_CHECKING:
    from bot.app import LoraloopBot
    from bot.permissions import Interaction


def eval_table(version: ModelVersion) -> str:
    """The gate's table as stored on the version (deploy.gate.GateResult.to_dict())."""
    evaluation = version.evaluation or {}
    if not evaluation.get("scores"):
        return "no evaluation stored"
    return "```\n" + GateResult.from_dict(evaluation).table() + "\n```"


def gate_file(version: ModelVersion) -> discord.File | None:
    """The gate's per-prompt rows (question, reference, both answers, scores) as a text file."""
    evaluation = version.evaluation or {}
    if not evaluation.get("rows"):
        return None
    text = GateResult.from_dict(evaluation).details()
    return discord.File(io.BytesIO(text.encode()), filename=f"gate-{version.tag.replace(':', '-')}.txt")


def options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items() if k != "stop") or "Ollama's defaults"


async def feedback_lines(bot: LoraloopBot, store: Store, active: ModelVersion | None) -> list[str]:
    """The active model's 👍/👎 since promotion next to the previous one's (the base for the first version)."""
    rates = await quality.feedback_by_version(store)
    base = bot.settings.ollama_base
    if active is None:
        return [f"Feedback on `{base}`: {rates.get(None, quality.Rate()).text()}"]
    _, before = await quality.previous_version(store)
    before_tag = before.tag if before else base
    return [f"Feedback since promotion: {rates.get(active.id, quality.Rate()).text()}",
            f"Before it, `{before_tag}`: {rates.get(before.id if before else None, quality.Rate()).text()}"]


class ModelsCog(commands.GroupCog, group_name="model", group_description="The answering model."):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot
        super().__init__()

    async def cog_load(self) -> None:
        # The blind comparison's buttons too: quality lives with the models.
        self.bot.add_dynamic_items(RollbackButton, CompareButton)

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]  # see Interaction
        return await require_community(interaction)

    @app_commands.command(name="status", description="Which model answers, since when, how it scored, how it is liked.")
    async def status(self, interaction: Interaction) -> None:
        store = await self.bot.store_for(interaction.guild_id, interaction.user.id)
        active = await store.active_model_version()
        feedback = "\n".join(await feedback_lines(self.bot, store, active))
        if active is None:
            served = options_text(serve_options_from(self.bot.settings))
            return await say(interaction, f"Answering with the base model `{self.bot.settings.ollama_base}` "
                                          f"(no fine-tuned version promoted yet).\nServed with: {served}.\n{feedback}")
        when = discord.utils.format_dt(active.promoted_at, "R") if active.promoted_at else "?"
        served = options_text((active.artifacts or {}).get("parameters") or {})
        text = (f"Answering with `{active.tag}` (base `{active.ollama_base}`), promoted {when}.\n"
                f"Served with: {served}.\n{feedback}\n{eval_table(active)}")[:2000]
        file = gate_file(active)
        if file is None:
            return await say(interaction, text)
        await interaction.response.send_message(text, file=file, ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())

    @app_commands.command(name="history", description="The model versions, newest first, with their 👍/👎.")
    async def history(self, interaction: Interaction) -> None:
        store = await self.bot.store_for(interaction.guild_id, interaction.user.id)
        versions = await store.list_model_versions()
        active = await store.active_model_version()
        if not versions:
            return await say(interaction, "No model versions yet.")
        rates = await quality.feedback_by_version(store)
        lines = [f"{'▶' if active and v.id == active.id else '·'} `{v.tag}` {v.status}"
                 + (f" · {rates[v.id].text()}" if v.id in rates else "")
                 + (f" — {v.failure_reason}" if v.failure_reason else "") for v in versions[:15]]
        lines.append(f"· base `{self.bot.settings.ollama_base}` · {rates.get(None, quality.Rate()).text()}")
        await say(interaction, "\n".join(lines)[:2000])

    @app_commands.command(name="rollback", description="Switch back to the previous good model (admins).")
    @app_commands.describe(to="The version to switch back to (its tag, or `base`); without it, the target is shown "
                              "first.")
    @admins_only("Only admins can roll the model back.")
    async def rollback(self, interaction: Interaction, to: str | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        store = await self.bot.store_for(interaction.guild_id, interaction.user.id)
        if to is not None:
            return await say(interaction, await roll_back_to(self.bot, store, to.strip()))
        active = await store.active_model_version()
        if active is None:
            return await say(interaction, f"Nothing to roll back: the base model `{self.bot.settings.ollama_base}` "
                                          "answers.")
        # No earlier good version: the clean base model it was built on is the target.
        target = await store.rollback_target()
        view = discord.ui.View(timeout=None)
        view.add_item(RollbackButton(target.id if target is not None else BASE))
        to_what = f"`{target.tag}`" if target is not None else f"the base model `{active.ollama_base}`"
        await interaction.followup.send(f"Roll back from `{active.tag}` to {to_what}?", view=view, ephemeral=True,
                                        allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(ModelsCog(bot))
