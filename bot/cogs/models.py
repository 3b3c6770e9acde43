"""/model status, /model history, /model rollback (admins) and its confirm button."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import permissions
from bot.views import core, say
from data.models import ModelVersion
from data.store import StoreError
from deploy.gate import GateResult
from deploy.ollama import OllamaError
from deploy.pipeline import AlreadyActive, DeployFailed, rollback

if TYPE_CHECKING:
    from bot.app import LoraloopBot


def eval_table(version: ModelVersion) -> str:
    """The gate's table as stored on the version (deploy.gate.GateResult.to_dict())."""
    evaluation = version.evaluation or {}
    if not evaluation.get("scores"):
        return "no evaluation stored"
    fields = ("candidate", "active", "margin", "passed", "reason", "scores")
    return "```\n" + GateResult(**{k: evaluation.get(k) for k in fields}).table() + "\n```"


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
        self.bot.add_dynamic_items(RollbackButton)

    @app_commands.command(name="status", description="Which model answers, since when, and how it scored.")
    async def status(self, interaction: discord.Interaction) -> None:
        active = await self.bot.store.active_model_version()
        if active is None:
            return await say(interaction, f"Answering with the base model `{self.bot.settings.ollama_base}` "
                                          "(no fine-tuned version promoted yet).")
        when = discord.utils.format_dt(active.promoted_at, "R") if active.promoted_at else "?"
        await say(interaction, f"Answering with `{active.tag}` (base `{active.ollama_base}`), promoted {when}.\n"
                               f"{eval_table(active)}"[:2000])

    @app_commands.command(name="history", description="The model versions, newest first.")
    async def history(self, interaction: discord.Interaction) -> None:
        versions = await self.bot.store.list_model_versions()
        active = await self.bot.store.active_model_version()
        if not versions:
            return await say(interaction, "No model versions yet.")
        lines = [f"{'▶' if active and v.id == active.id else '·'} `{v.tag}` {v.status}"
                 + (f" — {v.failure_reason}" if v.failure_reason else "") for v in versions[:20]]
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
