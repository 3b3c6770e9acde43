"""``loraloop db upgrade``: create or migrate the database (what the bot does when it starts)."""

from __future__ import annotations

import asyncio

import typer

from bot.cli.common import console, open_store, settings

app = typer.Typer(help="The database schema.", no_args_is_help=True)


@app.command()
def upgrade() -> None:
    """Bring the database named by the settings to the newest schema (run before the bot, or after an update)."""
    from bot.cli.doctor import head_revision
    from bot.settings import redact_url

    async def run() -> None:
        async with open_store(config, config.community_names()[0]):  # open_store migrates (every community)
            pass

    config = settings()
    asyncio.run(run())
    console.print(f"{redact_url(config.resolved_database_url)} is at revision {head_revision()}", highlight=False,
                  soft_wrap=True)
