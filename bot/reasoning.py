"""A reasoning model's thinking, kept out of the answer shown on Discord.

Reasoning bases (R1 distills, Qwen3 …) stream ``<think>…</think>`` before the answer, or Ollama hands the thinking
apart (``think: true`` → ``message.thinking``). Either way the raw tags must never reach Discord: the chat path
splits each streamed text with ``split_thinking`` (safe on any prefix of the stream: a tag cut in half is never
shown) and shows the thinking with ``render_thinking``: collapsed behind a spoiler, or not at all.
"""

from __future__ import annotations

from typing import Literal

OPEN, CLOSE = "<think>", "</think>"
ThinkingMode = Literal["spoiler", "hidden"]
# Shown thinking is cut to this many characters: the answer must keep most of a 2,000-character message.
THINKING_SHOWN_MAX = 600


def split_thinking(text: str, *, opened: bool = False) -> tuple[str, str]:
    """(thinking, answer) of a reply streamed so far; both "" while nothing shown can be decided yet.

    ``opened``: the prompt already opened the block (R1-style templates end the prompt with ``<think>``), so the
    reply starts inside it. A ``</think>`` or ``<think>`` cut at the end of the text is held back, not shown.
    """
    body = text.lstrip()
    if not opened:
        if OPEN.startswith(body):  # "", "<", "<thi": may still become the opening tag
            return "", ""
        if not body.startswith(OPEN):
            return "", text
        body = body[len(OPEN):]
    end = body.find(CLOSE)
    if end < 0:
        return _without_partial(body, CLOSE).strip(), ""
    return body[:end].strip(), body[end + len(CLOSE):].lstrip()


def _without_partial(text: str, tag: str) -> str:
    """``text`` without a trailing prefix of ``tag`` (the start of a tag whose rest has not arrived)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return text[:-size]
    return text


def render_thinking(thinking: str | None, mode: ThinkingMode = "spoiler") -> str:
    """What goes before the answer: the thinking behind a Discord spoiler (collapsed), or nothing."""
    if mode == "hidden" or not thinking or not thinking.strip():
        return ""
    if mode != "spoiler":
        raise ValueError(f"thinking mode must be spoiler or hidden, not {mode!r}")
    shown = " ".join(thinking.split())
    if len(shown) > THINKING_SHOWN_MAX:
        shown = shown[:THINKING_SHOWN_MAX - 1] + "…"
    # A "|" would end the spoiler early and a backtick open a code span across it: escape both.
    shown = shown.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return f"💭 ||{shown}||\n\n"
