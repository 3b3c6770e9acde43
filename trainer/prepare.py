"""Snapshot conversations → token ids and labels, with loss only on what the assistant says.

The text trained on is exactly what the base's chat template renders for the whole conversation — the
same text the serving side renders — and each trained span is the assistant's answer plus the
end-of-turn token that makes generation stop. Spans are found by rendering the serving prompt for each
assistant turn (``add_generation_prompt=True``) and checking it is a prefix of the full rendering, so
templates without ``{% generation %}`` markers (stock Qwen2.5, Llama 3, most bases) work unchanged.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from data.conversation import Conversation, InvalidConversation, tool_calls
from trainer.config import TrainingRefused

IGNORE = -100  # label of a token that does not count in the loss


class UnrenderableConversation(TrainingRefused):
    """This conversation (not the whole run) cannot be rendered faithfully by the chat template."""


@dataclass(frozen=True, slots=True)
class RenderedConversation:
    """A conversation as the chat template renders it, and the character spans the model learns to produce."""

    text: str
    spans: tuple[tuple[int, int], ...]

    def trained_text(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


@dataclass(slots=True)
class PreparedSplit:
    """Tokenised examples of one split plus what preparation did to them."""

    examples: list[dict[str, list[int]]] = field(default_factory=list)
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: int = 0
    unrenderable: int = 0
    longest: int = 0  # tokens of the longest example before truncation


class ChatFormat:
    """How conversations become text and tokens for one tokenizer + chat template + default system prompt."""

    def __init__(self, tokenizer: Any, template: str | None = None, system_prompt: str | None = None,
                 end_of_turn: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        found: str | dict[str, str] | None = template or getattr(tokenizer, "chat_template", None)
        if not found:
            raise TrainingRefused(
                "the base model has no chat template; set chat_template in the training config (Jinja text or a "
                "file) to the template the served model will use"
            )
        if isinstance(found, dict):  # several named templates: the default one is what serving uses
            found = found.get("default") or next(iter(found.values()))
        self.template: str = found
        self.system_prompt = system_prompt
        markers = [t for t in (*end_of_turn, tokenizer.eos_token) if t]
        self.end_of_turn = tuple(dict.fromkeys(markers))
        if not self.end_of_turn:
            raise TrainingRefused("the tokenizer has no EOS/end-of-turn token: the model could not learn to stop")
        # llama.cpp (and so Ollama) prepends BOS when the tokenizer adds it to plain text; mirror that.
        bos_id = tokenizer.bos_token_id
        adds_bos = bos_id is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos_id]
        self._bos_id = bos_id if adds_bos else None
        self._bos_text = tokenizer.bos_token
        self.reasoning_style = self._reasoning_style()

    def _reasoning_style(self) -> str:
        """How this base family trains an answer's reasoning, found by rendering a probe with the template:
        ``reasoning_content`` (the template renders that field, as Qwen3's does), ``think_tags`` (``<think>…</think>``
        before the answer survives the template) or ``dropped`` (no convention, or one that strips thinking from
        assistant turns, as the R1-distill template does: only the answer is trained)."""
        probe = "reasoning-probe-7f3a"
        for style, message in (
            ("reasoning_content", {"role": "assistant", "content": "a", "reasoning_content": probe}),
            ("think_tags", {"role": "assistant", "content": f"<think>\n{probe}\n</think>\n\na"}),
        ):
            if (style == "reasoning_content" and "reasoning_content" not in self.template) or (
                    style == "think_tags" and "<think>" not in self.template):  # no convention: never invent one
                continue
            try:
                if probe in self.render([{"role": "user", "content": "q"}, message]):
                    return style
            except Exception:  # a template that cannot render the probe has no usable convention
                continue
        return "dropped"

    # ---- text -------------------------------------------------------------------------------------
    def messages(self, conversation: Conversation) -> list[dict[str, Any]]:
        """The conversation in Hugging Face chat format, with the default system prompt when it has none."""
        out: list[dict[str, Any]] = []
        if conversation.system is None and self.system_prompt:
            out.append({"role": "system", "content": self.system_prompt})
        for m in conversation.messages:
            if m.role == "tool_call":
                # One layout whatever the file's (sharegpt's call, OpenAI's list): arguments as an object, which
                # the templates write as JSON themselves (Qwen2.5's ``arguments | tojson``).
                try:
                    calls = tool_calls(m.content)
                except InvalidConversation as exc:
                    raise UnrenderableConversation(f"a tool call cannot be rendered: {exc}") from None
                out.append({"role": "assistant", "content": "",
                            "tool_calls": [{"type": "function", "function": c.as_plain()} for c in calls]})
            elif m.role == "assistant" and m.reasoning is not None and self.reasoning_style != "dropped":
                if self.reasoning_style == "reasoning_content":  # the template places it (Qwen3)
                    out.append({"role": m.role, "content": m.content, "reasoning_content": m.reasoning})
                else:  # R1-distill style: the thinking leads the answer inside the same turn
                    out.append({"role": m.role, "content": f"<think>\n{m.reasoning}\n</think>\n\n{m.content}"})
            else:
                out.append({"role": m.role, "content": m.content})
        # NFC, as the bot sends chats to Ollama (deploy/ollama.py): llama.cpp does not normalise, so training on a
        # decomposed form would teach tokens the served model never sees.
        for message in out:
            if isinstance(message.get("content"), str):
                message["content"] = unicodedata.normalize("NFC", message["content"])
        return out

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
               tools: str | None = None) -> str:
        text: str = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt,
            tools=json.loads(tools) if tools else None,
        )
        return text

    def prompt(self, conversation: Conversation) -> str:
        """What the serving side sends to the model to get the conversation's last answer."""
        msgs = self.messages(conversation)
        return self.render(msgs[:-1], add_generation_prompt=True, tools=conversation.tools)

    def rendered(self, conversation: Conversation) -> RenderedConversation:
        """The full rendering and the span of every assistant turn (its text and the end-of-turn token)."""
        msgs = self.messages(conversation)
        full = self.render(msgs, tools=conversation.tools)
        for name in _tool_names(conversation.tools):
            if name not in full:
                raise UnrenderableConversation(
                    f"the chat template drops the tool schemas (tool {name!r}): a conversation with tools cannot be "
                    "trained with it")
        # A message weighted 0 (LLaMA-Factory v1's loss_weight) is context: rendered, never learned.
        weights = [None] * (len(msgs) - len(conversation.messages)) + [m.loss_weight for m in conversation.messages]
        spans = []
        for i, msg in enumerate(msgs):
            if msg["role"] != "assistant" or weights[i] == 0:
                continue
            prompt = self.render(msgs[:i], add_generation_prompt=True, tools=conversation.tools)
            if not full.startswith(prompt):
                raise TrainingRefused(
                    f"the chat template renders turn {i} of a conversation differently when it is the serving prompt "
                    "than inside the whole conversation; training on it would not match what the model sees when "
                    "serving (configure a chat_template whose history rendering is stable)"
                )
            start = len(prompt)
            content = msg.get("content") or ""
            search_from = start + len(content) if content and full.startswith(content, start) else start
            found = [(full.find(t, search_from), t) for t in self.end_of_turn]
            found = [(pos, t) for pos, t in found if pos >= 0]
            if not found:
                raise TrainingRefused(
                    f"the chat template does not end assistant turns with an end-of-turn token "
                    f"({' or '.join(self.end_of_turn)}): the model would never learn to stop"
                )
            pos, marker = min(found)
            for call in msg.get("tool_calls") or ():
                if str(call["function"].get("name", "")) not in full[start:pos]:
                    raise UnrenderableConversation(
                        f"the chat template drops tool calls (turn {i}): a conversation with tool calls cannot be "
                        "trained with it"
                    )
            spans.append((start, pos + len(marker)))
        return RenderedConversation(full, tuple(spans))

    # ---- tokens -----------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _bos(self, text: str) -> list[int]:
        return [self._bos_id] if self._bos_id is not None and not text.startswith(self._bos_text) else []

    def encode_prompt(self, conversation: Conversation) -> list[int]:
        """Token ids of the serving prompt for the conversation's last answer."""
        text = self.prompt(conversation)
        return self._bos(text) + self._ids(text)

    def tokenize(self, conversation: Conversation) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels copy the ids of tokens that start inside an assistant span, IGNORE elsewhere.

        The whole rendering is tokenised at once, as the serving side tokenises a prompt, so the ids are the
        ones the model meets when serving (no extra prefix spaces from tokenising pieces separately).
        """
        rendered = self.rendered(conversation)
        enc = self.tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        labels = [IGNORE] * len(ids)
        spans = iter(rendered.spans)
        span = next(spans, None)
        for k, (a, b) in enumerate(offsets):
            while span is not None and a >= span[1]:
                span = next(spans, None)
            # A token that straddles the start of a span still carries answer text: it is learned.
            if span is not None and b > span[0] and a < span[1]:
                labels[k] = ids[k]
        bos = self._bos(rendered.text)
        return bos + ids, [IGNORE] * len(bos) + labels

    def prepare(self, conversations: Iterable[Conversation], max_length: int) -> PreparedSplit:
        """Tokenise a split; too-long examples keep their start, those left with nothing to learn are dropped.

        Conversations the template cannot render faithfully (tool calls it drops) are skipped and counted.
        """
        split = PreparedSplit()
        for conversation in conversations:
            try:
                ids, labels = self.tokenize(conversation)
            except UnrenderableConversation:
                split.unrenderable += 1
                continue
            split.longest = max(split.longest, len(ids))
            if len(ids) > max_length:
                split.truncated += 1
                ids, labels = ids[:max_length], labels[:max_length]
            if all(label == IGNORE for label in labels[1:]):
                split.dropped += 1
                continue
            split.examples.append({"input_ids": ids, "labels": labels})
            split.tokens += len(ids)
            split.trained_tokens += sum(label != IGNORE for label in labels)
        return split


def _tool_names(tools: str | None) -> list[str]:
    """The names of the tools a conversation's schemas declare (OpenAI's ``{"type", "function"}`` or plain)."""
    if not tools:
        return []
    schemas = json.loads(tools)
    names = []
    for schema in schemas if isinstance(schemas, list) else [schemas]:
        function = schema.get("function", schema) if isinstance(schema, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return names


def end_of_turn_tokens(tokenizer: Any, generation_config: Any = None) -> list[str]:
    """The tokens that end an assistant turn: the tokenizer's EOS and the generation config's eos ids."""
    ids = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    names = [tokenizer.eos_token] if tokenizer.eos_token else []
    names += [tokenizer.convert_ids_to_tokens(i) for i in ids]
    return [n for n in dict.fromkeys(names) if n]
