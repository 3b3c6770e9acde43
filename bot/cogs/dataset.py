"""/dataset stats and /dataset export: the community of the server they are used in (refused in a server the
settings do not configure)."""

from __future__ import annotations

import asyncio
import gzip
import io
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.permissions import experts_only, require_community, say
from data import formats
from data.conversation import Conversation
from data.preferences import preference_summary

if TYPE_CHECKING:
    from bot.app import LoraloopBot
    from bot.permissions import Interaction

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's limit without boosts, when the interaction does not say
UPLOAD_TOO_LARGE = 40005  # Discord's error code for an upload over the limit


class DatasetCog(commands.GroupCog, group_name="dataset", group_description="The teaching dataset."):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]  # see Interaction
        return await require_community(interaction)

    @app_commands.command(name="stats", description="Counts by status and source, agreement, new examples.")
    async def stats(self, interaction: Interaction) -> None:
        store = await self.bot.store_for(interaction.guild_id, interaction.user.id)
        s = await store.dataset_stats()
        status = ", ".join(f"{k} {v}" for k, v in s.by_status.items())
        source = ", ".join(f"{k} {v}" for k, v in s.by_source.items())
        agreement = "n/a" if s.agreement is None else f"{s.agreement:.0%}"
        await say(interaction, f"**Examples:** {s.total} ({status})\n**Sources:** {source}\n"
                               f"**Ratings:** {s.ratings} on {s.rated_examples} examples · agreement {agreement}\n"
                               f"**Approved since the current model:** {s.new_approved_since_active}\n"
                               f"**Answer feedback:** 👍 {s.feedback_up} · 👎 {s.feedback_down}\n"
                               f"**Preference pairs:** {preference_summary(s.preferences)}")

    @app_commands.command(name="export", description="Download the approved examples (experts).")
    @app_commands.choices(format=[app_commands.Choice(name=f, value=f) for f in formats.FORMATS])
    @experts_only("Only experts can export the dataset.")
    async def export(self, interaction: Interaction, format: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # the whole dataset is read and encoded
        store = await self.bot.store_for(interaction.guild_id, interaction.user.id)
        examples = await store.approved_examples()
        conversations = [Conversation.from_dicts(e.messages, e.tags, e.tools) for e in examples]
        filename = f"loraloop-{format}.{'csv' if format == 'csv' else 'jsonl'}"
        try:
            payload = await asyncio.to_thread(formats.dumps, conversations, format, jsonl=format != "csv")
        except ValueError as exc:
            return await say(interaction, f"Cannot export as {format}: {exc}")
        limit = interaction.filesize_limit or DEFAULT_UPLOAD_LIMIT  # the payload's attachment_size_limit
        upload = await asyncio.to_thread(fit_upload, payload, filename, limit)
        text = f"{len(conversations)} approved examples ({format})."
        if upload is None:
            return await say(interaction, f"{text} {too_large(len(payload), limit, format, filename)}")
        name, data = upload
        if name != filename:
            text += f" Gzip-compressed: {len(payload):,} bytes do not fit this channel's upload limit."
        try:
            await interaction.followup.send(text, ephemeral=True, file=discord.File(io.BytesIO(data), filename=name))
        except discord.HTTPException as exc:
            if exc.code != UPLOAD_TOO_LARGE:
                raise
            await say(interaction, f"{text} {too_large(len(payload), limit, format, filename)}")


def fit_upload(payload: bytes, filename: str, limit: int) -> tuple[str, bytes] | None:
    """The file to upload within ``limit`` bytes: as is, else gzip-compressed, else None."""
    if len(payload) <= limit:
        return filename, payload
    packed = gzip.compress(payload, mtime=0)
    return (filename + ".gz", packed) if len(packed) <= limit else None


def too_large(size: int, limit: int, format: str, filename: str) -> str:
    return (f"The export is {size:,} bytes, over this channel's upload limit of {limit:,} bytes even compressed. "
            f"On the bot's host, run `loraloop dataset export --format {format} --out {filename}`.")


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(DatasetCog(bot))


