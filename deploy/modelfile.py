"""The TEMPLATE, SYSTEM and stop PARAMETERs Ollama needs to serve a fine-tune exactly as it was trained.

The trainer renders conversations with the base's Hugging Face chat template (Jinja); Ollama renders them with
a Go template. For each supported family we write the Go template by hand and then *prove* the pair agrees:
:func:`serving_format` renders sample conversations (single and multi-turn, with and without a system prompt)
both ways and refuses with the first difference. The SYSTEM is the system prompt the trainer added to
conversations without one, or else the default the chat template itself inserts (Qwen2.5's "You are Qwen…").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.errors import LoraloopError
from deploy.go_template import ollama_prompt
from trainer.record import RunRecord, read_run


class UnsupportedTemplate(LoraloopError, ValueError):
    """The base's chat template cannot be served by any Go template we know to match it."""


CHATML_TEMPLATE = """\
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

LLAMA3_TEMPLATE = """\
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    marker: str  # a string only this family's chat templates contain
    template: str
    stop: tuple[str, ...]
    system_block: re.Pattern[str]  # finds the system prompt in a rendering


FAMILIES = (
    Family("chatml", "<|im_start|>", CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>"),
           re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)),
    Family("llama3", "<|start_header_id|>", LLAMA3_TEMPLATE, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
           re.compile(r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S)),
)


@dataclass(frozen=True, slots=True)
class ServingFormat:
    """What /api/create gets: ``template``, ``system`` and the stop parameters (plus sampling options)."""

    family: str
    template: str
    system: str
    stop: tuple[str, ...]
    bos: str = ""  # BOS text the HF rendering starts with and llama.cpp adds as a token instead
    options: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        return {**self.options, "stop": list(self.stop)}

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt Ollama will render for this chat (without the BOS token llama.cpp adds)."""
        return ollama_prompt(self.template, self.system, messages)


SAMPLE_CHATS: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "What is LoRA?"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Name a port."}],
    [
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question?\nWith two lines."},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "a?"},
        {"role": "assistant", "content": "b."},
        {"role": "user", "content": "c?"},
        {"role": "assistant", "content": "d."},
        {"role": "user", "content": "e?"},
    ],
)


def render_hf(chat_template: str, messages: list[dict[str, str]], bos_token: str = "", eos_token: str = "") -> str:
    """Render like ``tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)``."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise UnsupportedTemplate(f"the chat template raised: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent,
                                                                                  ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = raise_exception
    # {% generation %} markers only matter for training masks; they render nothing.
    source = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", chat_template)
    return env.from_string(source).render(
        messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token, tools=None,
    )


def family_of(chat_template: str) -> Family:
    """The family whose Go template we use for this chat template."""
    for family in FAMILIES:
        if family.marker in chat_template:
            return family
    known = ", ".join(f"{f.name} (templates with {f.marker})" for f in FAMILIES)
    raise UnsupportedTemplate(
        f"no Ollama template is known to match this base's chat template; supported: {known}. "
        "Serving it with another template would prompt the model differently than it was trained"
    )


def serving_format(
    chat_template: str,
    system_prompt: str | None = None,
    bos_token: str = "",
    eos_token: str = "",
    options: Mapping[str, Any] | None = None,
) -> ServingFormat:
    """The Ollama TEMPLATE/SYSTEM/stop that render exactly what ``chat_template`` renders; checked, not assumed.

    ``system_prompt`` is the one the trainer added to conversations without one (None: it added none, so the
    chat template's own default, if any, is what the model saw). ``bos_token`` is the BOS text when the
    tokenizer's BOS text: a rendering that starts with it (Llama 3) gets it from llama.cpp as a token instead.
    """
    family = family_of(chat_template)
    if system_prompt is None:
        default = family.system_block.search(render_hf(chat_template, list(SAMPLE_CHATS[0]), bos_token, eos_token))
        system = default.group(1) if default else ""
    else:
        system = system_prompt
    fmt = ServingFormat(family.name, family.template, system, family.stop, bos_token, dict(options or {}))
    for chat in SAMPLE_CHATS:
        trained = _as_trained(chat, system_prompt)
        expected = render_hf(chat_template, trained, bos_token, eos_token)
        if bos_token and expected.startswith(bos_token):
            expected = expected[len(bos_token):]
        served = fmt.render(chat)
        if served != expected:
            at = next((i for i, (a, b) in enumerate(zip(served, expected, strict=False)) if a != b),
                      min(len(served), len(expected)))
            raise UnsupportedTemplate(
                f"the {family.name} Ollama template does not reproduce this base's chat template: for a "
                f"{len(chat)}-message chat they differ at character {at}: Ollama would render "
                f"{served[max(0, at - 20):at + 40]!r}, training rendered {expected[max(0, at - 20):at + 40]!r}"
            )
    return fmt


