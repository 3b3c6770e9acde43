"""The Ollama-API test server lowercases message roles before templating, as Ollama does (``api/types.go``,
``Message.UnmarshalJSON``): a client that writes "User" or "ASSISTANT" gets the prompt a lowercase one gets."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.harness.ollama_server import OllamaTestServer

TEMPLATE = ("{{ range .Messages }}{{ if eq .Role \"user\" }}<u>{{ .Content }}</u>"
            "{{ else if eq .Role \"assistant\" }}<a>{{ .Content }}</a>{{ else }}<{{ .Role }}>{{ end }}{{ end }}")


async def chat(server: OllamaTestServer, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    body = {"model": "m:1", "messages": messages, "stream": False, **extra}
    async with aiohttp.ClientSession() as http, http.post(server.url + "/api/chat", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_mixed_case_roles_render_as_lowercase_ones(ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("m:1", template=TEMPLATE)
    mixed = [{"role": "User", "content": "hi"}, {"role": "ASSISTANT", "content": "hello"},
             {"role": "uSeR", "content": "bye"}]
    lower = [{**m, "role": m["role"].lower()} for m in mixed]
    shown = await chat(ollama_server, mixed, _debug_render_only=True)
    assert shown["_debug_info"]["rendered_template"] == "<u>hi</u><a>hello</a><u>bye</u>"
    await chat(ollama_server, lower, _debug_render_only=True)
    assert [r["prompt"] for r in ollama_server.rendered] == ["<u>hi</u><a>hello</a><u>bye</u>"] * 2


async def test_a_mixed_case_user_message_is_the_question_a_scripted_model_answers(
        ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("m:1", reply="generic", by_question={"what colour?": "red"})
    answer = await chat(ollama_server, [{"role": "USER", "content": "what colour?"}])
    assert answer["message"]["content"] == "red"
