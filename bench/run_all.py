"""Run every benchmark script in this folder, one after another, printing their numbers.

bench_gpu.py needs a CUDA GPU; without one it runs its ``--cpu-smoke`` (a tiny config through the same code
path) so that ``make bench`` proves the script still works on any machine.
"""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


failed = 0
for script in sorted(here.glob("bench_*.py")):
    extra = []
    if script.name == "bench_gpu.py" and not _has_cuda():
        print("== bench_gpu.py --cpu-smoke (no CUDA GPU here: the tiny config checks the code path only)", flush=True)
        extra = ["--cpu-smoke"]
    else:
        print(f"== {script.name}", flush=True)
    failed += subprocess.run([sys.executable, str(script), *extra]).returncode != 0
sys.exit(1 if failed else 0)
