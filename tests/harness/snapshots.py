"""Synthetic teaching data, snapshot directories, and the training settings that learn it (for tests and bench).

The data is learnable by a tiny random model in a few dozen steps — a fixed answer pattern per question
kind, an end-of-turn to learn — and its lengths vary (a few words to a few dozen) like real Q&A pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data import snapshot as data_snapshot
from data.conversation import Conversation

THINGS = ["cat", "dog", "tree", "river", "house", "model", "train", "bird", "stone", "cloud", "apple", "road"]
COLOURS = ["red", "blue", "green", "white", "black", "yellow"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# Training settings that learn this data on CPU, small but real: enough steps for the tiny model to learn the
# answer pattern, few generated tokens.
FAST = {
    # One torch thread: a tiny model gains little from two, and loses half its speed when the cores are shared.
    "cpu_threads": 1,
    "learning_rate": 5e-3, "epochs": 3, "batch_size": 8, "max_new_tokens": 12, "eval_generate": 6,
    "probes": ["Hello! Who are you?", "what colour is the sky?"], "probe_eval_samples": 2,
}


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


@dataclass(frozen=True)
class _Example:
    content_hash: str
    messages: list[dict[str, str]]
    tags: list[str]
    source: str
    tools: str | None


def write_snapshot(directory: Path, conversations: Sequence[Conversation], eval_fraction: float = 0.1,
                   source: str = "synthetic") -> Path:
    """A snapshot directory written by the data side's own writer (examples.jsonl + manifest.json)."""
    examples = [_Example(c.content_hash(), c.to_dicts(), list(c.tags), source, c.tools) for c in conversations]
    data_snapshot.write_snapshot(examples, directory, eval_fraction)
    return directory
