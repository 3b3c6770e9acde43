"""``loraloop deploy …``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, fail

app = typer.Typer(help="Convert an adapter to GGUF and register it with Ollama.", no_args_is_help=True)


@app.command()
def convert(
    adapter: Annotated[Path, typer.Option(help="PEFT adapter directory (adapter_config.json + safetensors).")],
    base: Annotated[Path, typer.Option(help="The base model directory the adapter was trained on.")],
    out: Annotated[Path, typer.Option(help="The GGUF file to write.")],
    outtype: Annotated[str, typer.Option(help="f16 or f32")] = "f16",
) -> None:
    """Convert a LoRA adapter to a GGUF adapter for llama.cpp / Ollama."""
    from deploy.gguf import ConversionError, convert_adapter

    try:
        path = convert_adapter(adapter, base, out, outtype=outtype)
    except ConversionError as exc:
        out.unlink(missing_ok=True)
        fail(str(exc))
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
