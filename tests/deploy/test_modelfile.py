"""deploy.modelfile: the Ollama TEMPLATE/SYSTEM/stop render exactly what the trainer's chat template renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import trl

from deploy.go_template import Template, TemplateError, render_chat
from deploy.modelfile import UnsupportedTemplate, render_hf, serving_format

TEMPLATES = Path(trl.__file__).parent / "chat_templates"
QWEN25 = (TEMPLATES / "qwen2_5.jinja").read_text()
LLAMA3 = (TEMPLATES / "llama3.jinja").read_text()
QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

MULTI = [
    {"role": "user", "content": "What is r?"},
    {"role": "assistant", "content": "The LoRA rank."},
    {"role": "user", "content": "And alpha?"},
]

GOLDEN_QWEN_NO_SYSTEM = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is r?<|im_end|>\n"
    "<|im_start|>assistant\nThe LoRA rank.<|im_end|>\n"
    "<|im_start|>user\nAnd alpha?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
GOLDEN_QWEN_SYSTEM = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nWhat is r?<|im_end|>\n"
    "<|im_start|>assistant\nThe LoRA rank.<|im_end|>\n"
    "<|im_start|>user\nAnd alpha?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
GOLDEN_LLAMA3_NO_SYSTEM = (
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is r?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nThe LoRA rank.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnd alpha?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
GOLDEN_LLAMA3_SYSTEM = (
    "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" + GOLDEN_LLAMA3_NO_SYSTEM
)


def test_qwen25_default_system_is_served_when_training_added_none() -> None:
    fmt = serving_format(QWEN25, system_prompt=None)
    assert fmt.family == "chatml" and fmt.system == QWEN_DEFAULT
    assert fmt.parameters()["stop"] == ["<|im_start|>", "<|im_end|>"]
    assert fmt.render(MULTI) == GOLDEN_QWEN_NO_SYSTEM
    assert render_hf(QWEN25, MULTI) == GOLDEN_QWEN_NO_SYSTEM


def test_qwen25_with_system_in_chat_or_as_configured_default() -> None:
    with_system = [{"role": "system", "content": "Be brief."}, *MULTI]
    assert serving_format(QWEN25).render(with_system) == GOLDEN_QWEN_SYSTEM
    configured = serving_format(QWEN25, system_prompt="Be brief.")
    assert configured.system == "Be brief."
    assert configured.render(MULTI) == GOLDEN_QWEN_SYSTEM  # trainer added it, Ollama's SYSTEM adds it too


def test_llama3_golden_with_and_without_system() -> None:
    fmt = serving_format(LLAMA3, bos_token="<|begin_of_text|>")
    assert fmt.family == "llama3" and fmt.system == ""
    assert fmt.parameters()["stop"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert fmt.render(MULTI) == GOLDEN_LLAMA3_NO_SYSTEM
    # The HF rendering spells BOS as text; llama.cpp adds it as a token in front of Ollama's rendering.
    assert render_hf(LLAMA3, MULTI, bos_token="<|begin_of_text|>") == "<|begin_of_text|>" + GOLDEN_LLAMA3_NO_SYSTEM
    assert fmt.render([{"role": "system", "content": "Be brief."}, *MULTI]) == GOLDEN_LLAMA3_SYSTEM
    assert serving_format(LLAMA3, "Be brief.", "<|begin_of_text|>").render(MULTI) == GOLDEN_LLAMA3_SYSTEM


def test_training_templates_with_generation_markers_are_served_the_same() -> None:
    assert serving_format((TEMPLATES / "qwen2_5_training.jinja").read_text()).render(MULTI) == GOLDEN_QWEN_NO_SYSTEM
    llama = serving_format((TEMPLATES / "llama3_training.jinja").read_text(), bos_token="<|begin_of_text|>")
    assert llama.render(MULTI) == GOLDEN_LLAMA3_NO_SYSTEM


def test_unknown_family_is_refused() -> None:
    with pytest.raises(UnsupportedTemplate, match="no Ollama template is known"):
        serving_format((TEMPLATES / "gemma.jinja").read_text())


def test_a_chatml_variant_that_renders_differently_is_refused() -> None:
    # Same markers, but a blank line after each turn: the ChatML Go template would prompt differently.
    variant = QWEN25.replace("'<|im_end|>' + '\\n'", "'<|im_end|>' + '\\n\\n'")
    assert variant != QWEN25
    with pytest.raises(UnsupportedTemplate, match="differ at character"):
        serving_format(variant)


def test_ollama_collates_system_messages_and_same_role_runs() -> None:
    fmt = serving_format(QWEN25)
    chat = [{"role": "system", "content": "A."}, {"role": "system", "content": "B."},
            {"role": "user", "content": "x"}, {"role": "user", "content": "y"}]
    assert fmt.render(chat) == (
        "<|im_start|>system\nA.\n\nB.<|im_end|>\n<|im_start|>user\nx\n\ny<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        ("{{ if and .A .B }}yes{{ else }}no{{ end }}", {"A": 1, "B": ""}, "no"),
        ("{{ or .A .B }}", {"A": "", "B": "b"}, "b"),
        ("{{- range $i, $m := .L }}{{ $i }}={{ $m }} {{ end -}}", {"L": ["x", "y"]}, "0=x 1=y "),
        ("{{ range .L }}{{ . }}{{ else }}empty{{ end }}", {"L": []}, "empty"),
        ("{{ with .A }}[{{ . }}]{{ end }}", {"A": "v"}, "[v]"),
        ("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}", {}, "2"),
        ("{{ len (slice .L 1) }}", {"L": [1, 2, 3]}, "2"),
        ("{{ index .M \"k\" }}", {"M": {"k": "v"}}, "v"),
        ("a  {{- /* comment */ -}}  b", {}, "ab"),
        ("{{ printf \"%s-%d\" .A 3 }}", {"A": "z"}, "z-3"),
        ("{{ \"q\\n\" }}", {}, "q\n"),
    ],
)
def test_go_template_subset(source: str, data: dict, expected: str) -> None:
    assert Template(source).render(data) == expected


def test_go_template_refuses_what_it_does_not_know() -> None:
    with pytest.raises(TemplateError):
        Template("{{ template \"x\" }}")
    with pytest.raises(TemplateError, match="not defined"):
        Template("{{ trim .A }}").render({"A": " a "})
    with pytest.raises(TemplateError, match="unterminated"):
        Template("{{ if .A }}x")


def test_legacy_prompt_response_template_renders_per_turn() -> None:
    legacy = "{{ if .System }}S:{{ .System }}\n{{ end }}U:{{ .Prompt }}\nA:{{ .Response }}\n"
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert render_chat(legacy, chat) == "S:s\nU:q1\nA:a1\nU:q2\nA:"
