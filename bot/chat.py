"""The chat path, in one place: message in → history from the reply chain → the active model streams its
answer from Ollama → one Discord message edited at most about once a second, split past 2000 characters →
the answer and the model version that gave it are recorded, with feedback buttons attached.

Approved pairs the active model has not learned yet reach it through retrieval (bot/retrieval.py): the turn's
relevant ones go into the system message sent to Ollama, the answer names them in a footer with a button to see
them, and the recorded answer lists their ids (its recorded prompt is the one without them, what a retrain or a
preference pair should see).

A :class:`Chat` answers for one community (its store's, data/communities.py): that community's active model, its
retrieval, its recorded answers; the bot holds one per community (bot/app.py ``chat_for``), and one outside every
community that answers with the base model alone.

An answer has limits (:class:`AnswerLimits`): a token cap Ollama enforces (``num_predict``), a character cap
for a server that ignores it, a total time, and a few Discord messages at most. A cut answer says so.

The chat is fitted to the served context (``num_ctx``) here, not by Ollama, which would drop the oldest turns
without a word (server/prompt.go chatPrompt) and shift the context mid-answer once the prompt leaves no room for
``num_predict``: the system prompt, the question and the expert answers are kept (the expert answers shrink before
the question would be cut), then as many of the newest earlier turns as fit (:func:`fit_context`); the answer says
how many were left out, and a question that alone does not fit gets a clear answer instead. Ollama has no
tokenize endpoint, so tokens are estimated (:func:`estimate_tokens`), on the safe side.

A reasoning model (``thinking`` among its Ollama capabilities) is asked to think; its reasoning arrives apart
(``message.thinking``) and is shown as ``chat_thinking`` says, above the answer, never recorded as the answer.

What people wrote, earlier replies and retrieved pairs reach the model as text only: the base's control strings
in them (``<|im_start|>``, ``[INST]``, …) are neutralised (:func:`data.conversation.neutralise_controls`). An answer
the database refuses to record is still finished in Discord, without feedback buttons."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

import discord
from sqlalchemy.exc import SQLAlchemyError

from bot.reasoning import ThinkingMode, render_thinking, split_thinking
from bot.retrieval import Retrieved, Retriever
from bot.settings import Settings
from bot.views import UsedPairsButton
from data.conversation import neutralise_controls
from data.errors import StoreError
from data.retrieval import Hit
from data.store import Store
from deploy.ollama import ModelNotFound, OllamaClient, OllamaError, OllamaUnavailable
from deploy.options import serve_options_from

log = logging.getLogger(__name__)

DISCORD_LIMIT = 2000
EDIT_INTERVAL_S = 1.0  # Discord allows ~5 edits per 5 s per channel; one a second leaves room
CURSOR = " ▌"
MAX_HISTORY = 20
# How old the active model read on a chat turn may be: a promotion by another process (the CLI) reaches chat within
# this; one made in the bot (a button, the retrain loop) at once.
ACTIVE_MODEL_MAX_AGE_S = 2.0
DEFAULT_NUM_CTX = 4096  # Ollama's, when neither the model nor the request sets num_ctx
# Generous (English averages ~4): the cap Ollama applies is num_predict; this one only stops a server that
# ignores it, so it must never cut an answer Ollama would have let through.
CHARS_PER_TOKEN = 6
MAX_MESSAGES = 5  # one answer never floods a channel, whatever the token cap
UNRECORDED = "-# ⚠️ This answer could not be saved, so it takes no feedback."
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


@dataclass
class Conversation:
    """The turns an answer continues, oldest first, and how many messages of its reply chain Discord hid."""

    turns: list[dict[str, str]]
    hidden: int = 0  # without the message-content intent, other people's messages arrive blank


_FEEDBACK_ID = re.compile(r"^ll:fb:[a-z]+:(\d+)$")
# The bot's own lines in an answer, never fed back to the model: Retrieved.footer()'s and left_out_note()'s lines
# at its end, and the thinking render_thinking() shows above it (a "|" in it escaped).
_RETRIEVAL_FOOTER = re.compile(r"\n?^-# Using \d+ expert answers?: #\d+(?:, #\d+)*[ \t]*$", re.MULTILINE)
_LEFT_OUT_NOTE = re.compile(r"\n?^-# \d+ earlier messages? left out to fit the model's context[ \t]*$", re.MULTILINE)
_SHOWN_THINKING = re.compile(r"\A💭 \|\|(?:\\.|[^|\\])*\|\|\s*")


async def conversation_for(message: discord.Message, bot_id: int, limit: int = MAX_HISTORY, *,
                           store: Store | None = None, reads_all: bool = True) -> Conversation:
    """The conversation that ``message`` continues: its reply chain when it replies to something, else the
    thread it is in, else just itself.

    ``reads_all`` False (no message-content intent): blank messages of other people in the reply chain are
    counted as hidden; in a thread they are simply not part of the conversation. A chain that starts at an
    /ask answer gets its question back from the answer recorded in ``store`` (found by its feedback buttons)."""
    hidden = 0
    if message.reference is not None and message.reference.message_id:
        chain = await _reply_chain(message, limit)
        if not reads_all:
            hidden = sum(1 for m in chain if _blanked(m, bot_id))
    elif isinstance(message.channel, discord.Thread):
        try:
            earlier = [m async for m in message.channel.history(limit=limit - 1, before=message)]
        except discord.HTTPException as exc:  # no Read Message History here: answer the message alone
            log.info("thread %s history unreadable (%s): answering the message alone", message.channel.id, exc)
            earlier = []
        chain = [message, *earlier]  # history() gives newest first
    else:
        chain = [message]
    earlier_turns = await _recorded_question(chain[-1], bot_id, store) if store is not None else []
    return Conversation(_as_history(reversed(chain), bot_id, earlier_turns), hidden)


def _blanked(message: discord.Message, bot_id: int) -> bool:
    """A guild message from someone else whose text Discord withheld (it cannot be empty otherwise)."""
    in_guild = message.guild is not None or getattr(message.channel, "guild_id", None) is not None
    return (message.author.id != bot_id and in_guild and not message.content and not message.attachments
            and not message.embeds and not message.stickers)


async def _recorded_question(oldest: discord.Message, bot_id: int, store: Store) -> list[dict[str, str]]:
    """The turns before an /ask answer (an interaction's message carries no question): from the recorded
    answer its feedback buttons name."""
    if oldest.author.id != bot_id or oldest.interaction_metadata is None:
        return []
    for row in oldest.components:
        for item in getattr(row, "children", []):
            match = _FEEDBACK_ID.match(getattr(item, "custom_id", None) or "")
            if match:
                try:
                    answer = await store.get_answer(int(match.group(1)))
                except StoreError:
                    return []
                return [t for t in answer.prompt if t.get("role") in ("user", "assistant")]
    return []


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


def _as_history(messages: Iterable[discord.Message], bot_id: int,
                earlier: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    history: list[dict[str, str]] = [dict(t) for t in earlier or []]
    for m in messages:
        role = "assistant" if m.author.id == bot_id else "user"
        text = message_text(m, bot_id)
        if role == "assistant":  # what the model said, not the bot's lines around it
            text = _LEFT_OUT_NOTE.sub("", _RETRIEVAL_FOOTER.sub("", _SHOWN_THINKING.sub("", text))).rstrip()
        if not text:
            continue
        if history and history[-1]["role"] == role:  # one answer split over several messages
            history[-1]["content"] += ("" if role == "assistant" else "\n") + text
        else:
            history.append({"role": role, "content": text})
    while history and history[0]["role"] != "user":
        history.pop(0)
    return history


def hidden_note(count: int) -> str:
    """Shown under an answer whose reply chain had turns the bot could not read."""
    what = "1 earlier message" if count == 1 else f"{count} earlier messages"
    verb = "is" if count == 1 else "are"
    return (f"-# {what} in this conversation {verb} hidden from me: without the message content intent I only "
            "read messages that mention me.")


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


# ---- the context budget ----------------------------------------------------------------------------------------

# Tokens a chat template spends per message (role markers: "<|im_start|>user\n…<|im_end|>\n" is 5 in ChatML,
# Llama 3's headers as many) and once per prompt (BOS, the assistant's header, a template's fixed text).
MESSAGE_OVERHEAD = 8
PROMPT_OVERHEAD = 64


def estimate_tokens(text: str) -> int:
    """How many tokens ``text`` takes, estimated on the safe side for the bases' tokenizers (Ollama offers no
    tokenize endpoint, and the bot never holds the base's tokenizer).

    ASCII letters count three to a token (English averages about four); a run of spaces four to a token, less the
    space that starts a word (" word" is one token); every other ASCII character one (digits are single tokens in
    Qwen's vocabulary, punctuation and newlines often are); any other character its UTF-8 length less one (CJK
    characters two, emoji three; byte-level vocabularies fall back to bytes). Measured against Qwen2.5's, Llama 3's
    and SmolLM2's tokenizers: English prose and code 1.3–1.6 times their count; numbers, CJK, Cyrillic, Arabic and
    emoji at or above it (CJK up to 3.6 times Qwen2.5's); below it for random letter-digit strings (keys, hex,
    base64: 0.6–0.85) and a few scripts in SmolLM2's English-only vocabulary (0.8–0.9). The answer's reserved room
    absorbs such a shortfall before Ollama would cut anything."""
    letters = other = wide = 0
    for ch in text:
        if ch < "\x80":
            if ch.isalpha():
                letters += 1
            elif ch != " ":
                other += 1
        else:
            point = ord(ch)
            wide += 1 if point < 0x800 else 2 if point < 0x10000 else 3
    spaces = sum(-(-(len(run[1]) - bool(run[2])) // 4) for run in _SPACES.finditer(text))
    return -(-letters // 3) + spaces + other + wide


_SPACES = re.compile(r"( +)([A-Za-z])?")  # a run of spaces, and the letter that starts the word it joins


def prompt_budget(num_ctx: int, num_predict: int) -> int:
    """The tokens a prompt may take so the whole answer still fits the context: an answer cap at or over the
    context (or none, -1) gets half of it."""
    room = num_predict if 0 < num_predict <= num_ctx // 2 else num_ctx // 2
    return num_ctx - room - PROMPT_OVERHEAD


@dataclass(frozen=True)
class ContextFit:
    """What one turn sends: the turns (the question last), the expert answers kept, how many earlier turns were
    left out, and the estimated tokens of all the messages."""

    history: list[dict[str, str]]
    hits: tuple[Hit, ...]
    left_out: int
    tokens: int


@dataclass(frozen=True)
class QuestionTooLong:
    """The question alone does not fit: its estimated tokens, and the room beside the system prompt."""

    tokens: int
    room: int


def fit_context(system_prompt: str, hits: Sequence[Hit], history: list[dict[str, str]],
                budget: int) -> ContextFit | QuestionTooLong:
    """The newest part of ``history`` that fits ``budget`` tokens with the system prompt and the expert answers.

    The question (the last user turn, with what follows it) is always sent whole or not at all; the expert answers
    are dropped worst first only when they and the question do not fit together; earlier turns are then kept
    newest first, as far as a user turn (an answer is never sent without its question)."""
    def cost(text: str) -> int:
        return estimate_tokens(text) + MESSAGE_OVERHEAD

    def system_cost(kept: Sequence[Hit]) -> int:
        system = Retrieved(tuple(kept)).system_message(system_prompt)
        return cost(system) if system else 0

    start = max((i for i, t in enumerate(history) if t["role"] == "user"), default=max(len(history) - 1, 0))
    question = sum(cost(t["content"]) for t in history[start:])
    kept = list(hits)
    while kept and system_cost(kept) + question > budget:
        kept.pop()
    used = system_cost(kept) + question
    if used > budget:
        return QuestionTooLong(question, budget - system_cost(()))
    first = start
    earlier = used
    for i in range(start - 1, -1, -1):
        earlier += cost(history[i]["content"])
        if earlier > budget:
            break
        if history[i]["role"] == "user":
            first, used = i, earlier
    return ContextFit(history[first:], tuple(kept), first, used)


def left_out_note(count: int) -> str:
    """Shown under an answer whose conversation was longer than the model's context."""
    what = "1 earlier message" if count == 1 else f"{count} earlier messages"
    return f"-# {what} left out to fit the model's context"


def too_long_note(too_long: QuestionTooLong) -> str:
    if too_long.room <= 0:
        return ("⚠️ The system prompt leaves no room for a question in the model's context; an admin needs to "
                "shorten it or raise num_ctx.")
    return (f"⚠️ Your message is too long for the model: it is about {too_long.tokens:,} tokens, and the model reads "
            f"about {too_long.room:,} besides its instructions and the room for its answer. Please shorten it.")


class Posted(Protocol):
    """A posted piece of an answer, edited in place while the answer streams: a Discord message (``loraloop chat``
    draws its pieces on a terminal instead)."""

    async def edit(self, *, content: str | None = ..., allowed_mentions: discord.AllowedMentions | None = ...,
                   view: discord.ui.View | None = ...) -> Self: ...


P = TypeVar("P", bound=Posted)


@dataclass
class ChatResult(Generic[P]):
    text: str
    messages: list[P]
    answer_id: int | None
    model_tag: str
    error: str | None = None
    cut: str | None = None  # "length" or "time" when the answer was stopped by a limit
    discord_error: str | None = None  # Discord refused to show (part of) it; the answer is recorded anyway


Send = Callable[[str], Awaitable[P]]
# Posts a later chunk: (the previous chunk's message, text, view or nothing) -> the new message.
SendMore = Callable[[P, str, "discord.ui.View | None"], Awaitable[P]]


async def reply_to(previous: discord.Message, text: str, view: discord.ui.View | None = None) -> discord.Message:
    """A later chunk as a reply to the one before; posted plain if that message was deleted meanwhile."""
    extra: dict[str, Any] = {"view": view} if view is not None else {}
    return await previous.channel.send(text, reference=previous.to_reference(fail_if_not_exists=False),
                                       mention_author=False, allowed_mentions=NO_MENTIONS, **extra)


class Chat:
    """Answers conversations with the active model of the store's community and records them there; a store
    outside every community (``store.community`` None: an unconfigured server, a DM) gets the base model, and
    ``retrieval`` None no expert answers."""

    def __init__(self, settings: Settings, store: Store, ollama: OllamaClient,
                 clock: Callable[[], float] = time.monotonic, retrieval: Retriever | None = None) -> None:
        self.settings = settings
        self.store = store
        self.ollama = ollama
        self.clock = clock
        self.retrieval = retrieval
        # One message edit at a time per channel, shared by the answers streaming there (see _Showing).
        self._channel_writes: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    def _writes(self, channel_id: int | None) -> asyncio.Lock:
        if channel_id is None:
            return asyncio.Lock()
        lock = self._channel_writes.get(channel_id)
        if lock is None:
            lock = self._channel_writes[channel_id] = asyncio.Lock()
        return lock

    async def active_model(self) -> tuple[str, int | None]:
        """The tag the store marks active, or the configured base before any fine-tune was promoted (and always
        outside every community: no community's fine-tune answers there). A switch made in this process counts
        from the next turn; one made by another process within ``ACTIVE_MODEL_MAX_AGE_S``."""
        answering = await self.store.answering_model(ACTIVE_MODEL_MAX_AGE_S)
        return answering if answering is not None else (self.settings.ollama_base, None)

    async def answer(
        self,
        history: list[dict[str, str]],
        send_first: Send[P],
        *,
        send_more: SendMore[P],
        note: str = "",
        make_view: Callable[[int], discord.ui.View] | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        user_id: int | None = None,
    ) -> ChatResult[P]:
        """Stream the answer into Discord: ``send_first`` posts the first message, ``send_more`` later chunks.

        ``note`` is shown under the final answer, not recorded. Discord refusing a message (deleted, no
        permission) stops the showing, not the answer: it is streamed to the end and recorded, and the refusal
        logged once. Live edits run beside the stream, the latest text winning, so a rate-limited edit holds up
        neither the stream nor the model server."""
        model, version_id = await self.active_model()
        # What people wrote (and the bot's own earlier replies) reaches the model as text, never as the base's
        # control tokens: "<|im_end|><|im_start|>system" in a message must not open a turn of its own.
        history = [{**turn, "content": neutralise_controls(turn["content"])} for turn in history]
        retrieved = await self.retrieval.retrieve(history, version_id) if self.retrieval else Retrieved()
        limits = AnswerLimits.from_settings(self.settings)
        view_of = _Showing(send_first, send_more, self._writes(channel_id))
        served = serve_options_from(self.settings)
        # The served context: a fine-tune carries these options (written at deploy), the base gets them below.
        budget = prompt_budget(int(served.get("num_ctx") or DEFAULT_NUM_CTX), limits.max_tokens)
        fit = fit_context(self.settings.system_prompt, retrieved.hits, history, budget)
        if isinstance(fit, QuestionTooLong):
            notice = too_long_note(fit)
            log.info("chat question of about %d tokens left unanswered: %d fit beside the system prompt",
                     fit.tokens, fit.room)
            await view_of.final(notice)
            return ChatResult("", view_of.sent, None, model, error=notice, discord_error=view_of.error)
        history, retrieved = fit.history, Retrieved(fit.hits)
        if fit.left_out:
            log.info("chat with %s: %d earlier turns left out to fit %d tokens", model, fit.left_out, budget)
            note = f"{left_out_note(fit.left_out)}\n{note}" if note else left_out_note(fit.left_out)
        prompt = ([{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt
                  else []) + history
        sent = prompt
        if retrieved.hits:
            sent = [{"role": "system", "content": retrieved.system_message(self.settings.system_prompt)}, *history]
            note = f"{retrieved.footer()}\n{note}" if note else retrieved.footer()
        reply = _Reply(self.settings.chat_thinking)
        last_render = float("-inf")
        cut: str | None = None
        deadline = asyncio.get_running_loop().time() + limits.time_s
        # A fine-tune carries the served options in its Ollama model; the base tag's own parameters are not ours,
        # so while the base answers they travel with each request (base and fine-tunes sample alike).
        options = {"num_predict": limits.max_tokens}
        if version_id is None:
            options = {**served, **options}
        # think is sent only where the model can think (deploy/ollama.py); hidden thinking is still thought.
        stream = self.ollama.chat_parts(model, sent, options=options, think=True)
        try:
            while True:
                # The time limit covers waiting for the next piece too (a stalled stream), but never a Discord
                # call: cancelling one half-way could leave a message posted that we do not know about.
                try:
                    async with asyncio.timeout_at(deadline):
                        part = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    cut = "time"
                    break
                reply.add(part.content, part.thinking)
                if part.done_reason == "length" and not reply.answer().strip():
                    cut = "length"  # num_predict spent before any answer (a reasoning model thought it away)
                if reply.size > limits.max_chars:
                    cut = "length"
                    break
                if self.clock() - last_render >= EDIT_INTERVAL_S:
                    view_of.live(fit_messages(reply.visible(), limits.max_messages, CURSOR))
                    last_render = self.clock()
        except OllamaError as exc:
            notice = _explain(exc, model)
            log.warning("chat with %s failed: %s", model, exc)
            text = reply.visible()
            await view_of.final(fit_messages(text, limits.max_messages, "\n\n" + notice) if text else notice)
            return ChatResult(text, view_of.sent, None, model, error=notice, discord_error=view_of.error)
        finally:
            await stream.aclose()  # a cut stream: close the HTTP response now, not when it is collected
            view_of.stop_live()
        # A reasoning model's thinking is not the answer: only the answer is recorded, and the thinking is shown
        # collapsed (or not at all), never as raw tags.
        thinking, text = reply.thinking(), reply.answer()
        if not cut and len(split_message(text)) > limits.max_messages:
            cut = "length"  # under the character cap, but cut into too many pieces (code blocks, long words)
        if cut:
            log.info("chat answer from %s cut by the %s limit after %d characters", model, cut, len(text))
            text = fit_messages(text[:limits.max_chars].rstrip(), limits.max_messages, cut_note(cut))
        elif not text.strip():
            text = "(the model gave an empty answer)"
        shown = render_thinking(thinking, self.settings.chat_thinking) + text
        try:
            answer = await self.store.record_answer(
                prompt=prompt, answer=text, model_tag=model, model_version_id=version_id, guild_id=guild_id,
                channel_id=channel_id, user_id=user_id, pair_ids=retrieved.ids,
            )
        except (StoreError, SQLAlchemyError) as exc:
            # The answer is still finished in Discord (no cursor left behind), without the buttons that would
            # name a recorded answer.
            log.error("recording the answer from %s failed: %s", model, exc)
            note = f"{note}\n{UNRECORDED}" if note else UNRECORDED
            await view_of.final(fit_messages(shown, limits.max_messages, "\n" + note))
            return ChatResult(text, view_of.sent, None, model, error=UNRECORDED, cut=cut, discord_error=view_of.error)
        view = make_view(answer.id) if make_view and view_of.error is None else None
        if view is not None and retrieved.hits:
            view.add_item(UsedPairsButton(answer.id))
        shown = fit_messages(shown, limits.max_messages, "\n" + note) if note else shown
        await view_of.final(shown, view=view)
        return ChatResult(text, view_of.sent, answer.id, model, cut=cut, discord_error=view_of.error)


class _Reply:
    """A reply as it streams: the reasoning Ollama hands apart (``message.thinking``) and the content, where a
    template that leaves the thinking in may open it with ``<think>`` (split by :func:`split_thinking`)."""

    def __init__(self, mode: ThinkingMode) -> None:
        self.mode = mode
        self.content = ""
        self.apart = ""  # message.thinking

    def add(self, content: str, thinking: str) -> None:
        self.content += content
        self.apart += thinking

    @property
    def size(self) -> int:
        """Characters streamed so far, thinking included (num_predict counts its tokens too)."""
        return len(self.content) + len(self.apart)

    def thinking(self) -> str:
        inline, _ = split_thinking(self.content)
        return "\n\n".join(t for t in (self.apart.strip(), inline) if t)

    def answer(self) -> str:
        return split_thinking(self.content)[1]

    def visible(self) -> str:
        """What Discord may show so far: thinking collapsed or hidden, never raw tags."""
        return render_thinking(self.thinking(), self.mode) + self.answer()


class _Showing(Generic[P]):
    """One answer's Discord messages: live updates that coalesce (the newest text wins), a final render that
    waits for the update in flight, and the first refusal from Discord ending all showing (logged once).

    ``writes`` is held around each edit, one lock per channel: the answers streaming into one channel share its
    edit bucket, and discord.py counts the bucket's room from the headers of each answer as it lands. Two edits
    in flight at once can be answered out of order, and the older answer's count then lets discord.py send an
    edit the bucket has no room for (a 429: retried, but counted towards Discord's invalid-request limit, docs
    topics/rate-limits). One at a time, every answer's count is current. New messages (one or a few per answer,
    after the typing indicator) do not wait on it."""

    def __init__(self, send_first: Send[P], send_more: SendMore[P], writes: asyncio.Lock) -> None:
        self.send_first, self.send_more = send_first, send_more
        self.writes = writes
        self.sent: list[P] = []
        self.shown: list[str] = []
        self.error: str | None = None
        self._pending: str | None = None
        self._task: asyncio.Task[None] | None = None

    def live(self, text: str) -> None:
        self._pending = text
        if self.error is None and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._drain(), name="chat-live-edit")

    def stop_live(self) -> None:
        """Drop a pending update; one in flight finishes (``final`` waits for it)."""
        self._pending = None

    async def _drain(self) -> None:
        while self._pending is not None and self.error is None:
            text, self._pending = self._pending, None
            await self._render(text)

    async def final(self, text: str, view: discord.ui.View | None = None) -> None:
        self._pending = None
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():  # cancelled itself, not only the edit task
                    raise
        await self._render(text, view=view, force_last=view is not None)

    async def _render(self, text: str, view: discord.ui.View | None = None, force_last: bool = False) -> None:
        if self.error is not None:
            return
        try:
            await self._show(text, view, force_last)
        except discord.HTTPException as exc:  # 429s never get here: discord.py waits them out and retries
            self.error = f"{exc.status} {exc.text}"
            log.warning("chat answer no longer shown: Discord refused it (%s %s: %s)", exc.status, exc.code,
                        exc.text)

    async def _show(self, text: str, view: discord.ui.View | None, force_last: bool) -> None:
        sent, shown = self.sent, self.shown
        chunks = split_message(text)
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            extra: dict[str, Any] = {"view": view} if (last and view is not None) else {}
            if i < len(sent):
                if shown[i] != chunk or (last and force_last):
                    async with self.writes:
                        edited = await sent[i].edit(content=chunk, allowed_mentions=NO_MENTIONS, **extra)
                    sent[i] = edited or sent[i]
                    shown[i] = chunk
            elif not sent:
                sent.append(await self.send_first(chunk))
                shown.append(chunk)
                if extra:
                    async with self.writes:
                        await sent[0].edit(view=view)
            else:
                sent.append(await self.send_more(sent[-1], chunk, view if extra else None))
                shown.append(chunk)


def _explain(exc: OllamaError, model: str) -> str:
    if isinstance(exc, ModelNotFound):
        return f"⚠️ The model `{model}` is not installed on the model server; an admin needs to fix this."
    if isinstance(exc, OllamaUnavailable):
        return "⚠️ The model server is not reachable right now. Please try again in a minute."
    return "⚠️ The model server failed to answer. Please try again in a minute."
