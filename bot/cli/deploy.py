"""``loraloop deploy …``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.cli.common import Community, console, fail

if TYPE_CHECKING:
    from deploy.pipeline import DeployResult

app = typer.Typer(help="Convert an adapter to GGUF and register it with Ollama.", no_args_is_help=True)


@app.command()
def convert(
    adapter: Annotated[Path, typer.Option(help="PEFT adapter directory (adapter_config.json + safetensors).")],
    out: Annotated[Path, typer.Option(help="The GGUF file to write.")],
    base: Annotated[Path | None, typer.Option(
        help="The base model directory the adapter was trained on (default: the one the run recorded).")] = None,
    outtype: Annotated[str, typer.Option(help="f16 or f32")] = "f16",
    tag: Annotated[str | None, typer.Option(
        help="The Ollama tag the printed `ollama create` command makes (default: the GGUF's file name).")] = None,
    base_tag: Annotated[str | None, typer.Option(
        help="The Ollama base tag the Modelfile starts FROM (default: settings' ollama_base).")] = None,
) -> None:
    """Convert a LoRA adapter to a GGUF adapter for llama.cpp / Ollama, and write a Modelfile beside it.

    A base other than the recorded one is refused when its architecture or shape differs. The Modelfile serves
    the adapter on the Ollama base with the run's chat template, system prompt, stop tokens and served options.
    """
    from bot.cli.common import settings
    from deploy.gguf import ConversionError, convert_adapter, recorded_base
    from deploy.modelfile import UnsupportedTemplate, modelfile_text, serving_format_for
    from deploy.options import serve_options_from

    if not (adapter / "adapter_config.json").is_file():
        fail(f"{adapter} is not an adapter directory (no adapter_config.json)")
    if out.is_dir():
        fail(f"{out} is an existing folder: --out names the GGUF file to write (e.g. {out / 'adapter.gguf'})")
    if base is None:
        base = recorded_base(adapter)
        if base is None:
            fail(f"{adapter} does not record its base model directory (no run.json, or the directory is gone): "
                 "pass --base DIR")
    cfg = settings()  # before the conversion: a settings error should not cost one
    existed = out.exists()
    try:
        path = convert_adapter(adapter, base, out, outtype=outtype)
    except ConversionError as exc:
        if not existed:
            out.unlink(missing_ok=True)
        fail(str(exc))
    console.print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    modelfile = path.parent / "Modelfile"
    try:
        fmt = serving_format_for(adapter, base, serve_options_from(cfg))
        modelfile.write_text(modelfile_text(fmt, base_tag or cfg.ollama_base, path.name), encoding="utf-8")
    except UnsupportedTemplate as exc:
        fail(f"wrote {path}, but no Modelfile: {exc}")
    command = f"ollama create {tag or path.stem} -f {shlex.quote(str(modelfile))}"
    console.print(f"wrote {modelfile}; register it with:\n  {command}", highlight=False, soft_wrap=True)


@app.command("run")
def run_deploy(
    adapter: Path = typer.Option(..., "--adapter", help="Adapter directory written by `loraloop train`."),
    base: Path | None = typer.Option(None, "--base", help="HF base model directory (default: the run's base_dir)."),
    snapshot: Path | None = typer.Option(None, "--snapshot", help="Snapshot whose eval split the gate uses "
                                         "(default: the run's snapshot)."),
    mode: str | None = typer.Option(None, "--mode", help="auto (default), adapter, gguf or merged."),
    margin: float | None = typer.Option(None, "--margin", help="How much worse (ROUGE-L) the candidate may be."),
    keep: int | None = typer.Option(None, "--keep", help="Fine-tuned tags kept in Ollama."),
    as_json: bool = typer.Option(False, "--json", help="Progress and result as JSON lines."),
    community: Community = None,
) -> None:
    """Register an adapter with Ollama from the clean base, gate it against the active model, switch if it passes.

    Exit status: 0 promoted, 3 rejected by the gate, 1 failed (the active model is unchanged in both cases).
    """
    import asyncio

    from bot.cli.common import open_ollama, open_store, print_json, settings
    from bot.retrieval import gate_with_retrieval
    from deploy.errors import DeployFailed
    from deploy.pipeline import deploy

    if not (adapter / "adapter_config.json").is_file():
        fail(f"{adapter} is not an adapter directory (no adapter_config.json)", 2)
    if mode is not None and mode not in ("auto", "adapter", "gguf", "merged"):
        fail(f"--mode must be auto, adapter, gguf or merged, not {mode!r}", 2)
    cfg = settings()
    overrides = {k: v for k, v in {"mode": mode, "gate_margin": margin, "keep_versions": keep}.items()
                 if v is not None}
    config = cfg.deploy_config(**overrides)

    def show(step: str, info: dict[str, Any]) -> None:
        if as_json:
            print_json({"event": step, **info})
        elif step == "create":
            console.print(f"  create: {info['status']}", highlight=False)
        elif step != "failed":  # the failure is reported once, at the end
            details = ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("version", "tag", "scores"))
            console.print(f"{info['tag']}: {step} {details}", highlight=False)

    async def run() -> DeployResult:
        async with open_store(cfg, community) as store, open_ollama(cfg, timeout_s=300) as client:
            return await deploy(adapter, store=store, client=client, config=config, base_dir=base,
                                snapshot_dir=snapshot, on_event=show, llama_cpp_dir=cfg.llama_cpp_dir,
                                inform=gate_with_retrieval(cfg, store, client))

    try:
        result = asyncio.run(run())
    except DeployFailed as exc:  # before a version existed (an unreadable run record): nothing to mark failed
        fail(str(exc))
    if as_json:
        print_json({"event": "result", "tag": result.tag, "status": result.status, "reason": result.reason,
                    "promoted": result.promoted, "bytes_uploaded": result.bytes_uploaded, "timings": result.timings,
                    "scores": result.gate.scores if result.gate else None})
    elif result.status != "failed":
        if result.gate is not None:
            console.print(result.gate.table(), highlight=False)
        console.print(f"{result.tag}: {result.status} — {result.reason}", highlight=False)
    if result.status == "rejected":
        raise SystemExit(3)
    if result.status != "promoted":
        fail(f"{result.tag} failed: {result.reason}")
