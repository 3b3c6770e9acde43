"""Review: /review shows the next pending example the caller did not write, with rating buttons."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import permissions
from bot.views import say, show_next_for_review

if TYPE_CHECKING:
    from bot.app import LoraloopBot


class ReviewCog(commands.Cog):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot

    @app_commands.command(name="review", description="Rate the next example waiting for review (experts).")
    @app_commands.guild_only()
    async def review(self, interaction: discord.Interaction) -> None:
        if not permissions.is_expert(self.bot.settings, interaction.guild_id, interaction.user):
            return await say(interaction, "Only experts can review examples.")
        await show_next_for_review(interaction)


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(ReviewCog(bot))
