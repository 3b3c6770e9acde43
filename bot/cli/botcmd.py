"""``loraloop bot``: start the Discord bot."""

from __future__ import annotations

from bot.cli.common import fail, settings


def bot() -> None:
    """Run the Discord bot (needs DISCORD_TOKEN)."""
    config = settings()
    if config.discord_token is None or not config.discord_token.get_secret_value().strip():
        fail(
            "DISCORD_TOKEN is not set: put your bot token in the DISCORD_TOKEN environment variable "
            "or in .env (see .env.example)",
            2,
        )
    try:
        from bot.app import run_bot
    except ImportError as exc:  # pragma: no cover - only before the Discord app exists
        fail(f"the Discord app is not available: {exc}")
    run_bot(config)
