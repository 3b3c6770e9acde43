"""Training throughput: loraloop's recipe vs a plain TRL padded baseline on the same data and model.

    python bench/bench_train.py                      # tiny Llama built offline, CPU
    python bench/bench_train.py --base DIR --steps 30
    python bench/bench_train.py --size 0.5b          # random-initialised ~0.5B Llama (for a GPU; reports MFU)

Tokens/s counts real (non-padding) tokens over TRL's train runtime. Both sides train the same
conversations with the same LoRA (r16, all linear), learning rate, batch size and number of steps; the
baseline is what a user gets from ``SFTTrainer`` with a ``messages`` dataset and only the settings CPU
training needs (bf16 and gradient checkpointing off). Each variant runs ``--repeats`` times alternately;
the best run counts (the machine is shared, the best is the least disturbed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 peak FLOP/s by GPU name fragment (vendor datasheets).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def _tiny_base(workdir: Path) -> Path:
    try:
        from trainer.tiny import build_tiny_model
    except ImportError:
        sys.exit("trainer.tiny is not available: pass --base DIR")
    return build_tiny_model(workdir / "tiny", arch="llama", template="chatml")


def _sized_base(tiny: Path, size: str, workdir: Path) -> Path:
    """A random-initialised model of a real size with the tiny model's tokenizer (throughput only)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = {"0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2),
            "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2)}[size]
    out = workdir / f"random-{size}"
    shutil.copytree(tiny, out)
    config = AutoConfig.from_pretrained(tiny)
    for key, value in dims.items():
        setattr(config, key, value)
    config.head_dim = dims["hidden_size"] // dims["num_attention_heads"]
    config.initializer_range = 0.02
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def _run(name: str, base: Path, conversations, args, ours: bool, batching: str, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trainer.config import TrainConfig
    from trainer.prepare import ChatFormat
    from trainer.recipe import load_base_model, lora_config, sft_config

    cuda = torch.cuda.is_available()
    cfg = TrainConfig(batch_size=args.batch_size, max_steps=args.steps, batching=batching, max_length=args.max_length)
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    if ours:
        model = load_base_model(base, cfg, cuda)
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg))
        dataset = Dataset.from_list(ChatFormat(tokenizer).prepare(conversations, cfg.max_length).examples)
        sft = sft_config(cfg, workdir / name, 1, cuda, False, model)
        sft.save_strategy = "no"
        sft.logging_steps = 10
        peft_config = None
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if cuda else torch.float32)
        dataset = Dataset.from_list([{"messages": c.to_dicts()} for c in conversations])
        sft = SFTConfig(
            output_dir=str(workdir / name), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio,
            max_length=args.max_length, bf16=cuda, gradient_checkpointing=False, use_cpu=not cuda,
            report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=10,
            include_num_input_tokens_seen="non_padding",
        )
        peft_config = lora_config(cfg)
    trainer = SFTTrainer(model=model, args=sft, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    runtime = result.metrics["train_runtime"]
    tokens = int(trainer.state.num_input_tokens_seen)
    params = sum(p.numel() for p in model.parameters())
    row = {"variant": name, "tokens": tokens, "runtime_s": round(runtime, 3), "tokens_per_s": tokens / runtime,
           "params": params}
    if cuda:
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name()), None)
        if peak:
            # LoRA: forward 2N + backward through activations 2N FLOPs per token (no weight gradients for N).
            row["mfu"] = tokens / runtime * 4 * params / peak
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="model directory (default: build the tiny model)")
    parser.add_argument("--size", choices=["tiny", "0.5b", "1.5b"], default="tiny")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="baseline,padded,padding_free",
                        help="comma list of baseline, padded, padding_free, packing")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (1 is steadier on a busy machine)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    from tests.harness.snapshots import synthetic_conversations

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    base = args.base or _tiny_base(workdir)
    if args.size != "tiny":
        base = _sized_base(base, args.size, workdir)
    conversations = synthetic_conversations(args.examples, seed=1)
    lengths = [len(c.messages[-1].content) for c in conversations]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device}; base: {base}; {len(conversations)} conversations, answer length "
          f"{min(lengths)}-{max(lengths)} chars (median {statistics.median(lengths):.0f}); "
          f"{args.steps} steps x batch {args.batch_size}", file=sys.stderr)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    best: dict[str, dict] = {}
    runs: dict[str, list[float]] = {v: [] for v in variants}
    t0 = time.monotonic()
    for repeat in range(args.repeats):
        for variant in variants:
            row = _run(variant, base, conversations, args, ours=variant != "baseline",
                       batching="padded" if variant == "baseline" else variant, workdir=workdir)
            print(f"  run {repeat + 1}: {variant:13s} {row['tokens_per_s']:10.0f} tok/s", file=sys.stderr)
            runs[variant].append(row["tokens_per_s"])
            if variant not in best or row["tokens_per_s"] > best[variant]["tokens_per_s"]:
                best[variant] = row

    # Two views of the ratio on a shared machine: best vs best, and the median of back-to-back pairs.
    baseline = best.get("baseline")
    print(f"\n{'variant':14s} {'tok/s':>10s} {'best/best':>10s} {'paired':>8s} {'tokens':>8s} {'runtime s':>10s}"
          + ("   MFU    peak GiB" if torch.cuda.is_available() else ""))
    for variant, row in best.items():
        ratio = row["tokens_per_s"] / baseline["tokens_per_s"] if baseline else float("nan")
        paired = (statistics.median(a / b for a, b in zip(runs[variant], runs["baseline"], strict=True))
                  if baseline else float("nan"))
        row["vs_baseline"], row["vs_baseline_paired_median"] = ratio, paired
        line = (f"{variant:14s} {row['tokens_per_s']:10.0f} {ratio:9.2f}x {paired:7.2f}x {row['tokens']:8d} "
                f"{row['runtime_s']:10.2f}")
        if "mfu" in row:
            line += f"  {row['mfu'] * 100:5.1f}%  {row['peak_mem_gib']:8.2f}"
        print(line)
    print(f"(best of {args.repeats}; {time.monotonic() - t0:.0f}s total)")
    if args.json:
        print(json.dumps({"device": device, "results": best}))


if __name__ == "__main__":
    main()
