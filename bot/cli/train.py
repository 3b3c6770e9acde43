"""``loraloop train``: LoRA/QLoRA fine-tune from a snapshot (runs on the GPU host, no database)."""

from __future__ import annotations

from bot.cli.common import fail


def train() -> None:
    """Train a LoRA adapter from a dataset snapshot."""
    fail("training is not available yet")
