"""An answer's reasoning is trained in the base family's convention, found by rendering with its template."""

from __future__ import annotations

from pathlib import Path

import pytest
import trl
from transformers import AutoTokenizer

from data.conversation import Conversation
from trainer.prepare import ChatFormat

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
REASONING = "First recall that LoRA adds low-rank matrices."


def conversation() -> Conversation:
    return Conversation.from_dicts([{"role": "user", "content": "What is LoRA?"},
                                    {"role": "assistant", "content": "A low-rank adapter.", "reasoning": REASONING}])


@pytest.mark.parametrize(("template", "style", "trained"), [
    ("qwen3.jinja", "reasoning_content", True),  # Qwen3 renders reasoning_content as <think>…</think>
    ("qwen2_5.jinja", "dropped", False),  # no convention: only the answer is trained
])
def test_reasoning_follows_the_family_convention(tiny_llama_dir, template, style, trained):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    fmt = ChatFormat(tokenizer, (TEMPLATES / template).read_text(encoding="utf-8"), end_of_turn=["<|im_end|>"])
    assert fmt.reasoning_style == style
    rendered = fmt.rendered(conversation())
    text = "".join(rendered.trained_text())
    assert "A low-rank adapter." in text
    assert (REASONING in text) is trained
    assert "<think>" not in fmt.prompt(conversation())  # the prompt side never carries the answer's reasoning


def test_a_template_that_strips_thinking_from_answers_trains_none(tiny_llama_dir):
    """The R1-distill template keeps only what follows </think> in an assistant turn: putting the reasoning there
    would silently train nothing of it, so the convention is recorded as dropped."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    fmt = ChatFormat(tokenizer, (TEMPLATES / "deepseek_r1_distill.jinja").read_text(encoding="utf-8"),
                     end_of_turn=["<｜end▁of▁sentence｜>"])
    assert fmt.reasoning_style == "dropped"
