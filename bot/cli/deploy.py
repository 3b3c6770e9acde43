"""``loraloop deploy …``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Convert an adapter to GGUF and register it with Ollama.", no_args_is_help=True)
