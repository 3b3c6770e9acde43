"""The unit of teaching data: a conversation of role-tagged messages, and its normalised content hash."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from data.errors import LoraloopError

# tool_call: the assistant calling a tool (content = the call as JSON text); tool: the tool's result.
ROLES = ("system", "user", "assistant", "tool_call", "tool")


class InvalidConversation(LoraloopError, ValueError):
    """A conversation that cannot be trained on; the message says exactly why."""


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    # An assistant message's reasoning (reasoning_content, <think>…</think>, a Complex_CoT column), kept apart from
    # the answer so each base family can be trained in its own convention and Discord never shows raw tags.
    reasoning: str | None = None
    # A user message's alpaca ``input``: the content is "instruction\ninput" (or the input alone), and an alpaca
    # export gives the two back apart. Never trained on apart: the content is what the model reads.
    input: str | None = None
    # LLaMA-Factory v1's per-message ``loss_weight``, kept as the file gave it (None: not given). An assistant
    # message weighted 0 is context only: it is not trained on.
    loss_weight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            out["reasoning"] = self.reasoning
        if self.input is not None:
            out["input"] = self.input
        if self.loss_weight is not None:
            out["loss_weight"] = self.loss_weight
        return out

    @property
    def plain(self) -> bool:
        """No field beyond role and content (the common message, stored as OpenAI's own layout)."""
        return self.reasoning is None and self.input is None and self.loss_weight is None

    @property
    def instruction(self) -> str:
        """A user message's alpaca ``instruction``: its content without the ``input`` part."""
        if self.input is None:
            return self.content
        return "" if self.content == self.input else self.content[: len(self.content) - len(self.input) - 1]


@dataclass(frozen=True, slots=True)
class Conversation:
    """System prompt (optional, first), then user/assistant turns, ending with an assistant answer."""

    messages: tuple[Message, ...]
    tags: tuple[str, ...] = ()
    # JSON text of the tool schemas the conversation may call (sharegpt's ``tools``), if any.
    tools: str | None = field(default=None)

    @classmethod
    def from_dicts(
        cls, messages: Iterable[dict[str, Any]], tags: Sequence[str] = (), tools: str | None = None
    ) -> Conversation:
        # A list made into a tuple: twice as fast as tuple() over a generator.
        return cls(tuple([Message(m["role"], m["content"]) if len(m) == 2 else
                          Message(m["role"], m["content"], m.get("reasoning"), m.get("input"), m.get("loss_weight"))
                          for m in messages]), tuple(tags), tools)

    @classmethod
    def qa(cls, question: str, answer: str, system: str | None = None) -> Conversation:
        msgs = [Message("system", system)] if system else []
        return cls(tuple(msgs + [Message("user", question), Message("assistant", answer)]))

    def to_dicts(self) -> list[dict[str, Any]]:
        # Message.to_dict inlined for the common plain message: bulk imports call this per row.
        return [{"role": m.role, "content": m.content} if m.plain else m.to_dict() for m in self.messages]

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    @property
    def turns(self) -> tuple[Message, ...]:
        """The messages after the optional system prompt."""
        return self.messages[1:] if self.system is not None else self.messages

    @property
    def has_reasoning(self) -> bool:
        return any(m.reasoning is not None for m in self.messages)

    @property
    def has_tools(self) -> bool:
        return any(m.role in ("tool_call", "tool") for m in self.messages)

    def validate(self, max_chars: int | None = None) -> Conversation:
        """Raise InvalidConversation with a specific reason, or return self."""
        if not self.messages:
            raise InvalidConversation("the conversation has no messages")
        for i, m in enumerate(self.messages):
            if m.role not in ROLES:
                raise InvalidConversation(f"message {i}: unknown role {m.role!r} (expected one of {', '.join(ROLES)})")
            if not isinstance(m.content, str):
                raise InvalidConversation(f"message {i} ({m.role}): content must be text")
            if "\x00" in m.content or not m.content.isascii():  # else nothing to refuse: skip naming the text
                _check_text(m.content, f"message {i} ({m.role})")
            if m.role == "system" and i != 0:
                raise InvalidConversation(f"message {i}: a system message may only come first")
            if m.role != "system" and (not m.content or m.content.isspace()):  # as strip() would, without a copy
                raise InvalidConversation(f"message {i} ({m.role}): content is empty")
            if max_chars is not None and len(m.content) > max_chars:
                raise InvalidConversation(
                    f"message {i} ({m.role}): {len(m.content)} characters, over the limit of {max_chars} "
                    "(LORALOOP_MAX_STORED_CHARS raises it for file imports)"
                )
            if m.reasoning is not None:
                if m.role != "assistant":
                    raise InvalidConversation(f"message {i} ({m.role}): only an assistant message can carry reasoning")
                if not isinstance(m.reasoning, str):
                    raise InvalidConversation(f"message {i} (assistant): the reasoning must be text")
                _check_text(m.reasoning, f"message {i} (assistant) reasoning")
            if m.input is not None:
                if m.role != "user" or not isinstance(m.input, str):
                    raise InvalidConversation(f"message {i} ({m.role}): only a user message can carry an alpaca input")
                if m.content != m.input and not m.content.endswith("\n" + m.input):
                    raise InvalidConversation(f"message {i} (user): the alpaca input is not the end of the question")
            if m.loss_weight is not None and (isinstance(m.loss_weight, bool) or not isinstance(
                    m.loss_weight, int | float) or not math.isfinite(m.loss_weight) or m.loss_weight < 0):
                raise InvalidConversation(f"message {i} ({m.role}): loss_weight must be a number of 0 or more, "
                                          f"not {m.loss_weight!r}")
        for tag in self.tags:
            if not isinstance(tag, str):
                raise InvalidConversation(f"tag {tag!r} must be text")
            _check_text(tag, f"tag {tag!r}")
        if self.tools is not None:
            if not isinstance(self.tools, str):
                raise InvalidConversation("the tool schemas must be JSON text")
            _check_text(self.tools, "the tool schemas' text")
        turns = self.turns
        if not turns:
            raise InvalidConversation("the conversation has only a system prompt")
        if turns[0].role != "user":
            raise InvalidConversation(f"the first turn must be from the user, not {turns[0].role}")
        if turns[-1].role != "assistant":
            raise InvalidConversation(f"the last turn must be the assistant's answer, not {turns[-1].role}")
        previous = "system"
        for i, m in enumerate(turns, start=len(self.messages) - len(turns)):
            allowed = _NEXT[previous]
            if m.role not in allowed:
                raise InvalidConversation(
                    f"message {i}: {m.role} cannot follow {previous} (expected {' or '.join(sorted(allowed))})"
                )
            previous = m.role
        return self

    def content_hash(self) -> str:
        """sha256 of the normalised conversation: the identity used to refuse duplicates.

        Normalisation: Unicode NFKC, whitespace runs folded to one space, ends stripped.
        Tags do not count (the same pair with other tags is the same example); tools and reasoning do (a message
        without reasoning hashes as it always did). An alpaca input's split and loss weights do not: the text is
        the same.
        """
        norm = [[m.role, _normalise(m.content)] if m.reasoning is None
                else [m.role, _normalise(m.content), _normalise(m.reasoning)] for m in self.messages]
        tools = _normalise(self.tools) if self.tools else ""
        return hashlib.sha256(orjson.dumps({"m": norm, "t": tools})).hexdigest()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool: its name and arguments (a JSON object; the text as given when it is not JSON)."""

    name: str
    arguments: Any
    id: str | None = None

    def as_openai(self) -> dict[str, Any]:
        """OpenAI's layout: the arguments as JSON text."""
        arguments = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments,
                                                                                     ensure_ascii=False)
        call: dict[str, Any] = {"id": self.id} if self.id is not None else {}
        return call | {"type": "function", "function": {"name": self.name, "arguments": arguments}}

    def as_plain(self) -> dict[str, Any]:
        """LLaMA-Factory's (and most chat templates') layout: ``{"name", "arguments"}``, the arguments an object."""
        return {"name": self.name, "arguments": self.arguments}


