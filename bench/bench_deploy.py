"""Deploy benchmark: bytes uploaded and wall time from an adapter directory to a switched model.

Measured on the tiny model against the Ollama-API test server (real HTTP, real llama.cpp warm-up and
gate chats), then extrapolated to r=16 all-linear LoRA adapters of Qwen2.5-0.5B and Qwen2.5-7B by
uploading blobs of their adapter size over the same HTTP path. Target: uploads ≈ adapter size, never
the base. Prints a table; asserts nothing (speed targets are read, not tested).

    .venv/bin/python bench/bench_deploy.py [--sdist PATH_TO_llama_cpp_python_SDIST]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Architecture numbers from the models' config.json files (hidden, intermediate, layers, kv dim, params).
ARCHS = {
    "Qwen2.5-0.5B": {"hidden": 896, "intermediate": 4864, "layers": 24, "kv_dim": 128, "params": 494_032_768},
    "Qwen2.5-7B": {"hidden": 3584, "intermediate": 18944, "layers": 28, "kv_dim": 512, "params": 7_615_616_512},
}


def lora_params(hidden: int, intermediate: int, layers: int, kv_dim: int, r: int = 16) -> int:
    """LoRA parameters on every linear projection: r * (in + out) per module."""
    shapes = [(hidden, hidden), (hidden, kv_dim), (hidden, kv_dim), (hidden, hidden),  # q k v o
              (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]  # gate up down
    return layers * sum(r * (i + o) for i, o in shapes)


def sources_from_sdist(sdist: Path, into: Path) -> Path:
    """llama.cpp's converter scripts out of the llama-cpp-python sdist."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers()
                   if "/vendor/llama.cpp/" in m.name and any(
                       m.name.endswith(f) or f"/vendor/llama.cpp/{f}/" in m.name
                       for f in ("convert_hf_to_gguf.py", "conversion", "gguf-py"))]
        tar.extractall(into, members=members, filter="data")
    return next(into.glob("*/vendor/llama.cpp"))


def convert_base(sources: Path, model_dir: Path, out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(sources / "gguf-py")}
    subprocess.run([sys.executable, str(sources / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(out),
                    "--outtype", "f16"], env=env, check=True, capture_output=True)
    return out


async def run(sdist: Path, work: Path) -> None:
    from data.store import Store
    from deploy.modelfile import serving_format_for
    from deploy.ollama import OllamaClient
    from deploy.pipeline import DeployConfig, deploy
    from tests.fixtures.ollama import make_adapter
    from tests.ollama_server import OllamaTestServer
    from trainer.tiny import build_tiny_model

    base_dir = build_tiny_model(work / "tiny", arch="qwen2", template="qwen2.5")
    base_gguf = convert_base(sources_from_sdist(sdist, work / "src"), base_dir, work / "base.gguf")
    adapters = [make_adapter(base_dir, work / f"adapter{i}", seed=i) for i in range(2)]
    server = OllamaTestServer(work / "server").start()
    fmt = serving_format_for(adapters[0])
    server.add_base_model("tiny:base", base_gguf, template=fmt.template, system=fmt.system,
                          parameters=fmt.parameters())
    store = Store(f"sqlite+aiosqlite:///{work / 'bench.db'}")
    await store.migrate()
    config = DeployConfig(model_name="bench", ollama_base="tiny:base", probes=("Hello?",), gate_margin=1.0,
                          options={"temperature": 0.0, "seed": 0, "num_predict": 16}, outtype="f16")
    rows = []
    try:
        async with OllamaClient(server.url) as client:
            for label, adapter in (("v1 (no active)", adapters[0]), ("v2 (gated vs v1)", adapters[1]),
                                   ("v3 (same adapter as v2)", adapters[1])):
                t0 = time.perf_counter()
                result = await deploy(adapter, store=store, client=client, config=config, base_dir=base_dir)
                wall = time.perf_counter() - t0
                gguf = adapter / "adapter.gguf"
                rows.append((label, result.status, result.bytes_uploaded, gguf.stat().st_size,
                             (adapter / "adapter_model.safetensors").stat().st_size, wall, result.timings))

            print(f"tiny Qwen2 base GGUF: {base_gguf.stat().st_size:,} bytes (never uploaded by a deploy)")
            print(f"{'deploy':<26} {'status':<8} {'uploaded B':>11} {'adapter.gguf B':>15} "
                  f"{'safetensors B':>14} {'wall s':>7}  steps (cumulative s)")
            for label, status, sent, gguf_size, st_size, wall, timings in rows:
                print(f"{label:<26} {status:<8} {sent:>11,} {gguf_size:>15,} {st_size:>14,} {wall:>7.3f}  {timings}")
            uploads_total = sum(size for _, size in server.blob_uploads)
            print(f"server received {uploads_total:,} blob bytes in {len(server.blob_uploads)} upload(s)")

            # Extrapolation: upload blobs of a real adapter's size over the same HTTP path.
            print()
            print(f"{'adapter (r=16, all-linear)':<28} {'LoRA params':>12} {'f16 GGUF B':>14} {'upload s':>9} "
                  f"{'MB/s':>7} {'base f16 B (not sent)':>22} {'est. wall s':>11}")
            # tiny v2's create + warm-up + gate + switch (its wall time minus preparation/conversion and upload)
            fixed = rows[1][5] - rows[1][6].get("prepare_s", 0.0) - rows[1][6].get("upload_s", 0.0)
            for name, arch in ARCHS.items():
                params = lora_params(arch["hidden"], arch["intermediate"], arch["layers"], arch["kv_dim"])
                size = params * 2 + 64 * 1024  # f16 tensors plus metadata
                blob = work / f"{name}.bin"
                with blob.open("wb") as f:
                    f.write(os.urandom(size))
                t0 = time.perf_counter()
                upload = await client.ensure_blob(blob)
                secs = time.perf_counter() - t0
                blob.unlink()
                print(f"{name:<28} {params:>12,} {upload.bytes_sent:>14,} {secs:>9.3f} {size / secs / 1e6:>7.1f} "
                      f"{arch['params'] * 2:>22,} {fixed + secs:>11.2f}")
            print(f"est. wall = measured upload + the tiny deploy's create/warm-up/gate/switch ({fixed:.2f} s); the "
                  "adapter's GGUF conversion, Ollama's model load and the gate's generation grow with model size "
                  "and are not included.")
    finally:
        await store.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from tests.fixtures.models import find_sdist

    parser.add_argument("--sdist", type=Path, default=find_sdist(),
                        help="llama-cpp-python sdist with llama.cpp's converters (env LORALOOP_LLAMA_CPP_SDIST)")
    args = parser.parse_args()
    if args.sdist is None or not args.sdist.is_file():
        parser.error("give --sdist (the llama-cpp-python .tar.gz), set LORALOOP_LLAMA_CPP_SDIST or run make install")
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        asyncio.run(run(args.sdist, Path(tmp)))


if __name__ == "__main__":
    main()
