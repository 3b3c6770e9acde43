"""The chat path, in one place: message in → history from the reply chain → the active model streams its
answer from Ollama → one Discord message edited at most about once a second, split past 2000 characters →
the answer and the model version that gave it are recorded, with feedback buttons attached.

An answer has limits (:class:`AnswerLimits`): a token cap Ollama enforces (``num_predict``), a character cap
for a server that ignores it, a total time, and a few Discord messages at most. A cut answer says so."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import discord

from bot.settings import Settings
from data.store import Store
from deploy.ollama import ModelNotFound, OllamaClient, OllamaError, OllamaUnavailable

log = logging.getLogger(__name__)

DISCORD_LIMIT = 2000
EDIT_INTERVAL_S = 1.0  # Discord allows ~5 edits per 5 s per channel; one a second leaves room
CURSOR = " ▌"
MAX_HISTORY = 20
# Generous (English averages ~4): the cap Ollama applies is num_predict; this one only stops a server that
# ignores it, so it must never cut an answer Ollama would have let through.
CHARS_PER_TOKEN = 6
MAX_MESSAGES = 5  # one answer never floods a channel, whatever the token cap
_FENCE = re.compile(r"^```(\S*)", re.MULTILINE)

NO_MENTIONS = discord.AllowedMentions.none()


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Cut ``text`` into chunks of at most ``limit`` characters, at line breaks or spaces where possible.

    A code block cut in two is closed at the end of one chunk and reopened (same language) in the next.
    """
    chunks: list[str] = []
    reopen = ""
    rest = text
    while rest:
        body_limit = limit - len(reopen)
        if len(rest) <= body_limit:
            candidate = reopen + rest
            if _open_fence(candidate) is None:
                chunks.append(candidate)
                break
            if len(candidate) + 4 <= limit:  # an unterminated block at the very end stays as the model wrote it
                chunks.append(candidate)
                break
        budget = body_limit - 4  # room to close a code block: "\n```"
        cut = _cut_point(rest, budget)
        piece = reopen + rest[:cut]
        lang = _open_fence(piece)
        if lang is not None:
            piece = piece.rstrip("\n") + "\n```"
            reopen = f"```{lang}\n"
        else:
            reopen = ""
        chunks.append(piece)
        rest = rest[cut:].lstrip(" ") if lang is None else rest[cut:].lstrip("\n")
    return chunks or [""]


def _cut_point(text: str, budget: int) -> int:
    if len(text) <= budget:
        return len(text)
    window = text[:budget]
    for sep in ("\n", " "):
        at = window.rfind(sep)
        if at > budget // 2:
            return at + 1 if sep == "\n" else at
    return budget  # one very long word: cut it


def _open_fence(text: str) -> str | None:
    """The language of a code block left open at the end of ``text``, or None if all are closed."""
    lang: str | None = None
    for match in _FENCE.finditer(text):
        lang = match.group(1) if lang is None else None
    return lang


def message_text(message: discord.Message, bot_id: int) -> str:
    """The message's text without the bot's own mention."""
    return re.sub(rf"<@!?{bot_id}>", "", message.content).strip()


async def conversation_for(message: discord.Message, bot_id: int, limit: int = MAX_HISTORY) -> list[dict[str, str]]:
    """The conversation that ``message`` continues, oldest first: its reply chain when it replies to
    something, else the thread it is in, else just itself."""
    if message.reference is not None and message.reference.message_id:
        chain = await _reply_chain(message, limit)
    elif isinstance(message.channel, discord.Thread):
        earlier = [m async for m in message.channel.history(limit=limit - 1, before=message)]
        chain = [message, *earlier]  # history() gives newest first
    else:
        chain = [message]
    return _as_history(reversed(chain), bot_id)


async def _reply_chain(message: discord.Message, limit: int) -> list[discord.Message]:
    chain = [message]
    current = message
    while current.reference is not None and current.reference.message_id and len(chain) < limit:
        parent = current.reference.resolved
        if not isinstance(parent, discord.Message):
            try:
                parent = await current.channel.fetch_message(current.reference.message_id)
            except discord.HTTPException:
                break
        chain.append(parent)
        current = parent
    return chain


def _as_history(messages: Iterable[discord.Message], bot_id: int) -> list[dict[str, str]]:
    history: list[dict[str, str]] = []
    for m in messages:
        role = "assistant" if m.author.id == bot_id else "user"
        text = message_text(m, bot_id)
        if not text:
            continue
        if history and history[-1]["role"] == role:  # one answer split over several messages
            history[-1]["content"] += ("" if role == "assistant" else "\n") + text
        else:
            history.append({"role": role, "content": text})
    while history and history[0]["role"] != "user":
        history.pop(0)
    return history


@dataclass(frozen=True)
class AnswerLimits:
    """How long one answer may get: tokens (sent to Ollama), characters, Discord messages, seconds."""

    max_tokens: int
    time_s: float
    max_chars: int
    max_messages: int

    @classmethod
    def from_settings(cls, settings: Settings) -> AnswerLimits:
        chars = settings.chat_max_tokens * CHARS_PER_TOKEN
        messages = max(1, min(MAX_MESSAGES, math.ceil(chars / DISCORD_LIMIT)))
        return cls(settings.chat_max_tokens, settings.chat_time_limit_s, min(chars, messages * DISCORD_LIMIT),
                   messages)