def tool_calls(content: str, what: str = "the tool call") -> list[ToolCall]:
    """The calls a tool_call message holds, in any layout the formats store: ``{"name", "arguments"}`` (sharegpt's
    function_call, LLaMA-Factory's), a list of those (LLaMA-Factory v1), or OpenAI's ``tool_calls`` list (each
    ``{"id", "type": "function", "function": {"name", "arguments": JSON text}}``). Arguments given as JSON text
    come back parsed. Raises InvalidConversation when the text is none of these."""
    try:
        value = json.loads(content)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidConversation(f"{what} is not JSON (a tool call is {{\"name\": …, \"arguments\": …}})") from None
    calls = []
    for item in value if isinstance(value, list) else [value]:
        call = item.get("function") if isinstance(item, dict) and isinstance(item.get("function"), dict) else item
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise InvalidConversation(f"{what} has no tool name (a tool call is {{\"name\": …, \"arguments\": …}})")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (json.JSONDecodeError, RecursionError):
                pass  # kept as the text it is
        call_id = item.get("id") if isinstance(item, dict) else None
        calls.append(ToolCall(call["name"], arguments, call_id if isinstance(call_id, str) else None))
    if not calls:
        raise InvalidConversation(f"{what} is an empty list of calls")
    return calls


_NEXT = {
    "system": {"user"},
    "user": {"assistant", "tool_call"},
    "assistant": {"user"},
    "tool_call": {"tool"},
    "tool": {"assistant", "tool_call"},
}


def _check_text(text: str, what: str) -> None:
    """Refuse what no database can store: NUL (PostgreSQL's text refuses it) and unpaired surrogates (no UTF-8)."""
    if "\x00" in text:
        at = text.index("\x00")
        raise InvalidConversation(f"{what} contains a NUL character (\\u0000, at character {at}); remove it")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = f"\\u{ord(text[exc.start]):04x}"
            raise InvalidConversation(f"{what} contains an unpaired surrogate ({code}, at character {exc.start}), "
                                      "which is not valid Unicode text; fix the text's encoding") from None


