"""What experts' teaching does to a real model: facts learned, rewordings answered, general ability kept.

    python bench/bench_quality.py                          # SmolLM2-135M-Instruct (offline, PyPI), CPU
    python bench/bench_quality.py --runs defaults,no-replay
    python bench/bench_quality.py --device cuda --base DIR # a larger instruct base on a GPU

The taught data is tests/harness/facts.py: an identity in 10 phrasings and 20 made-up product facts in 2 phrasings
each (50 pairs); every fact is asked once more in a wording never trained (23 held-out rewordings). Each run trains
with the product's recipe (trainer/recipe.py) and one variant of the settings, then answers greedily with PEFT on
the base (llama.cpp on the Q4_1 file gives the same text on 68 of 70 prompts, shared/notes/real-models.md):

- trained / held-out: share of answers carrying the taught fact, on the trained questions and on the rewordings;
- retrieval only: the base answers the rewordings with the expert answers retrieval finds for them (MiniLM
  embeddings + BM25, the bot's own block) in its system message; retrieval + fine-tune: the tuned model the same;
- retention: the trainer's NLL increase of the base's own answers to the general prompt set (the gate's check);
- general answers before/after, quoted; seconds per optimizer step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEM = "You are a helpful assistant."
GENERAL = ("What is 17 times 3?", "What is the capital of China?", "Is 7 a prime number? Answer in one sentence.")
# The variants: the product's defaults, the same without replay, the defaults before this measurement, and an
# over-trained run the gate must refuse.
RUNS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no-replay": {"replay_ratio": 0.0},
    "old-defaults": {"learning_rate": 2e-4, "epochs": 5, "batch_size": 8, "replay_ratio": 0.0},
    "over-trained": {"learning_rate": 5e-3, "epochs": 12, "replay_ratio": 0.0},
}


def _snapshot(out: Path, facts: tuple, identity: int) -> Path:
    from data.conversation import Conversation
    from tests.harness.facts import heldout, taught
    from tests.harness.snapshots import write_snapshot

    convs = [Conversation.qa(q, a) for q, a in taught(facts, identity)]
    convs += [Conversation(Conversation.qa(q, f.answer).messages, ("holdout",)) for q, f in heldout(facts)]
    return write_snapshot(out, convs, eval_fraction=0.0)


class Retrieval:
    """The bot's retrieval over the taught pairs: BM25 + MiniLM vectors, its expert-answers block."""

    def __init__(self, pairs: list[tuple[str, str]], minilm: Path | None) -> None:
        from data.retrieval import Pair, RetrievalIndex

        self.index = RetrievalIndex()
        self.embedder = None
        items = [Pair(i + 1, q, a) for i, (q, a) in enumerate(pairs)]
        if minilm is not None:
            from trainer.real import SentenceEmbedder

            self.embedder = SentenceEmbedder(minilm)
            self.index.add(items, self.embedder.embed([p.question for p in items]))
        else:
            self.index.add(items)

    def system(self, question: str, k: int = 3) -> str:
        from bot.retrieval import Retrieved

        vector = self.embedder.embed([question])[0] if self.embedder else None
        hits = self.index.query(question, k, vector=vector)
        return Retrieved(tuple(hits)).system_message(SYSTEM)


def _answer(model: Any, tokenizer: Any, chats: list[list[dict[str, str]]], max_new: int = 48) -> list[str]:
    """Greedy answers, in left-padded batches of 8, rendered with the base's chat template (trainer/evaluate.py)."""
    from data.conversation import Conversation
    from trainer.evaluate import generate
    from trainer.prepare import ChatFormat

    fmt = ChatFormat(tokenizer, None, None, ["<|im_end|>", tokenizer.eos_token])
    prompts = [fmt.encode_prompt(Conversation.from_dicts([*chat, {"role": "assistant", "content": ""}]))
               for chat in chats]
    return generate(model, fmt, prompts, max_new)


def _chats(questions: list[str], system: list[str] | None = None) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": (system[i] if system else SYSTEM)}, {"role": "user", "content": q}]
            for i, q in enumerate(questions)]


