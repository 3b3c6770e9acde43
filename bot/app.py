"""The Discord application: a ``commands.Bot`` wired to the store and Ollama, and ``run_bot``.

Every message and interaction belongs to one community (data/communities.py) or to none: a configured guild's,
a DM's when ``dm_community`` is set and the user is a member of one of its guilds, none in an unconfigured guild or
an ordinary DM. :meth:`LoraloopBot.store_for` gives the store scoped to it, :meth:`LoraloopBot.chat_for` the chat
that answers with its model and its retrieval; outside every community that is the base model without retrieval,
and the answer is recorded where no community sees it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.chat import Chat
from bot.cogs import EXTENSIONS
from bot.permissions import Refused, say
from bot.retrieval import Retriever, Retrievers
from bot.settings import Settings
from data.errors import LoraloopError
from data.store import Store
from deploy.ollama import OllamaClient

if TYPE_CHECKING:
    from bot.cogs.retrain import RetrainCog
    from bot.retrain.dispatch import Dispatcher

log = logging.getLogger("loraloop.bot")

# How long a DM user's membership of dm_community's guilds is remembered (asked of Discord when not cached).
MEMBERSHIP_TTL_S = 600.0


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
                 sync_commands: bool = True, dispatcher: Dispatcher | None = None, run_scheduler: bool = True) -> None:
        # Mentions and DMs carry their text without the privileged message-content intent; with it (the
        # operator enabled it in the developer portal) the bot also reads replies and other people's turns.
        intents = discord.Intents.default()
        intents.message_content = settings.message_content_intent
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         allowed_mentions=discord.AllowedMentions.none(), help_command=None,
                         tree_cls=LoraloopTree)
        self.settings = settings
        # The store that owns the connections, scoped to the first community (what the scheduler and the CLI
        # default to); handlers use store_for, which gives the interaction's own community.
        self.store = store or Store(settings.resolved_database_url, policy=settings.review.policy(),
                                    community=settings.community_names()[0])
        self.ollama = ollama or OllamaClient(settings.ollama_host, timeout=120)
        self.retrievers = Retrievers(settings, self.store, self.ollama, settings.community_names())
        self._chats: dict[str | None, Chat] = {}
        self._stores: dict[str | None, Store] = {}
        self._members: dict[tuple[int, int], tuple[bool, float]] = {}  # (guild, user) -> (member, when asked)
        self.sync_commands = sync_commands
        self.dispatcher = dispatcher  # None: from settings (bot/retrain/dispatch.py)
        self.run_scheduler = run_scheduler
        self.retrain: RetrainCog | None = None  # set while the retrain cog is loaded (its cog_load)

    # ---- communities --------------------------------------------------------------------------------------

    def community_store(self, community: str | None) -> Store:
        """The store scoped to ``community`` (None: outside every community), sharing the connections."""
        if community not in self._stores:
            self._stores[community] = self.store if community == self.store.community else self.store.scoped(community)
        return self._stores[community]

    async def community_of(self, guild_id: int | None, user_id: int) -> str | None:
        """The community of a message or interaction: its guild's (None for a guild the settings do not
        configure); in a DM, dm_community for a member of one of its guilds, else None."""
        if guild_id is not None:
            return self.settings.community_of_guild(guild_id)
        community = self.settings.dm_community
        if community is None:
            return None
        for member_of in self.settings.guilds_of(community):
            if await self._is_member(member_of, user_id):
                return community
        return None

    async def store_for(self, guild_id: int | None, user_id: int) -> Store:
        """The store of a message's or an interaction's community (:meth:`community_of`)."""
        return self.community_store(await self.community_of(guild_id, user_id))

    def chat_for(self, community: str | None) -> Chat:
        """The chat that answers in ``community``: its active model and its retrieval; outside every community
        the base model without retrieval."""
        if community not in self._chats:
            self._chats[community] = Chat(self.settings, self.community_store(community), self.ollama,
                                          retrieval=self.retrievers.of(community) if community else None)
        return self._chats[community]

    @property
    def retrieval(self) -> Retriever:
        """The first community's retriever (the one ``store`` is scoped to); chats use their own community's."""
        return self.retrievers.of(self.store.community or "")

    @property
    def chat(self) -> Chat:
        """The first community's chat (the one ``store`` is scoped to); messages get their own (chat_for)."""
        return self.chat_for(self.store.community)

    async def _is_member(self, guild_id: int, user_id: int) -> bool:
        """Whether the user is in the guild: the member cache first, then Discord (GET guild member, which needs
        no privileged intent), remembered for MEMBERSHIP_TTL_S."""
        guild = self.get_guild(guild_id)
        if guild is None:  # the bot is not in it (or not yet): nobody is vouched for by it
            return False
        if guild.get_member(user_id) is not None:
            return True
        known = self._members.get((guild_id, user_id))
        if known is not None and time.monotonic() - known[1] < MEMBERSHIP_TTL_S:
            return known[0]
        try:
            await guild.fetch_member(user_id)
            member = True
        except discord.NotFound:
            member = False
        except discord.HTTPException as exc:  # not remembered: asked again next time
            log.warning("could not check whether user %s is in guild %s: %s", user_id, guild_id, exc)
            return False
        self._members[(guild_id, user_id)] = (member, time.monotonic())
        return member

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def setup_hook(self) -> None:
        await self.store.migrate()
        # Rows from before communities: each to its guild's community; the rest (and the old shared model) to the
        # first one. Cheap once done: it runs on every start.
        assignment = await self.store.assign_communities(self.settings.guild_communities(),
                                                         self.settings.community_names()[0])
        if assignment.changed:
            for line in assignment.lines():
                log.info("rows from before communities: %s", line)
        # In the background: the bot answers (without retrieval) while the indexes are built from the database.
        self.retrievers.start()
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
        await self.retrievers.stop()
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
