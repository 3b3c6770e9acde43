"""Chat: answer mentions, DMs and /ask with the active model of the chat's community (the path itself is in
bot/chat.py). A server the settings do not configure, and a DM without ``dm_community``, get the base model
without retrieval, recorded outside every community; with ``dm_community``, DMs are answered for members of its
servers only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat import NO_MENTIONS, conversation_for, hidden_note, message_text, reply_to
from bot.permissions import say
from bot.views import FeedbackButton, UsedPairsButton, feedback_view

if TYPE_CHECKING:
    from bot.app import LoraloopBot
    from bot.permissions import Interaction

log = logging.getLogger(__name__)


class ChatCog(commands.Cog):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot
        self._last_ask: dict[int, float] = {}

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(FeedbackButton, UsedPairsButton)

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
        reads_all = self.bot.intents.message_content
        if not message_text(message, me.id):
            if guild_id is not None and not reads_all and not message.content:
                # A ping-reply whose text Discord withheld (a reply to an /ask answer): say how to go on.
                await _note(message, HIDDEN_REPLY.format(me=me.mention))
            return
        if len(message.content) > self.bot.settings.max_field_chars:
            await _note(message, f"That message is too long for me ({len(message.content)} characters; the limit "
                                 f"is {self.bot.settings.max_field_chars}).")
            return
        left = self._cooldown_left(message.author.id)
        if left:
            await _note(message, f"Please wait {left:.0f} s before asking again.", delete_after=max(left, 3))
            return
        community = await self.bot.community_of(guild_id, message.author.id)
        if guild_id is None and community is None and self.bot.settings.dm_community is not None:
            await _note(message, DM_MEMBERS_ONLY)
            return
        chat = self.bot.chat_for(community)
        # The typing indicator is asked for beside the work before the answer, not ahead of it (a round trip
        # to Discord), and always before the first message: posted after it, it would linger.
        typing = asyncio.create_task(_typing(message.channel))

        async def send_first(text: str) -> discord.Message:
            await typing
            return await message.channel.send(text, reference=message.to_reference(fail_if_not_exists=False),
                                              mention_author=False, allowed_mentions=NO_MENTIONS)

        try:
            conversation = await conversation_for(message, me.id, store=chat.store, reads_all=reads_all)
            await chat.answer(
                conversation.turns, send_first, send_more=reply_to,
                note=hidden_note(conversation.hidden) if conversation.hidden else "",
                make_view=feedback_view, guild_id=guild_id, channel_id=message.channel.id,
                user_id=message.author.id,
            )
        finally:
            await typing

    @app_commands.command(name="ask", description="Ask the bot a question.")
    @app_commands.describe(question="What do you want to know?")
    async def ask(self, interaction: Interaction, question: app_commands.Range[str, 1, 4000]) -> None:
        if len(question) > self.bot.settings.max_field_chars:
            return await say(interaction, f"That question is too long (limit {self.bot.settings.max_field_chars}).")
        left = self._cooldown_left(interaction.user.id)
        if left:
            return await say(interaction, f"Please wait {left:.0f} s before asking again.")
        await interaction.response.defer(thinking=True)  # a DM's membership may be asked of Discord first
        community = await self.bot.community_of(interaction.guild_id, interaction.user.id)
        if interaction.guild_id is None and community is None and self.bot.settings.dm_community is not None:
            return await say(interaction, DM_MEMBERS_ONLY)

        async def first(text: str) -> discord.Message:
            return await interaction.followup.send(text, wait=True, allowed_mentions=NO_MENTIONS)

        # Later chunks are follow-ups too: they need no permission in the channel, where a reply would.
        async def more(previous: discord.Message, text: str, view: discord.ui.View | None) -> discord.Message:
            return await interaction.followup.send(text, wait=True, allowed_mentions=NO_MENTIONS,
                                                   view=view if view is not None else discord.utils.MISSING)

        await self.bot.chat_for(community).answer(
            [{"role": "user", "content": question}], first, send_more=more, make_view=feedback_view,
            guild_id=interaction.guild_id, channel_id=interaction.channel_id, user_id=interaction.user.id,
        )


DM_MEMBERS_ONLY = "I answer direct messages for members of the servers I am set up in only; ask me there."
HIDDEN_REPLY = ("I can't read that reply: Discord only shows me messages that mention me. Mention me ({me}) in "
                "your message to go on, or ask an admin to enable the message content intent.")


async def _note(message: discord.Message, text: str, **kwargs: Any) -> None:
    """A short reply; a question deleted meanwhile or a channel the bot may not post in is only logged."""
    try:
        await message.channel.send(text, reference=message.to_reference(fail_if_not_exists=False),
                                   mention_author=False, allowed_mentions=NO_MENTIONS, **kwargs)
    except discord.HTTPException as exc:
        log.warning("could not reply in channel %s: %s", message.channel.id, exc)


async def _typing(channel: discord.abc.Messageable) -> None:
    with contextlib.suppress(discord.HTTPException):  # a courtesy; the answer says what fails
        await channel.typing()


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(ChatCog(bot))
