"""Shared plumbing for CLI commands: settings, error exits, JSON output, and the one way a command opens the store
(``open_store``) and Ollama's client (``open_ollama``) from the settings."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError

from bot.settings import Settings, load_settings, redact_url
from data.store import Store
from data.validation import describe

if TYPE_CHECKING:
    from deploy.ollama import OllamaClient

console = Console()
err_console = Console(stderr=True)

# Every command that reads or writes a community's data takes it (open_store resolves it).
Community = Annotated[str | None, typer.Option(
    "--community", metavar="NAME",
    help="The community to work on (default: the only one; with several, the error lists them).")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear line on stderr and exit non-zero (no traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def plural(count: int, noun: str) -> str:
    """"1 record", "2 records" (nouns that take an s)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        fail(f"invalid settings: {describe(exc, root='settings')}", 2)
    except FileNotFoundError as exc:
        fail(str(exc), 2)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str) + "\n")


def say_which_store(database: str, community: str) -> None:
    """Every command that used the store says which, on stderr (stdout stays the command's own output, JSON
    included): the database follows LORALOOP_HOME, ./loraloop-data where it exists, else the per-user folder."""
    err_console.print(f"store: {database} (community {community})", highlight=False, soft_wrap=True)


@asynccontextmanager
async def open_store(config: Settings, community: str | None = None) -> AsyncIterator[Store]:
    """The store named by the settings, migrated to the newest schema, scoped to ``community`` (--community; by
    default the only community, or an error listing them when there are several)."""
    try:
        name = config.resolve_community(community)
    except ValueError as exc:
        fail(str(exc), 2)
    store = Store(
        config.resolved_database_url,
        policy=config.review.policy(),
    )
    try:
        await store.migrate()
        await assign_communities(store, config)
    except (OSError, SQLAlchemyError) as exc:
        await store.close()
        fail(f"cannot open the database {redact_url(config.resolved_database_url)}: {exc}")
    try:
        yield store.scoped(name)
    finally:
        await store.close()
    # After the command's work, and only when it did it: a refusal stays the one line that says why.
    say_which_store(redact_url(config.resolved_database_url), name)


async def assign_communities(store: Store, config: Settings) -> None:
    """Give rows from before communities existed their community (data.communities); say so on stderr."""
    done = await store.assign_communities(config.guild_communities(), config.community_names()[0])
    if done.changed:
        err_console.print("rows from before communities were assigned: " + "; ".join(done.lines()),
                          highlight=False, soft_wrap=True)


@asynccontextmanager
async def open_ollama(config: Settings, *, timeout_s: float) -> AsyncIterator[OllamaClient]:
    """Ollama's client for the settings' host; ``timeout_s`` bounds connecting and each read."""
    from deploy.ollama import OllamaClient

    async with OllamaClient(config.ollama_host, timeout=timeout_s) as client:
        yield client
