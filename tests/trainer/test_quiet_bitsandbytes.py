"""A run without QLoRA does not print bitsandbytes' "kernels-community" warning (its CPU 4-bit kernel, fetched from
the Hub at import on CPUs with AVX512-BF16): bitsandbytes is imported by transformers and PEFT, never used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Makes this host look like one with AVX512-BF16, where bitsandbytes tries the Hub kernel at import (offline here,
# so it fails and warns, as on a real host without network or with a CUDA torch).
SITECUSTOMIZE = '''
import importlib.abc, importlib.machinery, sys

class AVX512BF16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, AVX512BF16())
'''


@pytest.mark.slow  # two fresh interpreters importing torch, transformers and bitsandbytes
def test_the_kernels_community_warning_is_not_printed_without_qlora(tmp_path, snapshot_dir, tiny_llama_dir):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(ROOT), os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "import bitsandbytes"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert "kernels-community" in probe.stderr, probe.stderr  # the warning this test is about does happen here
    # --resume with no run: refused by the recipe once it is imported (so after bitsandbytes), nothing trained.
    result = subprocess.run([sys.executable, "-m", "trainer", "train", "--snapshot", str(snapshot_dir), "--base",
                             str(tiny_llama_dir), "--out", str(tmp_path / "out"), "--resume"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert "kernels-community" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines()
                                                  if line.startswith("error: ")], result.stderr


def test_other_bitsandbytes_messages_are_kept():
    import logging

    from trainer.__main__ import quiet_unused_bitsandbytes

    quiet_unused_bitsandbytes()
    for name, dropped in (
        ("bitsandbytes.backends.cpu.ops", ("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "x")),
        ("kernels._internals.hf_hub", ("Skipping publisher trust check for "
                                       "'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in "
                                       "offline mode.", None)),
    ):
        logger = logging.getLogger(name)
        kept = logging.LogRecord(name, logging.WARNING, __file__, 1, "something else failed", None, None)
        assert logger.filter(kept)
        assert not logger.filter(logging.LogRecord(name, logging.WARNING, __file__, 1, dropped[0],
                                                   (dropped[1],) if dropped[1] else None, None))
