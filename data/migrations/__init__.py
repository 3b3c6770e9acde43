"""Alembic migrations, run programmatically (``Store.migrate``) on an existing connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

HERE = Path(__file__).resolve().parent


def alembic_config(connection: Any = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Any, revision: str = "head") -> None:
    """Upgrade the database behind a synchronous ``connection`` (from ``AsyncConnection.run_sync``)."""
    command.upgrade(alembic_config(connection), revision)
