"""The Discord application: a ``commands.Bot`` wired to the store and Ollama, and ``run_bot``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from bot.chat import Chat
from bot.cogs import EXTENSIONS
from bot.retrieval import Retriever
from bot.settings import Settings
from data.errors import LoraloopError
from data.review import ReviewPolicy
from data.store import Store
from discord import app_commands
from discord.ext import commands

from bot.permissions import Refused, say
from deploy.ollama import OllamaClient

if TYPE_CHECKING:
    from bot.cogs.retrain import RetrainCog

log = logging.getLogger("loraloop.bot")


class StartupError(LoraloopError):
    """The bot could not start; the message is for the operator and never contains the token."""


class LoraloopTree(app_commands.CommandTree["LoraloopBot"]):
    async def on_error(self, interaction: discord.Interaction[LoraloopBot], error: app_commands.AppCommandError,
                       /) -> None:
        """A refused check (``@experts_only`` …) is the user's answer, not an error to log."""
        if isinstance(error, Refused):
            return await say(interaction, str(error))
        await super().on_error(interaction, error)


class LoraloopBot(commands.Bot):
    def __init__(self, settings: Settings, *, store: Store | None = None, ollama: OllamaClient | None = None,
                 sync_commands: bool = True, dispatcher: Any = None, run_scheduler: bool = True) -> None:
        # Mentions and DMs carry their text without the privileged message-content intent; with it (the
        # operator enabled it in the developer portal) the bot also reads replies and other people's turns.
        intents = discord.Intents.default()
        intents.message_content = settings.message_content_intent
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         allowed_mentions=discord.AllowedMentions.none(), help_command=None,
                         tree_cls=LoraloopTree)
        self.settings = settings
        self.store = store or Store(settings.resolved_database_url, policy=ReviewPolicy(
            settings.rating_quorum, settings.approve_mean, settings.reject_mean))
        self.ollama = ollama or OllamaClient(settings.ollama_host, timeout=120)
        self.retrieval = Retriever(settings, self.store, self.ollama)
        self.chat = Chat(settings, self.store, self.ollama, retrieval=self.retrieval)
        self.sync_commands = sync_commands
        self.dispatcher = dispatcher  # None: from settings (bot/retrain/dispatch.py)
        self.run_scheduler = run_scheduler
        self.retrain: RetrainCog | None = None  # set while the retrain cog is loaded (its cog_load)

    async def setup_hook(self) -> None:
        await self.store.migrate()
        # In the background: the bot answers (without retrieval) while the index is built from the database.
        self.retrieval.start()
        for extension in EXTENSIONS:
            await self.load_extension(extension)  # each cog registers the persistent buttons it owns
        if not self.sync_commands:
            return
        guild_ids = [g for g in self.settings.guilds if g]
        if guild_ids:  # guild commands update instantly
            for guild_id in guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: the chat cog answers mentions and DMs; everything else is a slash command."""

    async def close(self) -> None:
        await self.retrieval.stop()
        await super().close()
        await self.ollama.close()
        await self.store.close()


async def start(settings: Settings) -> None:
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    bot = LoraloopBot(settings)
    try:
        async with bot:
            await bot.start(token)
    except discord.LoginFailure:
        raise StartupError("Discord rejected DISCORD_TOKEN (401 Unauthorized): reset the bot token in the "
                           "Discord developer portal and set it again") from None
    except discord.PrivilegedIntentsRequired:
        raise StartupError("Discord refused the gateway intents: message_content_intent is on in the settings "
                           "but the Message Content Intent is not enabled for the bot in the developer portal"
                           ) from None
    except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
        raise StartupError(f"cannot reach Discord ({exc.__class__.__name__}); check the network") from None
    except discord.HTTPException as exc:
        raise StartupError(f"Discord answered {exc.status} while starting: {exc.text[:200]}") from None


def run_bot(settings: Settings) -> None:
    """Run until stopped; start-up failures become one clear line and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(start(settings))
    except StartupError as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        pass