def cut_note(why: str) -> str:
    return f" … (answer cut: {why} limit)"


def fit_messages(text: str, max_messages: int, tail: str = "") -> str:
    """``text`` + ``tail``, with ``text`` shortened (at a space where possible) until the whole splits into at
    most ``max_messages`` Discord messages; ``tail`` (a note) is always kept whole."""
    if len(split_message(text + tail)) <= max_messages:
        return text + tail
    low, high = 0, len(text)  # the longest prefix that fits, by bisection (split_message is linear)
    while low < high:
        mid = (low + high + 1) // 2
        if len(split_message(text[:mid] + tail)) <= max_messages:
            low = mid
        else:
            high = mid - 1
    prefix = text[:low]
    space = prefix.rfind(" ")
    if space > low * 0.9:
        prefix = prefix[:space]
    return prefix.rstrip() + tail


@dataclass
class ChatResult:
    text: str
    messages: list[discord.Message]
    answer_id: int | None
    model_tag: str
    error: str | None = None
    cut: str | None = None  # "length" or "time" when the answer was stopped by a limit


Send = Callable[[str], Awaitable[discord.Message]]


class Chat:
    """Answers conversations with the active model and records them."""

    def __init__(self, settings: Settings, store: Store, ollama: OllamaClient,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.store = store
        self.ollama = ollama
        self.clock = clock

    async def active_model(self) -> tuple[str, int | None]:
        """The tag the store marks active, or the configured base before any fine-tune was promoted."""
        version = await self.store.active_model_version()
        return (version.tag, version.id) if version else (self.settings.ollama_base, None)

    async def answer(
        self,
        history: list[dict[str, str]],
        send_first: Send,
        *,
        make_view: Callable[[int], discord.ui.View] | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user_id: int | None = None,
    ) -> ChatResult:
        """Stream the answer into Discord: ``send_first`` posts the first message; later chunks reply to it."""
        model, version_id = await self.active_model()
        prompt = ([{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt
                  else []) + history
        limits = AnswerLimits.from_settings(self.settings)
        text = ""
        sent: list[discord.Message] = []
        shown: list[str] = []
        last_render = float("-inf")
        cut: str | None = None
        deadline = asyncio.get_running_loop().time() + limits.time_s
        stream = self.ollama.chat_stream(model, prompt, options={"num_predict": limits.max_tokens})
        try:
            while True:
                # The time limit covers waiting for the next piece too (a stalled stream), but never a Discord
                # call: cancelling one half-way could leave a message posted that we do not know about.
                try:
                    async with asyncio.timeout_at(deadline):
                        piece = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    cut = "time"
                    break
                text += piece
                if len(text) > limits.max_chars:
                    cut = "length"
                    break
                if self.clock() - last_render >= EDIT_INTERVAL_S:
                    await self._render(fit_messages(text, limits.max_messages, CURSOR), sent, shown, send_first)
                    last_render = self.clock()
        except OllamaError as exc:
            notice = _explain(exc, model)
            log.warning("chat with %s failed: %s", model, exc)
            shown_text = fit_messages(text, limits.max_messages, "\n\n" + notice) if text else notice
            await self._render(shown_text, sent, shown, send_first)
            return ChatResult(text, sent, None, model, error=notice)
        finally:
            await stream.aclose()  # a cut stream: close the HTTP response now, not when it is collected
        if not cut and len(split_message(text)) > limits.max_messages:
            cut = "length"  # under the character cap, but cut into too many pieces (code blocks, long words)
        if cut:
            log.info("chat answer from %s cut by the %s limit after %d characters", model, cut, len(text))
            text = fit_messages(text[:limits.max_chars].rstrip(), limits.max_messages, cut_note(cut))
        elif not text.strip():
            text = "(the model gave an empty answer)"
        answer = await self.store.record_answer(
            prompt=prompt, answer=text, model_tag=model, model_version_id=version_id, guild_id=guild_id,
            channel_id=channel_id, user_id=user_id,
        )
        view = make_view(answer.id) if make_view else None
        await self._render(text, sent, shown, send_first, view=view, force_last=view is not None)
        return ChatResult(text, sent, answer.id, model, cut=cut)

    async def _render(self, text: str, sent: list[discord.Message], shown: list[str], send_first: Send,
                      view: discord.ui.View | None = None, force_last: bool = False) -> None:
        chunks = split_message(text)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            extra: dict[str, Any] = {"view": view} if (last and view is not None) else {}
            if i < len(sent):
                if shown[i] != chunk or (last and force_last):
                    sent[i] = await sent[i].edit(content=chunk, allowed_mentions=NO_MENTIONS, **extra) or sent[i]
                    shown[i] = chunk
            elif not sent:
                sent.append(await send_first(chunk))
                shown.append(chunk)
                if extra:
                    await sent[0].edit(view=view)
            else:
                sent.append(await sent[-1].reply(chunk, mention_author=False, allowed_mentions=NO_MENTIONS,
                                                 **extra))
                shown.append(chunk)


def _explain(exc: OllamaError, model: str) -> str:
    if isinstance(exc, ModelNotFound):
        return f"⚠️ The model `{model}` is not installed on the model server; an admin needs to fix this."
    if isinstance(exc, OllamaUnavailable):
        return "⚠️ The model server is not reachable right now. Please try again in a minute."
    return "⚠️ The model server failed to answer. Please try again in a minute."
