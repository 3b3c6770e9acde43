"""GPU training throughput of loraloop's trainer path on Qwen2.5-sized models, against plain TRL + PEFT.

    python bench/bench_gpu.py                  # 0.5B, 1.5B, 7B on one CUDA GPU, within --budget-s (default 7.5 min)
    python bench/bench_gpu.py --sizes 1.5b     # one size
    python bench/bench_gpu.py --cpu-smoke      # a tiny config through the same code path, on CPU, < 1 min

Nothing is downloaded: each model is random-initialised from the published Qwen2.5 config (written here), and
the data are synthetic token ids of realistic, variable lengths (a prompt that is not trained on, an answer that
is). Per size, two runs each for LoRA r=16 on every linear projection (bf16 base) and QLoRA (NF4, double quant):

- ``ours``: trainer/recipe.py's path — load_base_model (SDPA attention, Liger kernels), lora_config,
  sft_config with the project's batching (padding-free for LoRA; packing into 1 x 2048 tokens for QLoRA, the
  shape of the 7B memory goal);
- ``baseline``: plain TRL SFTTrainer + PEFT, padded batches, on the same examples in the same order.

Liger patches transformers' Qwen2 module globally, so each side runs in its own process. Tokens/s counts
non-padding tokens over the timed steps (after --warmup steps: Triton compiles its kernels in the first ones).
Ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 151_936  # Qwen2.5's embedding rows (151,665 tokens padded)
PAD_ID = 151_643  # <|endoftext|>, Qwen2.5's pad token
# The published configs (Qwen/Qwen2.5-{0.5B,1.5B,7B}-Instruct config.json); the smoke config only exercises the path.
SIZES: dict[str, dict] = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, vocab_size=4096),
}
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
              hidden_act="silu", use_sliding_window=False, bos_token_id=PAD_ID, eos_token_id=151_645,
              initializer_range=0.02)
# Dense bf16 peak by device name. The H200 figure is what an 8192^3 bf16 matmul measured on this project's H200
# (datasheet: 989); the others are datasheet figures (dense, fp32 accumulate).
PEAK_TFLOPS = [("H200", 790.0, "measured on the project's H200 (datasheet 989)"),
               ("H100 PCIe", 756.0, "datasheet"), ("H100", 989.0, "datasheet (SXM)"),
               ("A100", 312.0, "datasheet"), ("L40S", 362.0, "datasheet"), ("L4", 121.0, "datasheet"),
               ("4090", 165.0, "datasheet")]
GOALS = {"lora_1.5b_mfu": 0.40, "lora_1.5b_vs_baseline": 1.5, "qlora_7b_peak_gb": 12.0}
FORMULA = (
    "FLOPs per trained token = 4*N_base + 6*N_lora + 6*L*(h*d_head)*s_eff\n"
    "  N_base: weights of every block linear (q,k,v,o,gate,up,down) + the LM head: forward 2N, backward to the\n"
    "          activations 2N, no weight gradient (frozen); embedding lookups, norms, biases not counted\n"
    "  N_lora: LoRA A/B weights: forward 2, activation gradient 2, weight gradient 2\n"
    "  attention: QK^T and AV cost 4*h*d_head per (query, key) pair forward; causal, within each example:\n"
    "          s(s+1)/2 pairs for an example of s tokens; backward 2x forward; per token that is\n"
    "          6*L*h*d_head*s_eff with s_eff = sum s(s+1) / sum s over the examples (12*L*d*s halved for causality)\n"
    "  not counted: padding, gradient-checkpointing recompute, dequantisation (QLoRA), the optimizer\n"
    "MFU = non-padding tokens/s * FLOPs per token / peak"
)


# ---- data --------------------------------------------------------------------------------------------------
def synthetic_examples(n: int, max_length: int, vocab: int, seed: int = 0, median: int = 400) -> list[dict]:
    """Prompt + answer token ids with the prompt masked (-100), lengths log-normal around ``median``."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = int(min(max_length, max(32, rng.lognormvariate(math.log(median), 0.75))))
        prompt = max(8, int(length * rng.uniform(0.15, 0.6)))
        pad = pad_id(vocab)
        ids = [rng.randrange(vocab) for _ in range(length)]
        ids = [i if i != pad else i - 1 for i in ids]  # "non-padding" tokens are counted as != pad
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return examples