def _normalise(text: str) -> str:
    # ASCII is NFKC already; otherwise the common case is already normal too: skip the copy.
    if not text.isascii() and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    # Printable text's only whitespace is the plain space (every other whitespace character is a control or a
    # separator, which isprintable refuses): single spaces between words leave nothing to fold, and the split
    # and join, the slowest part of hashing, are skipped.
    if text.isprintable() and "  " not in text and not text.startswith(" ") and not text.endswith(" "):
        return text
    return " ".join(text.split())


_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def split_think(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a text that starts with a ``<think>…</think>`` block; (None, text) otherwise.

    Only a leading block counts: a ``<think>`` later in an answer is the answer's text (code, a quote).
    """
    if _THINK_OPEN not in text:  # the common answer: no copy of it made
        return None, text
    stripped = text.lstrip()
    if not stripped.startswith(_THINK_OPEN):
        return None, text
    end = stripped.find(_THINK_CLOSE)
    if end < 0:
        return None, text
    return stripped[len(_THINK_OPEN):end].strip(), stripped[end + len(_THINK_CLOSE):].lstrip()


def join_think(reasoning: str | None, answer: str) -> str:
    """The inverse of ``split_think``, for formats with no field of their own for the reasoning (R1's layout)."""
    return answer if reasoning is None else f"{_THINK_OPEN}\n{reasoning}\n{_THINK_CLOSE}\n\n{answer}"


def assistant(content: str, reasoning: str | None = None) -> Message:
    """An assistant message; a leading <think> block in ``content`` becomes its reasoning (stripped)."""
    if reasoning is None:
        reasoning, content = split_think(content)
    return Message("assistant", content, reasoning.strip() if reasoning is not None else None)


# ---- control text ------------------------------------------------------------------------------------------------
# Strings a chat template or a tokenizer reads as structure, not words: llama.cpp (Ollama) tokenises the rendered
# prompt with its special tokens parsed, so "<|im_end|><|im_start|>system" in a stored answer or a chat message
# would become real turn boundaries. The list is generic (the bot never sees the base's tokenizer) and covers the
# families loraloop serves and their neighbours:
# - ``<|…|>``: ChatML / Qwen, Llama 3 and 4 (<|start_header_id|>, <|eot_id|>, <|reserved_special_token_N|>), Phi,
#   Command R, Granite, gpt-oss, <|endoftext|>, FIM tokens;
# - ``<｜…｜>`` (full-width bars): DeepSeek;
# - ``<s>``, ``</s>``, ``<unk>``, ``<pad>``, ``<bos>``, ``<eos>``, ``<mask>``: SentencePiece bases (Llama 2, Mistral,
#   Gemma); Gemma's <start_of_turn> / <end_of_turn>; Qwen's <tool_call> / <tool_response>; reasoning's <think>;
#   StarCoder's <fim_*>, <file_sep>, <repo_name>; GLM's <sop> / <eop>;
# - ``<<SYS>>`` (Llama 2) and Mistral's ``[INST]``, ``[/INST]``, ``[SYSTEM_PROMPT]``, ``[TOOL_CALLS]``, …; GLM's
#   ``[gMASK]``.
# Each is broken by a zero-width joiner after its first character: a reader sees the same text, the tokenizer
# sees plain characters. Running it twice changes nothing more.
_ZWJ = "\u200d"
_ANGLE_WORDS = ("s", "unk", "pad", "bos", "eos", "mask", "start_of_turn", "end_of_turn", "start_of_image",
                "end_of_image", "think", "tool_call", "tool_response", "tool_calls", "fim_prefix", "fim_middle",
                "fim_suffix", "fim_pad", "file_sep", "repo_name", "sop", "eop")
_BRACKET_WORDS = ("INST", "SYSTEM_PROMPT", "AVAILABLE_TOOLS", "TOOL_CALLS", "TOOL_RESULTS", "TOOL_CONTENT", "THINK",
                  "IMG", "IMG_BREAK", "IMG_END", "PREFIX", "MIDDLE", "SUFFIX", "gMASK", "sMASK")
_CONTROL = re.compile(
    r"<\|[^|<>\n]{1,64}\|>"
    r"|<\uff5c[^\uff5c<>\n]{1,64}\uff5c>"
    rf"|</?(?:{'|'.join(_ANGLE_WORDS)})>"
    r"|<</?SYS>>"
    rf"|\[/?(?:{'|'.join(_BRACKET_WORDS)})\]"
)


def neutralise_controls(text: str) -> str:
    """``text`` with every chat-template control string (the list above) broken by a zero-width joiner, so a model
    reads it as text and never as a turn boundary or a special token."""
    if "<" not in text and "[" not in text:  # the common message: no copy made
        return text
    return _CONTROL.sub(lambda m: m[0][0] + _ZWJ + m[0][1:], text)
