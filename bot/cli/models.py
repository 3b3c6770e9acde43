"""``loraloop models …``."""

from __future__ import annotations

import typer

app = typer.Typer(help="List, promote and roll back model versions.", no_args_is_help=True)