def pad_id(vocab: int) -> int:
    return PAD_ID if PAD_ID < vocab else vocab - 1


def s_eff(examples: list[dict]) -> float:
    lengths = [len(e["input_ids"]) for e in examples]
    return sum(s * (s + 1) for s in lengths) / sum(lengths)


# ---- models ------------------------------------------------------------------------------------------------
def model_config(size: str):
    from transformers import Qwen2Config

    values = {**COMMON, **SIZES[size]}
    vocab = values["vocab_size"]
    return Qwen2Config(**{**values, "bos_token_id": pad_id(vocab), "eos_token_id": min(151_645, vocab - 2)})


def base_flops(size: str) -> tuple[int, int, int]:
    """(N_base linear weights incl. LM head, layers, h*d_head) from the config."""
    c = {**COMMON, **SIZES[size]}
    d, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    d_head = d // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d_head, c["num_key_value_heads"] * d_head
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * inter
    return layers * per_layer + c["vocab_size"] * d, layers, q


def build_model(size: str, out: Path, cuda: bool) -> Path:
    """A random-initialised checkpoint (bf16 on CUDA) plus a minimal tokenizer naming the pad/eos ids."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    if cuda:  # initialising 7B on the GPU takes a second, on CPU a minute
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(model_config(size), dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_config(model_config(size), dtype=torch.float32)
    model.save_pretrained(out)
    del model
    if cuda:
        torch.cuda.empty_cache()
    minimal_tokenizer(SIZES[size].get("vocab_size", VOCAB)).save_pretrained(out)
    return out


def minimal_tokenizer(vocab: int):
    """The data are ids already: TRL only needs a pad (and eos) id from the processing class."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<|endoftext|>": pad_id(vocab), "<|im_end|>": min(151_645, vocab - 2)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(words, unk_token="<unk>")),
                                   unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>")


