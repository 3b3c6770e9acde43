"""GPU tests: the project's trainer path on CUDA (QLoRA, bf16 LoRA) with tiny random models.

Every test here is marked ``gpu`` and skips, saying why, where torch sees no CUDA GPU, so CI stays green.
The fixtures come from tests/harness/models.py by import, so that on a GPU host without the bot's services
``pytest --confcutdir=tests/gpu tests/gpu`` (bench/gpu_run.sh) runs these without the root conftest.
"""

from __future__ import annotations

import pytest

from tests.harness.models import llama_cpp_sources, tiny_llama_dir, tiny_llama_gguf  # noqa: F401

try:
    import torch

    CUDA = torch.cuda.is_available()
    WHY = "" if CUDA else f"no CUDA GPU visible to torch {torch.__version__} (tests/gpu need one: make test-gpu)"
except ImportError:
    CUDA, WHY = False, "torch is not installed (tests/gpu need the ml extra and a CUDA GPU)"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not CUDA and item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=WHY))