def _as_trained(chat: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if system_prompt and chat[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *chat]
    return chat


@dataclass(frozen=True, slots=True)
class TrainedFormat:
    """How a training run rendered chats: its chat template, default system prompt and the base's tokenizer dir."""

    chat_template: str
    system_prompt: str | None
    tokenizer_dir: Path | None
    bos_token: str = ""
    eos_token: str = ""


def trained_format(adapter_dir: Path, base_dir: Path | None = None) -> TrainedFormat:
    """Read the chat template and system prompt a training run used (its ``run.json``), else the base's."""
    run = read_run(adapter_dir) or RunRecord()
    template = run.chat_template
    tok_dir = base_dir or run.base_dir
    tok_cfg: dict[str, Any] = {}
    if tok_dir is not None and (tok_dir / "tokenizer_config.json").is_file():
        tok_cfg = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    if template is None:
        template = tok_cfg.get("chat_template")
        if template is None and tok_dir is not None and (tok_dir / "chat_template.jinja").is_file():
            template = (tok_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if not template:
        raise UnsupportedTemplate(f"no chat template found for {adapter_dir} (no run.json and no base chat template)")
    has_tokenizer = tok_dir is not None and (tok_dir / "tokenizer_config.json").is_file()
    bos = _token_text(tok_cfg.get("bos_token"))
    if bos and tok_dir is not None and not _adds_bos(tok_dir, tok_cfg, bos):
        bos = ""  # SmolLM2 names <|im_start|> its BOS but never adds it: the rendering's own text, not a BOS token
    return TrainedFormat(template, run.system_prompt, tok_dir if has_tokenizer else None,
                         bos, _token_text(tok_cfg.get("eos_token")))


def _adds_bos(tok_dir: Path, tok_cfg: Mapping[str, Any], bos: str) -> bool:
    """Whether the base's tokenizer puts its BOS token in front of a text (as llama.cpp then does)."""
    if isinstance(tok_cfg.get("add_bos_token"), bool):
        return bool(tok_cfg["add_bos_token"])
    tokenizer_json = tok_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        post = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("post_processor") or {}
        return bos in json.dumps(post)  # a TemplateProcessing that inserts the BOS token
    return True  # a SentencePiece tokenizer without tokenizer.json: LlamaTokenizer adds BOS by default


def serving_format_for(adapter_dir: Path, base_dir: Path | None = None,
                       options: Mapping[str, Any] | None = None) -> ServingFormat:
    """The serving format for the chat template and system prompt a training run used (else the base's)."""
    trained = trained_format(adapter_dir, base_dir)
    return serving_format(trained.chat_template, trained.system_prompt, trained.bos_token, trained.eos_token,
                          options)


# Chats Ollama itself renders for a candidate (``_debug_render_only``) before the gate: with and without a system
# prompt, multi-turn, and text beyond ASCII (NFC, as stored examples are).
SERVED_CHECK_CHATS: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "What is LoRA?"}],
    [{"role": "system", "content": "Réponds en une ligne."}, {"role": "user", "content": "Qu'est-ce qu'un port ? 🚢"}],
    [
        {"role": "user", "content": "Wie heißt die Hauptstadt?"},
        {"role": "assistant", "content": "Berlin. 🇩🇪"},
        {"role": "user", "content": "Und auf Japanisch?\n日本語で答えてください。"},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "a?"},
        {"role": "assistant", "content": "b."},
        {"role": "user", "content": "c — «d»?"},
    ],
)


