"""Teaching: /teach opens a modal; /import takes a file of pairs (experts). Both write to the community of the
server they are used in, and are refused in a server the settings do not configure."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import permissions
from bot.permissions import experts_only, require_community, say, teachers_only
from bot.views import TeachModal, check_quota
from data import formats
from data.errors import LoraloopError
from data.importer import import_bytes

if TYPE_CHECKING:
    from bot.app import LoraloopBot
    from bot.permissions import Interaction

FORMAT_CHOICES = [app_commands.Choice(name=f, value=f) for f in ("auto", *formats.FORMATS)]


class TeachCog(commands.Cog):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]  # see Interaction
        return await require_community(interaction)

    @app_commands.command(name="teach", description="Teach the bot a question and its answer.")
    @app_commands.guild_only()
    @teachers_only("Only experts can teach the bot on this server.")
    async def teach(self, interaction: Interaction) -> None:
        if not await check_quota(interaction):  # before the form, so nobody types a pair that cannot be kept
            return
        await interaction.response.send_modal(TeachModal(timeout=900))  # an abandoned form is dropped

    @app_commands.command(name="import", description="Import a file of Q&A pairs (experts).")
    @app_commands.describe(file="alpaca / sharegpt / OpenAI / LLaMA-Factory JSON(L), or CSV question,answer")
    @app_commands.choices(format=FORMAT_CHOICES)
    @app_commands.guild_only()
    @experts_only("Only experts can import files.")
    async def import_(self, interaction: Interaction, file: discord.Attachment,
                      format: str = "auto") -> None:
        settings = self.bot.settings
        store = await self.bot.store_for(interaction.guild_id, interaction.user.id)
        if file.size > settings.max_import_bytes:
            return await say(interaction, f"`{file.filename}` is {file.size:,} bytes; the limit is "
                                          f"{settings.max_import_bytes:,} bytes. Split it into smaller files.")
        # The hourly limit: refused before the download when nothing is left, after counting (not parsing) when
        # the file's records are more than what is left (nothing is written then).
        try:
            remaining = await permissions.check_submission_quota(store, settings, interaction.user.id)
        except permissions.RateLimited as exc:
            return await say(interaction, f"`{file.filename}` was not imported: {exc}.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await file.read()
            if remaining is not None:
                # Counted without building the records (a parse of a big file takes seconds and hundreds of MB),
                # no further than the limit, off the event loop.
                limit = settings.max_pairs_per_user_hour
                count = await asyncio.to_thread(formats.count_records, data, file.filename, format,
                                                stop_at=limit + 1)
                if count > limit:
                    return await say(interaction, f"`{file.filename}` was not imported: it holds more than the limit "
                                                  f"of {limit:,} pairs per hour per user: split it into parts of at "
                                                  f"most {limit:,}.")
                await permissions.check_submission_quota(store, settings, interaction.user.id, wanted=count)
            report = await import_bytes(
                store, data, file.filename, format=format, author_id=interaction.user.id,
                guild_id=interaction.guild_id, skip_invalid=True, max_chars=settings.max_stored_chars,
                hourly_limit=settings.max_pairs_per_user_hour,  # decided again as it stores: imports may race
            )
        except LoraloopError as exc:
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
