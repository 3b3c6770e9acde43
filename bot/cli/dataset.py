"""``loraloop dataset …`` and ``loraloop snapshot …``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Import, export and inspect the teaching dataset.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Freeze the approved examples into an immutable training snapshot.",
                           no_args_is_help=True)
