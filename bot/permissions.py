"""Who may do what: expert and admin roles per guild, from the settings; where teaching happens at all (a guild
the settings configure, which belongs to a community); and how much one user may submit.

Commands declare their rule with ``@experts_only(...)`` / ``@admins_only(...)`` / ``@teachers_only(...)`` (an
``app_commands.check``: a refusal is a :class:`Refused` the command tree answers ephemerally); cogs whose every
command works on a community's knowledge refuse outside one in their ``interaction_check``
(:func:`require_community`); buttons that carry ids subclass :class:`IdButton`, whose ``interaction_check`` applies
the same refusal (unless the button says it works anywhere) and then the button's :class:`Only` rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, TypeVar

import discord
from discord import app_commands

from bot.settings import Settings
from data.errors import LoraloopError
from data.models import utcnow
from data.store import Store

if TYPE_CHECKING:
    from bot.app import LoraloopBot

    # Every interaction loraloop handles is its bot's. discord.py types the methods a cog, modal or button
    # overrides (interaction_check, on_submit, callback) for any client: ``Interaction[ClientT]`` with a type
    # variable of the method, not of the class, so no subclass can name its own client without mypy's [override]
    # (discord.py fixed this for app_commands.Transformer alone, #9936). Those overrides take this alias and say
    # ``# type: ignore[override]  # see Interaction``; from_custom_id, which reads no client, takes any interaction.
    Interaction = discord.Interaction[LoraloopBot]

SUBMISSION_WINDOW = timedelta(hours=1)


class RateLimited(LoraloopError):
    """A submission over the per-user hourly limit; ``str(exc)`` is the message for the user."""

    def __init__(self, message: str, retry_at: datetime | None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


def _role_ids(user: discord.abc.User) -> set[int]:
    return {role.id for role in getattr(user, "roles", [])} | {int(r) for r in getattr(user, "_roles", [])}


def is_admin(settings: Settings, guild_id: int | None, user: discord.abc.User) -> bool:
    if guild_id is None:
        return False
    return bool(_role_ids(user) & set(settings.roles_for(guild_id).admin_role_ids))


def is_expert(settings: Settings, guild_id: int | None, user: discord.abc.User) -> bool:
    """Experts are members with an expert role; admins count as experts."""
    if guild_id is None:
        return False
    roles = settings.roles_for(guild_id)
    return bool(_role_ids(user) & set(roles.expert_role_ids)) or is_admin(settings, guild_id, user)


def may_teach(settings: Settings, guild_id: int | None, user: discord.abc.User) -> bool:
    """/teach and "Suggest a better answer" follow one rule: experts, or anyone where the guild allows it.

    In a DM there is no guild whose roles could vouch for the user, so the answer there is no.
    """
    return is_expert(settings, guild_id, user) or (
        guild_id is not None and settings.roles_for(guild_id).allow_non_expert_teach
    )


async def check_submission_quota(store: Store, settings: Settings, user_id: int, wanted: int = 1,
                                 now: datetime | None = None) -> int | None:
    """How many more pairs ``user_id`` may submit this hour (None: no limit); raises RateLimited when
    ``wanted`` more would go over ``settings.max_pairs_per_user_hour``."""
    limit = settings.max_pairs_per_user_hour
    if limit == 0:
        return None
    now = now or utcnow()
    used = await store.count_submissions(user_id, now - SUBMISSION_WINDOW)
    remaining = max(limit - used, 0)
    if wanted <= remaining:
        return remaining
    # The store gives a count, not the times: an hour from now every current submission has left the window,
    # so that is when the user can surely submit again (possibly earlier).
    retry_at = now + SUBMISSION_WINDOW
    when = f"<t:{int(retry_at.timestamp())}:R>"
    if wanted > limit:
        raise RateLimited(f"that is {wanted:,} pairs, more than the limit of {limit:,} pairs per hour per user: "
                          f"split it into parts of at most {limit:,}", None)
    if remaining == 0:
        raise RateLimited(f"you have submitted {used:,} pairs in the last hour; the limit is {limit:,} per hour. "
                          f"You can submit again {when} at the latest", retry_at)
    raise RateLimited(f"that is {wanted:,} pairs, but you can submit only {remaining:,} more this hour "
                      f"(limit {limit:,} per hour, {used:,} used). All {limit:,} are free again {when} at the latest",
                      retry_at)


# ---- where teaching happens: a configured guild, which belongs to a community -----------------------------

NOT_SET_UP = ("This server is not set up for loraloop: only chat with the base model works here. An admin adds "
              "this server's id ({guild_id}) under `guilds:` in loraloop's settings (README \"Several servers\").")
NOT_IN_DMS = "This works in a server set up for loraloop, not in direct messages."


def community_refusal(settings: Settings, guild_id: int | None) -> str | None:
    """Why nothing can be taught, reviewed, exported or deployed here (None: a configured guild, which belongs to
    a community). One line, with what an admin does about it."""
    if guild_id is None:
        return NOT_IN_DMS
    if settings.community_of_guild(guild_id) is None:
        return NOT_SET_UP.format(guild_id=guild_id)
    return None


# ---- the rules in Discord ----------------------------------------------------------------------------------


async def say(interaction: Interaction, text: str) -> None:
    """An ephemeral answer, whether or not the interaction was answered already."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())
    else:
        await interaction.response.send_message(text, ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())


