"""Deploy benchmark: the adapter, gguf and merged paths side by side, from an adapter directory to a switched model.

Measured on the tiny model against the Ollama-API test server (real HTTP, real llama.cpp warm-up and gate chats,
llama.cpp's converter standing in for Ollama's): bytes uploaded and seconds to switched for a first deploy and a
redeploy, per path (adapter; gguf q4_K_M, made here with llama.cpp; merged as saved; merged with server-side q4_K_M).
The gguf path's own work (merge, llama.cpp's converter, llama.cpp's quantizer) is measured on two sizes of a bf16
Llama-shaped model (time, peak RSS of the worker process and of the converter, peak disk), and the difference
between the two sizes gives a cost per parameter. Then everything is estimated for Qwen2.5-0.5B and Qwen2.5-7B
from their configs (parameters counted on the meta device: nothing downloaded, nothing allocated) and the upload
throughput measured here over the same HTTP path. Prints tables; asserts nothing.

    .venv/bin/python bench/bench_deploy.py [--sdist PATH_TO_llama_cpp_python_SDIST] [--probe-mb 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The models' config.json values that decide the parameter count (Qwen/Qwen2.5-0.5B-Instruct, Qwen2.5-7B-Instruct).
CONFIGS = {
    "Qwen2.5-0.5B": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True},
    "Qwen2.5-7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                   "tie_word_embeddings": False},
}
TOKENIZER_BYTES = 7_000_000 + 11_000_000  # tokenizer.json + vocab/merges of Qwen2.5: sent once, then found by HEAD
Q4_K_M_BITS = 4.85  # bits per weight of a Q4_K_M GGUF (llama.cpp's figure)


def count_params(values: dict) -> tuple[int, int]:
    """(model parameters, r=16 all-linear LoRA parameters) of a Qwen2 config, counted without allocating."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    lora = sum(16 * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name != "lm_head")
    return params, lora


async def deploy_twice(label: str, mode: str, quantize: str | None, base_dir: Path, base_gguf: Path,
                       adapters: list[Path], sources: Path, work: Path) -> list[tuple]:
    from data.store import Store
    from deploy.config import DeployConfig
    from deploy.modelfile import serving_format_for
    from deploy.ollama import OllamaClient
    from deploy.pipeline import deploy
    from deploy.registration import PathMemory
    from tests.harness.models import convert_base_to_gguf
    from tests.harness.ollama_server import OllamaTestServer

    server = OllamaTestServer(work / f"server-{label}").start()
    server.converter = lambda hf_dir, out: convert_base_to_gguf(sources, hf_dir, out)
    fmt = serving_format_for(adapters[0])
    server.add_base_model("tiny:base", base_gguf, template=fmt.template, system=fmt.system,
                          parameters=fmt.parameters())
    store = Store(f"sqlite+aiosqlite:///{work / f'{label}.db'}")
    await store.migrate()
    config = DeployConfig(model_name="bench", ollama_base="tiny:base", probes=("Hello?",), gate_margin=1.0,
                          mode=mode, quantize=quantize, gate_options={"temperature": 0.0, "seed": 0, "num_predict": 8},
                          paraphrases=0, consistency_n=0)
    rows = []
    try:
        async with OllamaClient(server.url) as client:
            for run, adapter in (("first", adapters[0]), ("redeploy", adapters[1])):
                t0 = time.perf_counter()
                result = await deploy(adapter, store=store, client=client, config=config, base_dir=base_dir,
                                      memory=PathMemory(), llama_cpp_dir=sources)
                rows.append((label, run, result.status, result.bytes_uploaded, time.perf_counter() - t0,
                             result.timings))
    finally:
        await store.close()
        server.stop()
    return rows


