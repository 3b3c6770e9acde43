"""``loraloop chat``: talk to the active model (or any tag) from a terminal, as ``ollama run`` does, through the bot's
own chat path (bot/chat.py): the same system prompt, expert answers from retrieval, served options, context fitting
and limits; each answer is recorded as the bot records one. Only the showing differs: the answer streams to stdout.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from bot.cli.common import Community, err_console, fail, open_ollama, open_store, settings

if TYPE_CHECKING:
    import discord

    from bot.chat import Chat, ChatResult
    from bot.retrieval import Retriever
    from bot.settings import Settings
    from data.store import Store
    from deploy.ollama import OllamaClient

QUIT = ("exit", "quit", "/bye")


def chat(
    model: Annotated[str | None, typer.Option(
        "--model", help="The Ollama tag to talk to (default: the active model, or ollama_base before any).")] = None,
    once: Annotated[str | None, typer.Option(
        "--once", help="Ask this one question, print the answer and exit (non-zero when no answer came).")] = None,
    community: Community = None,
) -> None:
    """Talk to the model from the terminal as the bot answers in Discord (its system prompt, expert answers, served
    options; each answer recorded): type a question, the answer streams; `exit` or Ctrl-D quits."""
    config = settings()
    try:
        ok = asyncio.run(_session(config, model, once, community))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        ok = True
    if not ok:
        raise SystemExit(1)


async def _session(config: Settings, model: str | None, once: str | None, community: str | None) -> bool:
    """One conversation with ``community``'s model and knowledge: every question continues it, as replies continue a
    conversation in Discord."""
    from bot.retrieval import Retriever

    async with open_store(config, community) as store, open_ollama(config, timeout_s=300) as ollama:
        retrieval = Retriever(config, store, ollama)
        if retrieval.enabled:
            await retrieval.sync()  # the index the bot builds at start, once: a terminal session is short
        talk = await _chat_with(config, store, ollama, retrieval, model)
        tag, version_id = await talk.active_model()
        why = "--model" if model else "the active model" if version_id is not None else "the base: none promoted yet"
        # On stderr: stdout carries only answers, for scripts.
        err_console.print(f"{tag} answers ({why})" + ("" if once is not None else "; `exit` or Ctrl-D quits"),
                          highlight=False, markup=False)
        if once is not None:
            result = await _turn(talk, [], once)
            return result.error is None
        history: list[dict[str, str]] = []
        while True:
            try:
                question = await asyncio.to_thread(input, ">>> ")
            except EOFError:
                sys.stdout.write("\n")
                return True
            if question.strip().lower() in QUIT:
                return True
            if not question.strip():
                continue
            result = await _turn(talk, history, question)
            if result.error is None or result.text:
                history += [{"role": "user", "content": question}, {"role": "assistant", "content": result.text}]


async def _chat_with(config: Settings, store: Store, ollama: OllamaClient, retrieval: Retriever | None,
                     model: str | None) -> Chat:
    """The bot's Chat, answering with ``model`` when one is named (as the version it is, if the store knows it)."""
    from bot.chat import Chat

    # Every piece redraws (the bot's one-edit-a-second pacing is Discord's limit, not a terminal's); a reasoning
    # model's thinking is not shown: the spoiler that collapses it is Discord's.
    terminal = config.model_copy(update={"chat_thinking": "hidden"})
    clock = itertools.count().__next__
    if model is None:
        return Chat(terminal, store, ollama, clock=clock, retrieval=retrieval)
    tag = model  # named for the class below, where ``model`` would be read as still possibly None
    versions = {v.tag: v.id for v in await store.list_model_versions()}
    if model not in versions and model != config.ollama_base:
        try:
            known = {m.name for m in await ollama.list_models()}
        except Exception:  # unreachable: the chat itself will say so
            known = {model}
        if model not in known and f"{model}:latest" not in known:
            fail(f"no model {model!r} in Ollama or among the model versions (`loraloop models list`)")

    class Named(Chat):
        async def active_model(self) -> tuple[str, int | None]:
            return tag, versions.get(tag)

    return Named(terminal, store, ollama, clock=clock, retrieval=retrieval)


async def _turn(talk: Chat, history: list[dict[str, str]], question: str) -> ChatResult[_Message]:
    """One question answered by the bot's chat path, streamed to stdout."""
    screen = _Screen(sys.stdout)
    result = await talk.answer([*history, {"role": "user", "content": question}], screen.first,
                               send_more=screen.more)
    screen.end()
    return result


class _Screen:
    """The bot's Discord messages for one answer, drawn on a terminal. Each render is the whole answer so far (the
    live ones end with the cursor); what it adds to the text already printed is printed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.chunks: list[str] = []
        self.printed = ""

    async def first(self, text: str) -> _Message:
        return self._post(text)

    async def more(self, previous: _Message, text: str, view: discord.ui.View | None = None) -> _Message:
        return self._post(text)

    def _post(self, text: str) -> _Message:
        self.chunks.append("")
        message = _Message(self, len(self.chunks) - 1)
        self.draw(message.index, text)
        return message

    def draw(self, index: int, text: str) -> None:
        from bot.chat import CURSOR

        self.chunks[index] = text
        whole = "\n".join(self.chunks)
        live = whole.endswith(CURSOR)
        whole = whole.removesuffix(CURSOR)
        if whole.startswith(self.printed):
            self.out.write(whole[len(self.printed):])
            self.printed = whole
        elif not live:  # the final text took back something shown (a cut answer): show the end again
            same = next((i for i, (a, b) in enumerate(zip(whole, self.printed, strict=False)) if a != b), 0)
            self.out.write("\n" + whole[same:])
            self.printed = whole
        self.out.flush()

    def end(self) -> None:
        self.out.write("\n")
        self.out.flush()


class _Message:
    """What Chat.answer edits: one Discord message, here a part of the terminal's text."""

    def __init__(self, screen: _Screen, index: int) -> None:
        self.screen, self.index = screen, index

    async def edit(self, content: str | None = None, **_: Any) -> _Message:
        if content is not None:
            self.screen.draw(self.index, content)
        return self
