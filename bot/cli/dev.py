"""``loraloop dev …``: developer tools (tiny offline models for tests and demos)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, fail

app = typer.Typer(help="Developer tools.", no_args_is_help=True)


@app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the model into.")],
    arch: Annotated[str, typer.Option(help="llama or qwen2")] = "llama",
    template: Annotated[str, typer.Option(help="chatml, qwen2.5 or llama3")] = "chatml",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same model).")] = 0,
) -> None:
    """Write a random-initialised tiny chat model (a few hundred KB) with an offline-trained tokenizer."""
    from trainer.tiny import ARCHS, TEMPLATES, build_tiny_model

    if arch not in ARCHS:
        fail(f"--arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    if template not in TEMPLATES:
        fail(f"--template must be one of {', '.join(TEMPLATES)}, not {template!r}")
    path = build_tiny_model(out, arch=arch, template=template, seed=seed)
    size = sum(f.stat().st_size for f in path.iterdir())
    console.print(f"tiny {arch} model ({template} template, {size / 1024:.0f} KB) written to {path}")
