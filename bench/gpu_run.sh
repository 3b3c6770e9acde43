#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA GPU and nothing to download from (the device tool's H200:
# Python 3.12, torch 2.11 CUDA 13, transformers 5.17, peft, accelerate; no trl/datasets/bitsandbytes/liger).
#
#   bash bench/gpu_run.sh prepare   # HERE, with network: fills wheels/ (git-ignored, ~40 MB) with what is missing
#   bash bench/gpu_run.sh           # THERE: installs wheels/ into /tmp/site, runs tests/gpu, then bench_gpu.py
#
# Device tool call: run(command="bash bench/gpu_run.sh", carry=["wheels"], timeout_s=590). Results land in $OUT
# (test-gpu.log, bench-gpu.log, bench-gpu.json). TESTS_ONLY=1 or BENCH_ONLY=1 run one half; TOTAL_S (default 560)
# is the time the whole script may take: the benchmark gets what the tests leave (at most its own 450 s).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=wheels
LLAMA_CPP=llama_cpp_python-0.3.36

if [[ "${1:-}" == "prepare" ]]; then
  set -e
  PY=${PY:-.venv/bin/python}
  mkdir -p "$WHEELS"
  # --no-deps: each package the GPU machine lacks is named (its torch, numpy, pyarrow, pandas... are used as is).
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 liger-kernel==0.8.5 bitsandbytes==0.50.2 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 orjson==3.13.0 redis==8.1.0 gguf==0.19.0 sqlalchemy==2.1.9 greenlet==3.5.6 \
    pydantic-settings==2.16.3 python-dotenv==1.2.4 diskcache==5.6.3
  # bitsandbytes ships one library per CUDA/ROCm version (43 MB): keep CUDA 13's and the CPU one.
  $PY - "$WHEELS" <<'EOF'
import sys, zipfile
from pathlib import Path
for whl in Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    keep = lambda n: not (n.startswith("bitsandbytes/libbitsandbytes_") and not n.endswith(("cuda130.so", "cuda132.so", "cpu.so")))
    slim = whl.with_suffix(".slim")
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if not keep(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"\n".join(r for r in data.splitlines() if r and keep(r.split(b",")[0].decode())) + b"\n"
            dst.writestr(info, data)
    slim.replace(whl)
EOF
  # llama-cpp-python: the wheel `make install` built (ctypes, py3-none: it loads on 3.12 too) ...
  cp ~/.cache/loraloop/wheels/${LLAMA_CPP}-py3-none-linux_x86_64.whl "$WHEELS/"
  # ... and, from its 76 MB sdist, only llama.cpp's converters (what tests/harness/models.py extracts).
  $PY - "$WHEELS" "$LLAMA_CPP" <<'EOF'
import sys, tarfile
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
prefix = f"{name}/vendor/llama.cpp/"
wanted = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
with tarfile.open(Path.home() / ".cache/loraloop/wheels" / f"{name}.tar.gz") as src, \
        tarfile.open(out / f"{name}.tar.gz", "w:gz") as dst:
    for m in src.getmembers():
        if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted):
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
EOF
  du -sh "$WHEELS"; ls "$WHEELS"
  exit 0
fi

START=$SECONDS
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export LORALOOP_LLAMA_CPP_SDIST=$PWD/$WHEELS/$LLAMA_CPP.tar.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, trl, peft, bitsandbytes, liger_kernel, triton; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', \
peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

rc=0
if [[ -z "${BENCH_ONLY:-}" ]]; then
  # --confcutdir: the root conftest loads the bot's fixtures (discord, databases), which this host lacks.
  timeout 240 python3 -m pytest -q -p no:cacheprovider --confcutdir=tests/gpu -m gpu -rs tests/gpu 2>&1 \
    | tee "$OUT/test-gpu.log" || rc=1
fi
if [[ -z "${TESTS_ONLY:-}" ]]; then
  budget=$(( ${TOTAL_S:-560} - (SECONDS - START) - 40 ))
  (( budget > 450 )) && budget=450
  python3 bench/bench_gpu.py --budget-s "$budget" --json-out "$OUT/bench-gpu.json" 2>&1 \
    | tee "$OUT/bench-gpu.log" || rc=1
fi
echo "gpu_run.sh: ${SECONDS}s, rc=$rc"
exit $rc
