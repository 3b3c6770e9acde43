"""``loraloop dev …``: developer tools (tiny offline models for tests and demos)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Developer tools.", no_args_is_help=True)
