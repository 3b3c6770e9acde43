"""``loraloop bot``: start the Discord bot."""

from __future__ import annotations

from bot.cli.common import fail, settings


def bot() -> None:
    """Run the Discord bot (needs DISCORD_TOKEN)."""
    from bot.cli.doctor import discord_token_check

    config = settings()
    token = config.discord_token.get_secret_value() if config.discord_token is not None else None
    if not token or not token.strip():
        fail(
            "DISCORD_TOKEN is not set: put your bot token in the DISCORD_TOKEN environment variable "
            "or in .env (see .env.example)",
            2,
        )
    # The token's shape, offline (as doctor checks it): a malformed token is one line here, not a login error.
    check = discord_token_check(token)
    if check.status == "FAIL":
        fail(check.detail, 2)
    from bot.app import run_bot

    run_bot(config)