async def upload_throughput(work: Path, megabytes: int) -> float:
    """Bytes per second through ensure_blob (hash, HEAD, streamed POST, HEAD) to the test server."""
    from deploy.ollama import OllamaClient
    from tests.harness.ollama_server import OllamaTestServer

    server = OllamaTestServer(work / "server-throughput").start()
    blob = work / "probe.bin"
    with blob.open("wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(1 << 20))
    try:
        async with OllamaClient(server.url) as client:
            t0 = time.perf_counter()
            await client.ensure_blob(blob)
            return blob.stat().st_size / (time.perf_counter() - t0)
    finally:
        blob.unlink()
        server.stop()


def _sources(sdist: Path, into: Path) -> Path:
    import tarfile

    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if "/vendor/llama.cpp/" in m.name and any(
                       m.name.endswith(f) or f"/vendor/llama.cpp/{f}/" in m.name
                       for f in ("convert_hf_to_gguf.py", "conversion", "gguf-py"))]
        tar.extractall(into, members=members, filter="data")
    return next(into.glob("*/vendor/llama.cpp"))


async def bench(sdist: Path, work: Path, probe_mb: int) -> None:
    from tests.harness.models import convert_base_to_gguf
    from tests.harness.ollama import make_adapter
    from trainer.tiny import build_tiny_model

    sources = _sources(sdist, work / "src")
    base_dir = build_tiny_model(work / "tiny", arch="llama", template="chatml")
    base_gguf = convert_base_to_gguf(sources, base_dir, work / "base.gguf")
    rows = []
    for label, mode, quantize in (("adapter", "adapter", None), ("gguf q4_K_M", "gguf", "q4_K_M"),
                                  ("merged", "merged", None), ("merged+q4_K_M", "merged", "q4_K_M")):
        adapters = [make_adapter(base_dir, work / f"{label}-a{i}", seed=i) for i in range(2)]
        rows += await deploy_twice(label, mode, quantize, base_dir, base_gguf, adapters, sources, work)

    print(f"tiny model ({base_gguf.stat().st_size:,} B as GGUF), Ollama-API test server on this machine")
    print(f"{'path':<15} {'deploy':<9} {'status':<9} {'uploaded B':>12} {'to switched s':>14}  steps (s)")
    for label, run, status, sent, wall, timings in rows:
        steps = {k: v for k, v in timings.items()
                 if k in ("prepare_s", "merge_s", "convert_s", "quantize_s", "upload_s", "create_to_checked_s")}
        print(f"{label:<15} {run:<9} {status:<9} {sent:>12,} {wall:>14.2f}  {steps}")

    builds = gguf_build_costs(base_dir, sources, work)
    (small_p, small), (large_p, large) = builds
    print("\ngguf path, its own work (merge → llama.cpp convert (bf16) → llama.cpp quantize q4_K_M), bf16 bases:")
    print(f"{'parameters':>12} {'merge s':>8} {'convert s':>10} {'quantize s':>11} {'worker RSS':>11} "
          f"{'converter RSS':>14} {'peak disk':>10} {'file':>10}")
    for params, b in builds:
        print(f"{params:>12,} {b['merge_s']:>8.1f} {b['convert_s']:>10.1f} {b['quantize_s']:>11.1f} "
              f"{_gb(b['rss']):>11} {_gb(b['converter_rss']):>14} {_gb(b['peak_disk']):>10} {_gb(b['bytes']):>10}")
    slope = {k: (large[k] - small[k]) / (large_p - small_p)
             for k in ("merge_s", "convert_s", "quantize_s", "rss", "converter_rss", "peak_disk")}
    print("per parameter (difference of the two): " + ", ".join(
        f"{k} {v * 1e6:.3g}{'' if k.endswith('_s') else ' B'}/Mparam" for k, v in slope.items()))

    rate = await upload_throughput(work, probe_mb)
    print(f"\nupload throughput (ensure_blob of {probe_mb} MiB to the test server): {rate / 1e6:.0f} MB/s")
    print(f"\n{'base':<14} {'path':<15} {'uploaded/retrain':>17} {'upload s':>9} {'Ollama disk/version':>20} "
          f"{'Ollama peak':>12} {'worker disk':>12}")
    for name, values in CONFIGS.items():
        params, lora = count_params(values)
        adapter = lora * 2 + 64 * 1024  # f16 GGUF tensors + metadata
        merged = params * 2  # safetensors in the base's bf16
        f16 = params * 2
        q4 = int(params * Q4_K_M_BITS / 8)
        paths = (
            ("adapter", adapter, adapter, adapter, adapter),
            # Made on the worker: merged bf16 + its bf16 GGUF side by side, then the GGUF and its q4_K_M.
            ("gguf q4_K_M", q4, q4, q4, merged + f16),
            # Ollama keeps the uploaded safetensors blobs until the next prune, the converted F16 model per version.
            ("merged (bf16)", merged, f16, merged + f16, merged),
            ("merged+q4_K_M", merged, q4, merged + f16 + q4, merged),
        )
        for label, sent, disk, peak, worker in paths:
            print(f"{name:<14} {label:<15} {_gb(sent):>17} {sent / rate:>9.1f} {_gb(disk):>20} {_gb(peak):>12} "
                  f"{_gb(worker):>12}")
        print(f"{'':<14} ({params:,} parameters, r=16 LoRA {lora:,}; a first merged deploy also sends "
              f"~{TOKENIZER_BYTES / 1e6:.0f} MB of tokenizer files once)")
        est = {k: small[k] + slope[k] * (params - small_p) for k in slope}
        print(f"{'':<14} gguf q4_K_M on the worker (extrapolated from the two sizes, this CPU): merge "
              f"{est['merge_s']:.0f} s, convert {est['convert_s']:.0f} s, quantize {est['quantize_s']:.0f} s; "
              f"peak RSS {_gb(int(est['rss']))} (converter {_gb(int(est['converter_rss']))}); peak disk "
              f"{_gb(int(est['peak_disk']))} (2 B + 2 B per parameter: {_gb(4 * params)})")
    print("\nupload s = bytes / the throughput measured here (a LAN or the Internet is slower: scale by your link). "
          "Merging, Ollama's conversion and quantization, model load and the gate grow with model size and are not "
          "in these estimates; the tiny rows above measure them end to end.")


