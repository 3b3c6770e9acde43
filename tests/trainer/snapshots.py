"""Synthetic teaching data and snapshot directories in the snapshot contract's format (for tests and the bench).

The data is learnable by a tiny random model in a few dozen steps — a fixed answer pattern per question
kind, an end-of-turn to learn — and its lengths vary (a few words to a few dozen) like real Q&A pairs.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from data.conversation import Conversation

THINGS = ["cat", "dog", "tree", "river", "house", "model", "train", "bird", "stone", "cloud", "apple", "road"]
COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def synthetic_conversations(n: int, seed: int = 0, multi_turn_every: int = 7) -> list[Conversation]:
    """``n`` distinct conversations: single Q&A pairs, some with a system prompt, every k-th multi-turn."""
    rng = random.Random(seed)
    out: list[Conversation] = []
    seen: set[str] = set()
    while len(out) < n:
        thing, colour, number = rng.choice(THINGS), rng.choice(COLOURS), rng.choice(NUMBERS)
        kind = rng.randrange(3)
        if kind == 0:
            q, a = f"what colour is the {thing}?", f"the {thing} is {colour}."
        elif kind == 1:
            q, a = f"how many {thing}s are there?", f"there are {number} {thing}s."
        else:
            length = rng.randint(3, 30)
            q = f"tell me about the {thing}."
            a = " ".join(f"the {rng.choice(THINGS)} is {rng.choice(COLOURS)}." for _ in range(length))
        system = "you are a helpful assistant." if rng.random() < 0.3 else None
        if len(out) % multi_turn_every == multi_turn_every - 1:
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": q}, {"role": "assistant", "content": a},
                {"role": "user", "content": f"and the {number} {thing}s?"},
                {"role": "assistant", "content": f"the {number} {thing}s are {colour}."},
            ]
            conv = Conversation.from_dicts(msgs)
        else:
            conv = Conversation.qa(q, a, system)
        key = conv.content_hash()
        if key not in seen:
            seen.add(key)
            out.append(conv.validate())
    return out


def is_eval(example_id: str, eval_fraction: float) -> bool:
    """The contract's hash-stable split: eval iff sha256("loraloop-split:" + id) as a fraction < eval_fraction."""
    digest = hashlib.sha256(f"loraloop-split:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def write_snapshot(directory: Path, conversations: Sequence[Conversation], eval_fraction: float = 0.1,
                   source: str = "synthetic") -> Path:
    """A snapshot directory (examples.jsonl + manifest.json) exactly as the contract describes."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for conv in conversations:
        ident = conv.content_hash()
        rows.append({"id": ident, "split": "eval" if is_eval(ident, eval_fraction) else "train",
                     "messages": conv.to_dicts(), "tags": list(conv.tags), "source": source})
    rows.sort(key=lambda r: r["id"])
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
    (directory / "examples.jsonl").write_bytes(body)
    counts = {"total": len(rows), "train": sum(r["split"] == "train" for r in rows),
              "eval": sum(r["split"] == "eval" for r in rows)}
    manifest = {"format": "loraloop-snapshot/1", "file": "examples.jsonl", "sha256": hashlib.sha256(body).hexdigest(),
                "counts": counts, "eval_fraction": eval_fraction, "created_at": datetime.now(UTC).isoformat(),
                "sources": {source: len(rows)}}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return directory
