"""Who may do what: expert and admin roles per guild, from the settings."""

from __future__ import annotations

import discord

from bot.settings import Settings


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
    return is_expert(settings, guild_id, user) or (
        guild_id is not None and settings.roles_for(guild_id).allow_non_expert_teach
    )
