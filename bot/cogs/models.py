"""/model status, /model history, /model rollback (admins)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import permissions
from bot.views import say
from data.models import ModelVersion
from data.store import StoreError
from deploy.gate import GateResult
from deploy.ollama import OllamaError
from deploy.pipeline import DeployFailed, rollback

if TYPE_CHECKING:
    from bot.app import LoraloopBot


def eval_table(version: ModelVersion) -> str:
    """The gate's table as stored on the version (deploy.gate.GateResult.to_dict())."""
    evaluation = version.evaluation or {}
    if not evaluation.get("scores"):
        return "no evaluation stored"
    fields = ("candidate", "active", "margin", "passed", "reason", "scores")
    return "```\n" + GateResult(**{k: evaluation.get(k) for k in fields}).table() + "\n```"


class ModelsCog(commands.GroupCog, group_name="model", group_description="The answering model."):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot
        super().__init__()

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
    async def rollback(self, interaction: discord.Interaction) -> None:
        if not permissions.is_admin(self.bot.settings, interaction.guild_id, interaction.user):
            return await say(interaction, "Only admins can roll the model back.")
        try:
            version = await rollback(self.bot.store, self.bot.ollama)
        except (DeployFailed, StoreError, OllamaError) as exc:
            return await say(interaction, f"Rollback refused: {exc}")
        await say(interaction, f"Rolled back: now answering with `{version.tag}`.")


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(ModelsCog(bot))
