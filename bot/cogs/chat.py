"""Chat: answer mentions, DMs and /ask with the active model (the path itself is in bot/chat.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat import NO_MENTIONS, conversation_for, message_text
from bot.views import feedback_view, say

if TYPE_CHECKING:
    from bot.app import LoraloopBot


class ChatCog(commands.Cog):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot
        self._last_ask: dict[int, float] = {}

    def _cooldown_left(self, user_id: int) -> float:
        now = time.monotonic()
        left = self._last_ask.get(user_id, float("-inf")) + self.bot.settings.chat_cooldown_s - now
        if left <= 0:
            self._last_ask[user_id] = now
        return max(left, 0.0)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        me = self.bot.user
        if me is None or message.author.bot:
            return
        guild_id = message.guild.id if message.guild else getattr(message.channel, "guild_id", None)
        if guild_id is not None and me.id not in {u.id for u in message.mentions}:
            return
        if not message_text(message, me.id):
            return
        if len(message.content) > self.bot.settings.max_field_chars:
            await message.reply(f"That message is too long for me ({len(message.content)} characters; the limit "
                                f"is {self.bot.settings.max_field_chars}).", mention_author=False,
                                allowed_mentions=NO_MENTIONS)
            return
        left = self._cooldown_left(message.author.id)
        if left:
            await message.reply(f"Please wait {left:.0f} s before asking again.", mention_author=False,
                                allowed_mentions=NO_MENTIONS, delete_after=max(left, 3))
            return
        history = await conversation_for(message, me.id)
        async with message.channel.typing():
            await self.bot.chat.answer(
                history,
                lambda text: message.reply(text, mention_author=False, allowed_mentions=NO_MENTIONS),
                make_view=feedback_view, guild_id=guild_id,
                channel_id=message.channel.id, user_id=message.author.id,
            )

    @app_commands.command(name="ask", description="Ask the bot a question.")
    @app_commands.describe(question="What do you want to know?")
    async def ask(self, interaction: discord.Interaction, question: app_commands.Range[str, 1, 4000]) -> None:
        if len(question) > self.bot.settings.max_field_chars:
            return await say(interaction, f"That question is too long (limit {self.bot.settings.max_field_chars}).")
        left = self._cooldown_left(interaction.user.id)
        if left:
            return await say(interaction, f"Please wait {left:.0f} s before asking again.")
        await interaction.response.defer(thinking=True)

        async def first(text: str) -> discord.Message:
            return await interaction.followup.send(text, wait=True, allowed_mentions=NO_MENTIONS)

        await self.bot.chat.answer(
            [{"role": "user", "content": question}], first, make_view=feedback_view,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id, user_id=interaction.user.id,
        )


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(ChatCog(bot))
