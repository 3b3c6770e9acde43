"""Teaching: /teach opens a modal; /import takes a file of pairs (experts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import permissions
from bot.views import TeachModal, say
from data import formats
from data.importer import import_bytes

if TYPE_CHECKING:
    from bot.app import LoraloopBot

FORMAT_CHOICES = [app_commands.Choice(name=f, value=f) for f in ("auto", *formats.FORMATS)]


class TeachCog(commands.Cog):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot

    @app_commands.command(name="teach", description="Teach the bot a question and its answer.")
    @app_commands.guild_only()
    async def teach(self, interaction: discord.Interaction) -> None:
        if not permissions.may_teach(self.bot.settings, interaction.guild_id, interaction.user):
            return await say(interaction, "Only experts can teach the bot on this server.")
        await interaction.response.send_modal(TeachModal())

    @app_commands.command(name="import", description="Import a file of Q&A pairs (experts).")
    @app_commands.describe(file="alpaca / sharegpt / OpenAI / LLaMA-Factory JSON(L), or CSV question,answer")
    @app_commands.choices(format=FORMAT_CHOICES)
    @app_commands.guild_only()
    async def import_(self, interaction: discord.Interaction, file: discord.Attachment,
                      format: str = "auto") -> None:
        settings = self.bot.settings
        if not permissions.is_expert(settings, interaction.guild_id, interaction.user):
            return await say(interaction, "Only experts can import files.")
        if file.size > settings.max_import_bytes:
            return await say(interaction, f"`{file.filename}` is {file.size:,} bytes; the limit is "
                                          f"{settings.max_import_bytes:,} bytes. Split it into smaller files.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await file.read()
            report = await import_bytes(
                self.bot.store, data, file.filename, format=format, author_id=interaction.user.id,
                guild_id=interaction.guild_id, skip_invalid=True, max_chars=settings.max_field_chars,
            )
        except formats.FormatError as exc:
            return await say(interaction, f"`{file.filename}` was not imported: {exc}")
        except discord.HTTPException as exc:
            return await say(interaction, f"Could not download `{file.filename}` from Discord ({exc.status}).")
        lines = [f"`{file.filename}` ({report.format}): imported **{report.imported}** for review, "
                 f"duplicates **{len(report.duplicates)}**, rejected **{len(report.errors)}**."]
        for error in report.errors[:10]:
            lines.append(f"• {error.location}: {error.message}")
        if len(report.errors) > 10:
            lines.append(f"… and {len(report.errors) - 10} more.")
        await say(interaction, "\n".join(lines)[:2000])


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(TeachCog(bot))