def run_one(name: str, overrides: dict[str, Any], base: Path, snapshot: Path, work: Path, facts: tuple,
            identity: int, retrieval: Retrieval, device: str) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.harness.facts import IDENTITY, heldout, recall
    from trainer.config import TrainConfig
    from trainer.recipe import TrainRequest, train

    cfg = TrainConfig(system_prompt=SYSTEM, eval_generate=0, probes=[], probe_eval_samples=0, **overrides)
    t0 = time.monotonic()
    metrics = train(TrainRequest(snapshot=snapshot, base=str(base), out=work / name, config=cfg))
    wall = time.monotonic() - t0
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    model = PeftModel.from_pretrained(model, work / name).eval()
    trained = [(q, f) for f in facts for q in f.questions] + [(q, IDENTITY) for q in IDENTITY.questions[:identity]]
    held = heldout(facts)
    t_ans = _answer(model, tokenizer, _chats([q for q, _ in trained]))
    h_ans = _answer(model, tokenizer, _chats([q for q, _ in held]))
    r_ans = _answer(model, tokenizer, _chats([q for q, _ in held], [retrieval.system(q) for q, _ in held]))
    general = _answer(model, tokenizer, _chats(list(GENERAL)))
    ret = metrics.get("retention") or {}
    steps = metrics.get("steps") or 1
    return {"run": name, "settings": {k: v for k, v in cfg.model_dump().items()
                                      if k in ("learning_rate", "epochs", "batch_size", "lora_r", "replay_ratio")},
            "epochs": metrics.get("epochs"), "steps": steps,
            "trained": round(recall([(f, a) for (_, f), a in zip(trained, t_ans, strict=True)]), 3),
            "heldout": round(recall([(f, a) for (_, f), a in zip(held, h_ans, strict=True)]), 3),
            "retrieval_finetune": round(recall([(f, a) for (_, f), a in zip(held, r_ans, strict=True)]), 3),
            "retention": ret.get("increase"), "nll_before": ret.get("nll_before"),
            "s_per_step": round((metrics.get("train_runtime_s") or 0) / steps, 2), "wall_s": round(wall, 1),
            "tokens_per_s": metrics.get("tokens_per_s"), "general": dict(zip(GENERAL, general, strict=True)),
            "heldout_answers": [[q, a] for (q, _), a in zip(held, h_ans, strict=True)]}


def base_row(base: Path, facts: tuple, identity: int, retrieval: Retrieval, device: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.harness.facts import IDENTITY, heldout, recall

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device).eval()
    trained = [(q, f) for f in facts for q in f.questions] + [(q, IDENTITY) for q in IDENTITY.questions[:identity]]
    held = heldout(facts)
    return {"run": "base",
            "trained": round(recall([(f, a) for (_, f), a in zip(
                trained, _answer(model, tokenizer, _chats([q for q, _ in trained])), strict=True)]), 3),
            "heldout": round(recall([(f, a) for (_, f), a in zip(
                held, _answer(model, tokenizer, _chats([q for q, _ in held])), strict=True)]), 3),
            "retrieval_only": round(recall([(f, a) for (_, f), a in zip(held, _answer(
                model, tokenizer, _chats([q for q, _ in held], [retrieval.system(q) for q, _ in held])),
                strict=True)]), 3),
            "general": dict(zip(GENERAL, _answer(model, tokenizer, _chats(list(GENERAL))), strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="an instruct model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--facts", type=int, default=20, help="made-up facts taught (of 20)")
    parser.add_argument("--identity", type=int, default=10, help="phrasings of the identity taught (of 10)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from tests.harness.facts import FACTS
    from trainer.real import cached_minilm, cached_smollm2

    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA GPU")
    base = args.base or cached_smollm2()
    facts = FACTS[: args.facts]
    from tests.harness.facts import taught

    retrieval = Retrieval(taught(facts, args.identity), cached_minilm())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = Path(tmp)
        snapshot = _snapshot(work / "snapshot", facts, args.identity)
        rows.append(base_row(base, facts, args.identity, retrieval, args.device))
        print(json.dumps(rows[-1]), flush=True)
        for name in args.runs.split(","):
            rows.append(run_one(name, RUNS[name], base, snapshot, work, facts, args.identity, retrieval, args.device))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'run':<14} {'lr':>7} {'ep':>3} {'replay':>6} {'trained':>8} {'held-out':>9} {'retr.+FT':>9} "
          f"{'retention':>10} {'s/step':>7}")
    b = rows[0]
    print(f"{'base':<14} {'':>7} {'':>3} {'':>6} {b['trained']:>8.2f} {b['heldout']:>9.2f} "
          f"{b['retrieval_only']:>9.2f} {'':>10} {'':>7}   (retrieval only on the base: {b['retrieval_only']:.2f})")
    for r in rows[1:]:
        s = r["settings"]
        print(f"{r['run']:<14} {s['learning_rate']:>7.0e} {r['epochs']:>3} {s['replay_ratio']:>6g} "
              f"{r['trained']:>8.2f} {r['heldout']:>9.2f} {r['retrieval_finetune']:>9.2f} "
              f"{(r['retention'] or 0):>+10.3f} {r['s_per_step']:>7.2f}")
    print("\ngeneral answers:")
    for r in rows:
        print(f"  {r['run']}: " + " | ".join(f"{a[:60]!r}" for a in r["general"].values()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
