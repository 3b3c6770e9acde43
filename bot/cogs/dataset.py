"""/dataset stats and /dataset export."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import permissions
from bot.views import say
from data import formats
from data.conversation import Conversation

if TYPE_CHECKING:
    from bot.app import LoraloopBot


class DatasetCog(commands.GroupCog, group_name="dataset", group_description="The teaching dataset."):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="stats", description="Counts by status and source, agreement, new examples.")
    async def stats(self, interaction: discord.Interaction) -> None:
        s = await self.bot.store.dataset_stats()
        status = ", ".join(f"{k} {v}" for k, v in s.by_status.items())
        source = ", ".join(f"{k} {v}" for k, v in s.by_source.items())
        agreement = "n/a" if s.agreement is None else f"{s.agreement:.0%}"
        await say(interaction, f"**Examples:** {s.total} ({status})\n**Sources:** {source}\n"
                               f"**Ratings:** {s.ratings} on {s.rated_examples} examples · agreement {agreement}\n"
                               f"**Approved since the current model:** {s.new_approved_since_active}\n"
                               f"**Answer feedback:** 👍 {s.feedback_up} · 👎 {s.feedback_down}")

    @app_commands.command(name="export", description="Download the approved examples (experts).")
    @app_commands.choices(format=[app_commands.Choice(name=f, value=f) for f in formats.FORMATS])
    async def export(self, interaction: discord.Interaction, format: str) -> None:
        if not permissions.is_expert(self.bot.settings, interaction.guild_id, interaction.user):
            return await say(interaction, "Only experts can export the dataset.")
        examples = await self.bot.store.approved_examples()
        conversations = [Conversation.from_dicts(e.messages, e.tags, e.tools) for e in examples]
        try:
            payload = formats.dumps(conversations, format, jsonl=format != "csv")
        except ValueError as exc:
            return await say(interaction, f"Cannot export as {format}: {exc}")
        suffix = "csv" if format == "csv" else "jsonl"
        await interaction.response.send_message(
            f"{len(conversations)} approved examples ({format}).", ephemeral=True,
            file=discord.File(io.BytesIO(payload), filename=f"loraloop-{format}.{suffix}"))


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(DatasetCog(bot))
