"""Reasoning models in chat: Ollama hands a thinking model's reasoning apart, in ``message.thinking``; the bot shows
it as ``chat_thinking`` says (behind a spoiler above the answer, or not at all), records the answer alone, and never
asks a model that cannot think to think. The gate scores answers without their thinking.

The model server here is a small one in this file speaking Ollama's documented chat stream with its ``thinking``
field (api/types.go ``Message.Thinking``, ``ChatRequest.Think``; server/routes.go ``ChatHandler``): the shared test
server does not split thinking yet."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from bot.reasoning import THINKING_SHOWN_MAX
from deploy.gate import answer_all, probe_prompts
from deploy.ollama import OllamaClient
from tests.harness.bot import BASE_TAG, BOT, USER, make_settings, mention
from tests.harness.discord import BOT_ID, message_payload
from tests.harness.polling import wait_until

THINKING = "The user greets me. A short greeting back is enough."
ANSWER = "Hello! How can I help?"


class ThinkingOllama:
    """``/api/show`` and ``/api/chat`` as Ollama serves them (v0.13+) for two kinds of model.

    A model with the ``thinking`` capability thinks unless the request says ``think: false`` (``ChatHandler`` sets
    ``think`` to true when it is unset) and streams its reasoning in ``message.thinking`` before the answer in
    ``message.content``; ``thinking`` is left out of a line where it is empty (``omitempty``), ``content`` never is.
    A model without it answers ``think: true`` with 400 ``"NAME" does not support thinking``."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    def add(self, name: str, answer: str, thinking: str | None = None, done_reason: str = "stop") -> None:
        """``thinking`` None: a model without the capability (``answer`` is all it says)."""
        self.models[name] = {"answer": answer, "thinking": thinking, "done_reason": done_reason}

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.requests if p == path]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _show(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("/api/show", body))
        model = self.models.get(body.get("model", ""))
        if model is None:
            return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
        capabilities = ["completion"] + (["thinking"] if model["thinking"] is not None else [])
        return web.json_response({"template": "{{ .Prompt }}", "capabilities": capabilities, "details": {}})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(("/api/chat", body))
        name = body.get("model", "")
        model = self.models.get(name)
        if model is None:
            return web.json_response({"error": f"model '{name}' not found"}, status=404)
        think = body.get("think")
        if model["thinking"] is None and think is True:
            return web.json_response({"error": f'"{name}" does not support thinking'}, status=400)
        thinks = model["thinking"] is not None and think is not False
        thinking = model["thinking"] if thinks else ""
        now = datetime.now(UTC).isoformat()

        def line(content: str, thinking: str = "", **done: Any) -> dict[str, Any]:
            message = {"role": "assistant", "content": content, **({"thinking": thinking} if thinking else {})}
            return {"model": name, "created_at": now, "message": message, "done": bool(done), **done}

        final = {"done_reason": model["done_reason"], "total_duration": 1000, "prompt_eval_count": 10,
                 "eval_count": 10}
        if body.get("stream") is False:
            return web.json_response(line(model["answer"], thinking, **final))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for piece in _pieces(thinking):
            await response.write((json.dumps(line("", piece)) + "\n").encode())
        for piece in _pieces(model["answer"]):
            await response.write((json.dumps(line(piece)) + "\n").encode())
        await response.write((json.dumps(line("", **final)) + "\n").encode())
        await response.write_eof()
        return response


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


@pytest.fixture
async def thinking_ollama() -> AsyncIterator[ThinkingOllama]:
    server = ThinkingOllama()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def settings(tmp_path, thinking_ollama, message_content_intent):
    return make_settings(tmp_path, thinking_ollama.url, message_content_intent=message_content_intent)


def finished(discord_api) -> list[dict]:
    """The bot's messages once an answer carries its feedback buttons (its last step)."""
    return [m for m in discord_api.bot_messages() if m.get("components")]


async def ask(gateway, discord_api, text: str, **kw) -> dict:
    before = len(finished(discord_api))
    await gateway.message(mention(text, **kw))
    await wait_until(lambda: len(finished(discord_api)) > before)
    return finished(discord_api)[-1]


async def recorded(bot, message: dict):
    custom_id = message["components"][0]["components"][0]["custom_id"]
    return await bot.store.get_answer(int(custom_id.rsplit(":", 1)[1]))


async def test_a_thinking_model_s_reasoning_is_shown_behind_a_spoiler_above_the_answer(
        bot, gateway, discord_api, thinking_ollama):
    thinking_ollama.add(BASE_TAG, ANSWER, thinking=THINKING)
    message = await ask(gateway, discord_api, "hi")
    assert message["content"] == f"💭 ||{THINKING}||\n\n{ANSWER}"
    assert (await recorded(bot, message)).answer == ANSWER  # the thinking is not the answer
    assert thinking_ollama.bodies("/api/chat")[-1]["think"] is True

    await ask(gateway, discord_api, "hi again")
    assert len(thinking_ollama.bodies("/api/show")) == 1  # the capabilities are read once per tag