# ---- one run (inside a worker process) ---------------------------------------------------------------------
def run_variant(side: str, quant: str, size: str, model_dir: Path, examples: list[dict], args, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from trainer.config import TrainConfig
    from trainer.recipe import load_base_model, lora_config, sft_config

    cuda = torch.cuda.is_available()
    qlora = quant == "qlora"
    # Checkpointing recomputes the forward (not counted as useful FLOPs): on where memory is the point (QLoRA)
    # or the size needs it; both sides alike.
    checkpointing = qlora or size == "7b"
    packing = side == "ours" and qlora  # the memory goal's shape: batch 1 x max_length tokens
    batch = 1 if packing else args.batch_size
    cfg = TrainConfig(batch_size=batch, max_steps=args.warmup + args.steps, max_length=args.max_length,
                      qlora=qlora, gradient_checkpointing=checkpointing, seed=0,
                      batching="packing" if packing else ("auto" if side == "ours" else "padded"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_list(examples)
    out = workdir / f"{size}-{side}-{quant}"

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), 0))

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    timer = StepTimer()
    t_load = time.perf_counter()
    if side == "ours":
        from peft import get_peft_model

        model = get_peft_model(load_base_model(model_dir, cfg, cuda), lora_config(cfg))
        sft = sft_config(cfg, out, 1, cuda, False, model)
        sft.save_strategy = "no"
        trainer = SFTTrainer(model=model, args=sft, processing_class=tokenizer, train_dataset=dataset,
                             callbacks=[timer])
    else:
        model = _plain_model(model_dir, qlora, checkpointing, cuda)
        sft = SFTConfig(
            output_dir=str(out), per_device_train_batch_size=batch, max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
            max_length=args.max_length, bf16=cuda, gradient_checkpointing=checkpointing, use_cpu=not cuda,
            seed=cfg.seed, data_seed=cfg.seed, report_to="none", disable_tqdm=True, save_strategy="no",
            logging_steps=1, include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
            shuffle_dataset=True,  # as sft_config: the same examples in the same order on both sides
        )
        trainer = SFTTrainer(model=model, args=sft, processing_class=tokenizer, train_dataset=dataset,
                             peft_config=lora_config(cfg), callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    load_s = time.perf_counter() - t_load
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    marks = timer.marks
    (t0, seen0), (t1, seen1) = marks[min(args.warmup, len(marks) - 2)], marks[-1]
    timed_steps = len(marks) - 1 - min(args.warmup, len(marks) - 2)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    n_base, layers, attn_width = base_flops(size)
    n_lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    flops_per_token = 4 * n_base + 6 * n_lora + 6 * layers * attn_width * s_eff(examples)
    tokens_per_s = (seen1 - seen0) / (t1 - t0)
    row = {
        "size": size, "quant": quant, "side": side, "batching": cfg.batching if side == "ours" else "padded (TRL)",
        "batch": batch, "gradient_checkpointing": checkpointing, "liger": side == "ours" and _liger_on(cuda),
        "attention": getattr(model.config, "_attn_implementation", None), "load_s": round(load_s, 1),
        "timed_steps": timed_steps, "tokens": seen1 - seen0, "tokens_per_s": round(tokens_per_s, 1),
        "step_time_s": round((t1 - t0) / timed_steps, 4), "tokens_per_step": round((seen1 - seen0) / timed_steps),
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "n_base": n_base, "n_lora": n_lora, "flops_per_token": flops_per_token,
    }
    if cuda:
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    else:  # the process's peak RSS: everything, not only this run
        row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return row


def _plain_model(model_dir: Path, qlora: bool, checkpointing: bool, cuda: bool):
    """What the TRL/PEFT docs show: bf16 (or NF4 double-quant) with SDPA, prepared for k-bit training."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": "sdpa"}
    if cuda:
        kwargs["device_map"] = {"": 0}
    if qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    return model


def _liger_on(cuda: bool) -> bool:
    from transformers.utils import is_liger_kernel_available

    return cuda and is_liger_kernel_available()


def worker(args) -> None:
    """Run one side's variants for one size; one ``RESULT {json}`` line per run on stdout."""
    import torch

    _quiet()
    if args.cpu_smoke and not torch.cuda.is_available():
        torch.set_num_threads(1)  # a tiny model on shared cores: one thread is steadier and not slower
    examples = synthetic_examples(args.examples, args.max_length, SIZES[args.size].get("vocab_size", VOCAB),
                                  median=args.median_length)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gpu-run-"))
    for quant in args.quants.split(","):
        if quant == "qlora" and not torch.cuda.is_available():
            print("SKIP " + json.dumps({"quant": quant, "reason": "QLoRA needs CUDA (bitsandbytes 4-bit)"}),
                  flush=True)
            continue
        left = args.deadline - time.time()
        need = estimate_s(args.size, quant, args)
        if left < need:
            print("SKIP " + json.dumps({"quant": quant, "reason": f"{left:.0f}s left of the budget, a run needs "
                                                                  f"~{need:.0f}s"}), flush=True)
            continue
        try:
            row = run_variant(args.side, quant, args.size, Path(args.model_dir), examples, args, workdir)
        except torch.cuda.OutOfMemoryError as exc:
            row = {"size": args.size, "quant": quant, "side": args.side, "error": f"out of memory: {exc}"[:300]}
            torch.cuda.empty_cache()
        print("RESULT " + json.dumps(row), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)


def estimate_s(size: str, quant: str, args) -> float:
    """A pessimistic run time: process start, load (+ NF4 quantisation), Triton compiles, steps at 20% MFU."""
    if args.cpu_smoke:
        return 10.0
    n_base = base_flops(size)[0]
    load = 15 + n_base * 2 / 2e9 + (n_base / 5e8 if quant == "qlora" else 0)
    tokens = (args.warmup + args.steps) * args.batch_size * args.median_length
    steps = tokens * 4 * n_base / (0.2 * (args.peak or 100) * 1e12)
    return load + steps


def _quiet() -> None:
    import logging
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("liger_kernel").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


# ---- the parent: sizes, budget, report ---------------------------------------------------------------------
def detect_peak(given: float | None) -> tuple[float | None, str, str]:
    import torch

    if not torch.cuda.is_available():
        return given, "cpu", "given with --peak-tflops" if given else "none: no GPU, MFU not computed"
    name = torch.cuda.get_device_name()
    if given:
        return given, name, "given with --peak-tflops"
    for fragment, tflops, source in PEAK_TFLOPS:
        if fragment in name:
            return tflops, name, f"{fragment} bf16 dense, {source}"
    return None, name, "unknown GPU: pass --peak-tflops for MFU"


def run_side(side: str, size: str, model_dir: Path, args, quants: list[str]) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--side", side, "--size", size,
           "--model-dir", str(model_dir), "--quants", ",".join(quants), "--deadline", str(args.deadline)]
    for flag in ("steps", "warmup", "batch_size", "max_length", "examples", "median_length"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--peak-tflops", str(args.peak or 0)] + (["--cpu-smoke"] if args.cpu_smoke else [])
    rows = []
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout.splitlines():
        kind, _, payload = line.partition(" ")
        if kind in ("RESULT", "SKIP"):
            row = json.loads(payload)
            rows.append({**row, "size": size, "side": side, "skipped": row.get("reason")} if kind == "SKIP" else row)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        rows.append({"size": size, "side": side, "error": f"worker exited {proc.returncode}: " + " | ".join(tail)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.5b,1.5b,7b", help="comma list of 0.5b, 1.5b, 7b")
    parser.add_argument("--quants", default="lora,qlora", help="comma list of lora, qlora")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (Triton compiles, allocator)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--median-length", type=int, default=400, help="median example length in tokens")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--budget-s", type=float, default=450, help="stop starting runs that would end after this")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak of this GPU (default: by its name)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny config, same code path, on CPU")
    parser.add_argument("--json-out", type=Path, help="also write the final JSON object to this file")
    # internal: one side of one size in its own process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_smoke:
        args.sizes, args.steps, args.warmup, args.batch_size = "smoke", 4, 1, 4
        args.max_length, args.median_length, args.examples = 256, 64, 64
    if args.worker:
        args.peak = args.peak_tflops or None
        return worker(args)

    import torch

    t_start = time.time()
    args.deadline = t_start + args.budget_s
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        sys.exit("no CUDA GPU here: run with --cpu-smoke to check the code path on CPU")
    if cuda and args.cpu_smoke:
        print("note: --cpu-smoke on a CUDA machine runs the tiny config on the GPU")
    args.peak, device, peak_source = detect_peak(args.peak_tflops)
    print(f"device: {device}; torch {torch.__version__}; peak for MFU: "
          f"{f'{args.peak:.0f} TFLOP/s' if args.peak else 'n/a'} ({peak_source})")
    print(f"LoRA r=16 alpha=32 all-linear; {args.warmup} warm-up + {args.steps} timed steps per run; batch "
          f"{args.batch_size} (QLoRA ours: packing 1 x {args.max_length}); synthetic examples median "
          f"{args.median_length}, max {args.max_length} tokens; budget {args.budget_s:.0f}s\n")
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    rows: list[dict] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            # The 7B's memory goal is QLoRA's: when time is short it runs first.
            order = sorted(quants, key=lambda q: q != "qlora") if size == "7b" else quants
            need = estimate_s(size, order[0], args)
            left = args.deadline - time.time()
            if left < need + 20:
                rows.append({"size": size, "skipped": f"{left:.0f}s left of the budget, a {size} run needs "
                                                      f"~{need:.0f}s plus building the model"})
                print(f"== {size}: skipped ({rows[-1]['skipped']})", flush=True)
                continue
            t0 = time.time()
            model_dir = build_model(size, workdir / size, cuda)
            print(f"== {size}: random-initialised Qwen2.5-{size} config built in {time.time() - t0:.0f}s", flush=True)
            for side in ("ours", "baseline"):
                for row in run_side(side, size, model_dir, args, order):
                    rows.append(row)
                    print("   " + _line(row, args.peak), flush=True)
            shutil.rmtree(model_dir, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, args, device, peak_source, time.time() - t_start)


def _mfu(row: dict, peak: float | None) -> float | None:
    if not peak or "tokens_per_s" not in row:
        return None
    return row["tokens_per_s"] * row["flops_per_token"] / (peak * 1e12)


def _line(row: dict, peak: float | None) -> str:
    name = f"{row.get('size', '?'):>5s} {row.get('quant', ''):5s} {row.get('side', ''):8s}"
    if "error" in row:
        return f"{name} ERROR {row['error']}"
    if row.get("skipped"):
        return f"{name} skipped: {row['skipped']}"
    mfu = _mfu(row, peak)
    memory = (f"peak {row['peak_memory_gb']:6.2f} GB" if "peak_memory_gb" in row
              else f"peak RSS {row['peak_rss_gb']:.2f} GB (process)")
    return (f"{name} {row['tokens_per_s']:>10.0f} tok/s  step {row['step_time_s'] * 1000:7.1f} ms "
            f"({row['tokens_per_step']} tok)  {memory}  MFU {f'{mfu:.1%}' if mfu is not None else 'n/a':>6s}  "
            f"loss {row['loss_first']:.2f}->{row['loss_last']:.2f}  [{row['batching']}, batch {row['batch']}, "
            f"ckpt {'on' if row['gradient_checkpointing'] else 'off'}, liger {'on' if row['liger'] else 'off'}, "
            f"{row['attention']}, load {row['load_s']}s]")


def _find(rows: list[dict], size: str, quant: str, side: str) -> dict | None:
    return next((r for r in rows if (r.get("size"), r.get("quant"), r.get("side")) == (size, quant, side)
                 and "tokens_per_s" in r), None)


def report(rows: list[dict], args, device: str, peak_source: str, wall: float) -> None:
    print("\n" + FORMULA)
    for row in rows:
        mfu = _mfu(row, args.peak)
        if mfu is not None:
            row["mfu"] = round(mfu, 4)
        base = _find(rows, row.get("size"), row.get("quant"), "baseline")
        if row.get("side") == "ours" and base and "tokens_per_s" in row:
            row["vs_baseline"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
    ours15, ours7 = _find(rows, "1.5b", "lora", "ours"), _find(rows, "7b", "qlora", "ours")
    goals = {
        "lora_1.5b_mfu": {"goal": f">= {GOALS['lora_1.5b_mfu']:.0%}", "value": ours15 and ours15.get("mfu")},
        "lora_1.5b_vs_baseline": {"goal": f">= {GOALS['lora_1.5b_vs_baseline']}x",
                                  "value": ours15 and ours15.get("vs_baseline")},
        "qlora_7b_peak_gb_1x2048": {"goal": f"<= {GOALS['qlora_7b_peak_gb']:.0f} GB",
                                    "value": ours7 and ours7.get("peak_memory_gb")},
    }
    limits = {"lora_1.5b_mfu": (GOALS["lora_1.5b_mfu"], 1),
              "lora_1.5b_vs_baseline": (GOALS["lora_1.5b_vs_baseline"], 1),
              "qlora_7b_peak_gb_1x2048": (GOALS["qlora_7b_peak_gb"], -1)}
    print("\ngoals:")
    for key, goal in goals.items():
        value, (limit, sign) = goal["value"], limits[key]
        goal["met"] = None if value is None else (value - limit) * sign >= 0
        shown = "not measured" if value is None else (f"{value:.1%}" if key.endswith("mfu") else f"{value}")
        verdict = {None: "", True: "  met", False: "  NOT met"}[goal["met"]]
        print(f"  {key:26s} {goal['goal']:>9s}  measured {shown}{verdict}")
    print(f"({wall:.0f}s total)")
    result = {"device": device, "peak_tflops": args.peak, "peak_source": peak_source, "flops_formula": FORMULA,
              "steps": args.steps, "warmup": args.warmup, "wall_s": round(wall, 1), "goals": goals, "runs": rows}
    line = json.dumps(result)
    if args.json_out:
        args.json_out.write_text(line + "\n", encoding="utf-8")
    print(line)


if __name__ == "__main__":
    main()
