"""The trainer's CUDA path end to end on a tiny random Llama: QLoRA (NF4) and bf16 LoRA learn, report their
peak memory, and a QLoRA adapter served by llama.cpp on the unquantised base gives PEFT's logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

# Small but real (as tests/trainer): enough steps for the tiny model to learn, few generated tokens.
FAST = {"learning_rate": 5e-3, "epochs": 3, "batch_size": 8, "max_new_tokens": 8, "eval_generate": 2,
        "probes": ["Hello! Who are you?"], "probe_eval_samples": 1}


def train_tiny(out: Path, snapshot: Path, base: Path, qlora: bool) -> dict:
    """One run of trainer.recipe.train, the path `loraloop train` takes."""
    from trainer.config import load_config
    from trainer.recipe import TrainRequest, train

    return train(TrainRequest(snapshot, str(base), out, load_config(None, {**FAST, "qlora": qlora})))


def assert_learned(metrics: dict, device: str) -> None:
    assert metrics["device"] == device
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.5
    curve = [p["loss"] for p in metrics["train_loss_curve"]]
    assert len(curve) == metrics["steps"] > 10
    assert np.mean(curve[-3:]) < np.mean(curve[:3]) - 0.5  # the training loss falls, not only the eval loss
    assert metrics["tokens_per_s"] > 0 and metrics["peak_memory_bytes"] > 0


def parity(adapter_dir: Path, base_dir: Path, base_gguf: Path, gguf_out: Path) -> tuple[float, float, float]:
    """(max|PEFT − llama.cpp|, argmax agreement, max|adapter effect| in llama.cpp), PEFT on the fp32 base on CPU.

    A QLoRA adapter is trained against NF4 weights but served on the full-precision base (Ollama's GGUF): the
    comparison is the adapter on that base, in PEFT and in llama.cpp.
    """
    import torch

    from deploy.gguf import convert_adapter
    from tests.harness.parity import CHAT, llama_cpp, llama_logits
    from trainer.recipe import load_adapter

    adapter_gguf = convert_adapter(adapter_dir, base_dir, gguf_out, outtype="f32")
    model = load_adapter(base_dir, adapter_dir).eval()
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(base_dir).apply_chat_template(CHAT, tokenize=False,
                                                                        add_generation_prompt=True)
    vocab = llama_cpp.Llama(model_path=str(base_gguf), vocab_only=True, verbose=False)
    ids = vocab.tokenize(prompt.encode(), add_bos=False, special=True)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    theirs = llama_logits(base_gguf, ids, adapter_gguf)
    effect = float(np.abs(theirs - llama_logits(base_gguf, ids)).max())
    return float(np.abs(ours - theirs).max()), float((ours.argmax(-1) == theirs.argmax(-1)).mean()), effect


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory) -> Path:
    from tests.harness.snapshots import synthetic_conversations, write_snapshot

    return write_snapshot(tmp_path_factory.mktemp("snapshot"), synthetic_conversations(100, seed=0))


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, snapshot_dir, tiny_llama_dir) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("qlora") / "out"
    return out, train_tiny(out, snapshot_dir, tiny_llama_dir, qlora=True)


def test_qlora_loads_4bit_and_learns(qlora_run, capsys):
    import torch

    out, metrics = qlora_run
    assert_learned(metrics, "cuda")
    # The 4-bit base computes in the precision the GPU offers (bnb_4bit_compute_dtype), as recorded by the run.
    assert metrics["train_dtype"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    with capsys.disabled():
        print(f"\n[QLoRA] {metrics['steps']} steps, eval loss {metrics['eval_loss_before']:.3f} → "
              f"{metrics['eval_loss_after']:.3f}, peak memory {metrics['peak_memory_bytes'] / 2**20:.1f} MiB, "
              f"{metrics['tokens_per_s']:.0f} tok/s")


def test_qlora_base_is_nf4(tiny_llama_dir):
    """load_base_model really quantises: 4-bit linears, double quantisation, the KV cache off."""
    import bitsandbytes as bnb

    from trainer.config import TrainConfig
    from trainer.recipe import load_base_model

    model = load_base_model(tiny_llama_dir, TrainConfig(qlora=True), cuda=True)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 7 * model.config.num_hidden_layers
    assert all(m.weight.quant_state.nested and m.weight.quant_type == "nf4" for m in linears)
    assert model.config.use_cache is False


def test_bf16_lora_learns(tmp_path, snapshot_dir, tiny_llama_dir, capsys):
    import torch

    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16: the trainer uses fp16 there")
    metrics = train_tiny(tmp_path / "out", snapshot_dir, tiny_llama_dir, qlora=False)
    assert_learned(metrics, "cuda")
    assert metrics["train_dtype"] == "bfloat16"  # what the run computed in, recorded by the run itself
    with capsys.disabled():
        print(f"\n[bf16 LoRA] eval loss {metrics['eval_loss_before']:.3f} → {metrics['eval_loss_after']:.3f}, "
              f"peak memory {metrics['peak_memory_bytes'] / 2**20:.1f} MiB, {metrics['tokens_per_s']:.0f} tok/s")


def test_qlora_adapter_matches_peft_in_llama_cpp(qlora_run, tiny_llama_dir, tiny_llama_gguf, tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (bench/gpu_run.sh carries it)")
    out, _ = qlora_run
    diff, agree, effect = parity(out, tiny_llama_dir, tiny_llama_gguf, tmp_path / "adapter.gguf")
    with capsys.disabled():
        print(f"\n[QLoRA adapter] PEFT vs llama.cpp max|Δ|={diff:.2e}, argmax agreement {agree:.0%}; "
              f"adapter effect max|Δ|={effect:.2f}")
    assert diff <= 1e-2 and agree == 1.0
    assert effect > 0.5  # the trained adapter really moves the logits, so the check above can fail