async def test_hidden_thinking_is_not_shown(bot, gateway, discord_api, thinking_ollama):
    bot.settings.chat_thinking = "hidden"
    thinking_ollama.add(BASE_TAG, ANSWER, thinking=THINKING)
    message = await ask(gateway, discord_api, "hi")
    assert message["content"] == ANSWER
    assert (await recorded(bot, message)).answer == ANSWER


async def test_a_model_that_cannot_think_is_never_asked_to(bot, gateway, discord_api, thinking_ollama):
    thinking_ollama.add(BASE_TAG, ANSWER)  # think: true would be a 400
    message = await ask(gateway, discord_api, "hi")
    assert message["content"] == ANSWER
    assert "think" not in thinking_ollama.bodies("/api/chat")[-1]


async def test_long_thinking_keeps_the_answer_whole_within_discord_s_limits(bot, gateway, discord_api,
                                                                            thinking_ollama):
    answer = " ".join(f"fact{i}" for i in range(300))  # ~2,000 characters: two messages
    thinking_ollama.add(BASE_TAG, answer, thinking=" ".join(f"step{i}" for i in range(400)))
    await ask(gateway, discord_api, "explain")
    messages = discord_api.bot_messages()
    assert all(len(m["content"]) <= 2000 for m in messages)
    shown = " ".join(m["content"] for m in messages)
    spoiler, rest = shown.split("||\n\n", 1)
    assert spoiler.startswith("💭 ||step0 step1") and spoiler.endswith("…")
    assert len(spoiler) <= len("💭 ||") + THINKING_SHOWN_MAX
    assert rest == answer


async def test_thinking_that_uses_the_whole_token_cap_says_the_answer_was_cut(bot, gateway, discord_api,
                                                                              thinking_ollama):
    thinking_ollama.add(BASE_TAG, "", thinking="Let me think about this at length", done_reason="length")
    message = await ask(gateway, discord_api, "a hard one")
    assert message["content"].startswith("💭 ||Let me think about this at length||")
    assert message["content"].endswith("(answer cut: length limit)")


async def test_a_continued_conversation_does_not_feed_the_shown_thinking_back(bot, gateway, discord_api,
                                                                              thinking_ollama):
    thinking_ollama.add(BASE_TAG, "Rome.", thinking="Italy's capital.")
    question = discord_api.add_message(mention("capital of France?"))
    answer = discord_api.add_message(message_payload("💭 ||France's capital \\| asked.||\n\nParis.",
                                                     author=BOT, reference=question))
    answer.pop("referenced_message")
    await gateway.message(message_payload(f"<@{BOT_ID}> and of Italy?", author=USER, mentions=[BOT],
                                          reference=answer))
    await wait_until(lambda: finished(discord_api))
    sent = thinking_ollama.bodies("/api/chat")[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent][1:] == [
        ("user", "capital of France?"), ("assistant", "Paris."), ("user", "and of Italy?")]


async def test_the_gate_scores_answers_without_their_thinking(thinking_ollama):
    """deploy/gate.py answer_all (and the with-retrieval table, which uses the same client.chat): content only;
    a thinking model is asked not to think (its answer is judged, within the gate's short num_predict), no think
    sent to a model that cannot think; a template that leaves <think> in the content is split too."""
    thinking_ollama.add("thinker:latest", ANSWER, thinking=THINKING)
    thinking_ollama.add("plain:latest", ANSWER)
    thinking_ollama.add("tagged:latest", f"<think>{THINKING}</think>\n\n{ANSWER}")
    prompts = probe_prompts(["hi"])
    async with OllamaClient(thinking_ollama.url) as client:
        for tag in ("thinker:latest", "plain:latest", "tagged:latest"):
            assert await answer_all(client, tag, prompts, {"temperature": 0}) == [ANSWER], tag
        assert await client.chat("plain:latest", prompts[0].messages, think=True) == ANSWER  # not sent: no 400
        assert await client.chat("thinker:latest", prompts[0].messages, think=False) == ANSWER
    sent = thinking_ollama.bodies("/api/chat")
    assert [b.get("think") for b in sent] == [False, None, None, None, False]


# A template that reads .Thinking inside its range over .Messages: Ollama infers <think>…</think> from it
# (thinking/template.go InferTags), reports the thinking capability and parses the reasoning out of the reply.
THINKING_TEMPLATE = ("{{ range .Messages }}<|{{ .Role }}|>{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
                     "{{ .Content }}\n{{ end }}<|assistant|>")


async def test_through_the_shared_model_server_a_thinking_template_s_reasoning_is_shown(
        tmp_path, discord_api, ollama_server):
    from tests.harness.bot import start_bot
    from tests.harness.discord import Gateway

    ollama_server.add_scripted_model(BASE_TAG, reply=f"<think>{THINKING}</think>{ANSWER}", template=THINKING_TEMPLATE)
    bot = await start_bot(make_settings(tmp_path, ollama_server.url))
    try:
        message = await ask(Gateway(bot, discord_api), discord_api, "hi")
        assert message["content"] == f"💭 ||{THINKING}||\n\n{ANSWER}"
        assert (await recorded(bot, message)).answer == ANSWER
        assert ollama_server.requests_to("POST", "/api/chat")[-1]["think"] is True
    finally:
        await bot.close()