class TrainedPrompts:
    """The trainer's rendering of chats (its chat template, its default system prompt) as the base's tokenizer
    tokenises it, to compare with the prompt Ollama renders. Loading the tokenizer blocks: build it in a thread.

    Without a tokenizer (no base directory, or transformers missing) the texts are compared instead."""

    def __init__(self, trained: TrainedFormat, fmt: ServingFormat) -> None:
        self.trained = trained
        self.fmt = fmt
        self.tokenizer: Any = None
        self._format: Any = None
        if trained.tokenizer_dir is not None:
            try:
                from transformers import AutoTokenizer

                from trainer.prepare import ChatFormat
            except ImportError:
                return
            self.tokenizer = AutoTokenizer.from_pretrained(trained.tokenizer_dir)
            self._format = ChatFormat(self.tokenizer, trained.chat_template, trained.system_prompt, fmt.stop)

    @property
    def by_tokens(self) -> bool:
        return self.tokenizer is not None

    def trained_text(self, chat: list[dict[str, str]]) -> str:
        """The prompt text training used for the answer to ``chat`` (BOS text included when the template has it)."""
        if self._format is not None:
            from data.conversation import Conversation

            prompt: str = self._format.prompt(Conversation.from_dicts([*chat, {"role": "assistant", "content": "x"}]))
            return prompt
        return render_hf(self.trained.chat_template, _as_trained(chat, self.trained.system_prompt),
                         self.trained.bos_token, self.trained.eos_token)

    def ids(self, text: str) -> list[int]:
        """Token ids as llama.cpp feeds them: BOS first when the tokenizer adds one and the text lacks it."""
        tok = self.tokenizer
        ids = list(tok(text, add_special_tokens=False)["input_ids"]) if text else []
        bos_id = tok.bos_token_id
        if bos_id is not None and tok("a", add_special_tokens=True)["input_ids"][:1] == [bos_id] and not (
                tok.bos_token and text.startswith(tok.bos_token)):
            ids.insert(0, bos_id)
        return ids

    def difference(self, chat: list[dict[str, str]], served: str) -> str | None:
        """None when Ollama's rendering ``served`` is what training saw for ``chat``, else a readable diff."""
        trained = self.trained_text(chat)
        if self.fmt.bos and trained.startswith(self.fmt.bos) and not served.startswith(self.fmt.bos):
            served = self.fmt.bos + served  # llama.cpp adds BOS as a token; the rendering leaves it out
        if not self.by_tokens:
            return None if served == trained else _text_diff(served, trained)
        got, want = self.ids(served), self.ids(trained)
        if got == want:
            return None
        at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        pieces = self.tokenizer.convert_ids_to_tokens
        lo = max(0, at - 4)
        return (f"token {at} of {len(got)} (training: {len(want)} tokens): Ollama "
                f"{pieces(got[lo:at + 6])!r}, training {pieces(want[lo:at + 6])!r}; "
                + _text_diff(served, trained))


def _text_diff(served: str, trained: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(served, trained, strict=False)) if a != b),
              min(len(served), len(trained)))
    return (f"at character {at} Ollama renders {served[max(0, at - 30):at + 40]!r}, training rendered "
            f"{trained[max(0, at - 30):at + 40]!r}")


def _token_text(token: Any) -> str:
    if isinstance(token, dict):
        return str(token.get("content", ""))
    return str(token or "")


def modelfile_text(fmt: ServingFormat, base_tag: str, adapter_file: str) -> str:
    """A Modelfile for ``ollama create -f``: the base tag, the GGUF adapter beside it, and this serving format.

    ``adapter_file`` is the GGUF's path relative to the Modelfile (Ollama resolves ADAPTER from there).
    """
    for name, text in (("template", fmt.template), ("system prompt", fmt.system)):
        if '"""' in text:  # a Modelfile's triple-quoted string has no escape for its own delimiter
            raise UnsupportedTemplate(f'the {name} contains """, which a Modelfile cannot quote')
    lines = [f"FROM {base_tag}", f"ADAPTER ./{adapter_file}", f'TEMPLATE """{fmt.template}"""']
    if fmt.system:
        lines.append(f'SYSTEM """{fmt.system}"""')
    for key, value in fmt.parameters().items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {json.dumps(item, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"
