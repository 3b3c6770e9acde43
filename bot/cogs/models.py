"""/model status, /model history, /model rollback (admins) and its confirm button.

Status and history show what users get and what they think of it: the served parameters, the gate's table
(its per-prompt rows attached as a file), and each version's 👍/👎 since promotion with a 95% interval next to the
version that answered before it (data/quality.py says what the numbers mean)."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import permissions
from bot.views import core, say
from data import quality
from data.models import ModelVersion
from data.store import StoreError
from deploy.gate import GateResult
from deploy.ollama import OllamaError
from deploy.pipeline import AlreadyActive, DeployFailed, rollback, serve_options_from

if TYPE_CHECKING:
    from bot.app import LoraloopBot


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


async def feedback_lines(bot: LoraloopBot, active: ModelVersion | None) -> list[str]:
    """The active model's 👍/👎 since promotion next to the previous one's (the base for the first version)."""
    rates = await quality.feedback_by_version(bot.store)
    base = bot.settings.ollama_base
    if active is None:
        return [f"Feedback on `{base}`: {rates.get(None, quality.Rate()).text()}"]
    _, before = await quality.previous_version(bot.store)
    before_tag = before.tag if before else base
    return [f"Feedback since promotion: {rates.get(active.id, quality.Rate()).text()}",
            f"Before it, `{before_tag}`: {rates.get(before.id if before else None, quality.Rate()).text()}"]


async def roll_back_to(bot: LoraloopBot, to: int | str) -> str:
    """Roll back to the named version; the answer to show. Naming the target makes a retry harmless."""
    try:
        version = await rollback(bot.store, bot.ollama, to=to)
    except AlreadyActive as exc:
        return f"Nothing to do: {exc}."
    except (DeployFailed, StoreError, OllamaError) as exc:
        return f"Rollback refused: {exc}"
    return f"Rolled back: now answering with `{version.tag}`."


class RollbackButton(discord.ui.DynamicItem[discord.ui.Button], template=r"ll:rb:(?P<version>\d+)"):
    """Confirms a rollback to the version it carries (not "one back", which a second click would repeat)."""

    def __init__(self, version_id: int) -> None:
        super().__init__(discord.ui.Button(style=discord.ButtonStyle.danger, label="Roll back",
                                           custom_id=f"ll:rb:{version_id}"))
        self.version_id = version_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> RollbackButton:
        return cls(int(match["version"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = core(interaction)
        if not permissions.is_admin(bot.settings, interaction.guild_id, interaction.user):
            return await say(interaction, "Only admins can roll the model back.")
        await interaction.response.defer(ephemeral=True, thinking=True)  # Ollama may take longer than 3 s
        await say(interaction, await roll_back_to(bot, self.version_id))


class ModelsCog(commands.GroupCog, group_name="model", group_description="The answering model."):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot
        super().__init__()

    async def cog_load(self) -> None:
        from bot.compare import DYNAMIC_ITEMS  # the blind comparison's buttons: quality lives with the models

        self.bot.add_dynamic_items(RollbackButton, *DYNAMIC_ITEMS)

    @app_commands.command(name="status", description="Which model answers, since when, how it scored, how it is liked.")
    async def status(self, interaction: discord.Interaction) -> None:
        active = await self.bot.store.active_model_version()
        feedback = "\n".join(await feedback_lines(self.bot, active))
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
    async def history(self, interaction: discord.Interaction) -> None:
        versions = await self.bot.store.list_model_versions()
        active = await self.bot.store.active_model_version()
        if not versions:
            return await say(interaction, "No model versions yet.")
        rates = await quality.feedback_by_version(self.bot.store)
        lines = [f"{'▶' if active and v.id == active.id else '·'} `{v.tag}` {v.status}"
                 + (f" · {rates[v.id].text()}" if v.id in rates else "")
                 + (f" — {v.failure_reason}" if v.failure_reason else "") for v in versions[:15]]
        lines.append(f"· base `{self.bot.settings.ollama_base}` · {rates.get(None, quality.Rate()).text()}")
        await say(interaction, "\n".join(lines)[:2000])

    @app_commands.command(name="rollback", description="Switch back to the previous good model (admins).")
    @app_commands.describe(to="The version to switch back to (its tag); without it, the target is shown first.")
    async def rollback(self, interaction: discord.Interaction, to: str | None = None) -> None:
        if not permissions.is_admin(self.bot.settings, interaction.guild_id, interaction.user):
            return await say(interaction, "Only admins can roll the model back.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        if to is not None:
            return await say(interaction, await roll_back_to(self.bot, to.strip()))
        active = await self.bot.store.active_model_version()
        target = await self.bot.store.rollback_target()
        if target is None:
            return await say(interaction, "Nothing to roll back to: there is no earlier good model version.")
        view = discord.ui.View(timeout=None)
        view.add_item(RollbackButton(target.id))
        now = f"`{active.tag}`" if active else f"the base model `{self.bot.settings.ollama_base}`"
        await interaction.followup.send(f"Roll back from {now} to `{target.tag}`?", view=view, ephemeral=True,
                                        allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(ModelsCog(bot))