# Two Llama-shaped models with the tiny model's tokenizer, stored in bf16 like real bases: (hidden, intermediate,
# layers). Their difference gives the gguf path's cost per parameter.
BUILD_SIZES = ((512, 1408, 4), (1024, 2816, 8))
_BUILD_CHILD = """
import json, resource, sys, time
from pathlib import Path
from deploy import merge
adapter, base, out, sources = map(Path, sys.argv[1:5])
built = merge.merge_to_gguf(adapter, base, out, "q4_K_M", sources)
print(json.dumps({**built.seconds, "peak_disk": built.peak_disk, "bytes": out.stat().st_size,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "converter_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def gguf_build_costs(tiny_dir: Path, sources: Path, work: Path) -> list[tuple[int, dict]]:
    """merge_to_gguf (q4_K_M) on each of BUILD_SIZES, each in a fresh process (its peak RSS is its own)."""
    import json
    import shutil
    import subprocess

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.harness.ollama import make_adapter

    out = []
    for hidden, inter, layers in BUILD_SIZES:
        model_dir = work / f"build-{hidden}"
        config = AutoConfig.from_pretrained(tiny_dir)
        config.update({"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
                       "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 256,
                       "head_dim": 64, "dtype": "bfloat16"})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(model_dir)
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                     "chat_template.jinja"):
            if (tiny_dir / name).is_file():
                shutil.copyfile(tiny_dir / name, model_dir / name)
        adapter = make_adapter(model_dir, work / f"build-{hidden}-adapter", seed=0)
        done = subprocess.run([sys.executable, "-c", _BUILD_CHILD, str(adapter), str(model_dir),
                               str(work / f"build-{hidden}.gguf"), str(sources)], cwd=ROOT, check=True,
                              capture_output=True, text=True)
        out.append((params, json.loads(done.stdout.strip().splitlines()[-1])))
    return out


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from tests.harness.models import find_sdist

    parser.add_argument("--sdist", type=Path, default=find_sdist(),
                        help="llama-cpp-python sdist with llama.cpp's converters (env LORALOOP_LLAMA_CPP_SDIST)")
    parser.add_argument("--probe-mb", type=int, default=256, help="size of the upload-throughput probe, MiB")
    args = parser.parse_args()
    if args.sdist is None or not args.sdist.is_file():
        parser.error("give --sdist (the llama-cpp-python .tar.gz), set LORALOOP_LLAMA_CPP_SDIST or run make install")
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        asyncio.run(bench(args.sdist, Path(tmp), args.probe_mb))


if __name__ == "__main__":
    main()