class Refused(LoraloopError, app_commands.CheckFailure):
    """A command this user may not use here; ``str(exc)`` is the answer they get (LoraloopTree.on_error)."""


@dataclass(frozen=True)
class Only:
    """Who may use a command or a button (``allows``, one of the rules above), and what everyone else is told."""

    allows: Callable[[Settings, int | None, discord.abc.User], bool]
    refusal: str

    def permits(self, interaction: Interaction) -> bool:
        return self.allows(interaction.client.settings, interaction.guild_id, interaction.user)


T = TypeVar("T")


def only(rule: Only) -> Callable[[T], T]:
    """An ``app_commands.check``: the command runs only for users ``rule`` allows; others get its refusal."""

    async def predicate(interaction: Interaction) -> bool:
        if not rule.permits(interaction):
            raise Refused(rule.refusal)
        return True

    return app_commands.check(predicate)


async def require_community(interaction: Interaction) -> bool:
    """A cog's ``interaction_check`` (every command of the cog): refused outside a configured guild."""
    refusal = community_refusal(interaction.client.settings, interaction.guild_id)
    if refusal is not None:
        raise Refused(refusal)
    return True


def experts_only(refusal: str) -> Callable[[T], T]:
    return only(Only(is_expert, refusal))


def admins_only(refusal: str) -> Callable[[T], T]:
    return only(Only(is_admin, refusal))


def teachers_only(refusal: str) -> Callable[[T], T]:
    return only(Only(may_teach, refusal))


# The base's template matches nothing (discord.py wants one on every subclass); each button has its own.
class IdButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"ll:(?!)"):
    """A persistent button whose custom id carries the ids it acts on (so it works after a restart).

    ``only`` says who may press it (None: anyone); a subclass whose rule depends on the button sets it per
    instance. A button works in configured guilds only (:func:`community_refusal`) unless ``needs_community``
    says otherwise. The callback runs only when ``interaction_check`` let the user through."""

    only: ClassVar[Only | None] = None

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]  # see Interaction
        refusal = community_refusal(interaction.client.settings, interaction.guild_id)
        if refusal is not None and self.needs_community(interaction):
            await say(interaction, refusal)
            return False
        rule = self.rule()
        if rule is None or rule.permits(interaction):
            return True
        await say(interaction, rule.refusal)
        return False

    def rule(self) -> Only | None:
        return self.only

    def needs_community(self, interaction: Interaction) -> bool:
        """Whether this click works on a community's knowledge (refused outside a configured guild)."""
        return True

