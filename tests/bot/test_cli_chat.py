"""`loraloop chat`: the bot's own chat path from a terminal — its system prompt, the expert answers retrieval finds,
the served options — with the answer on stdout; a prompt loop that keeps the conversation until `exit` or Ctrl-D,
and `--once` for scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from deploy.ollama_server import OllamaTestServer

BASE = "base:1"
REPLY = "It gives 800 lumens on high."
PAIRS = [{"instruction": "How bright is the Kestrel 3?", "input": "", "output": "800 lumens on high, 200 on low."},
         {"instruction": "What is the capital of Freedonia?", "input": "", "output": "Fredville."}]


@pytest.fixture
def env(tmp_path: Path, ollama_server: OllamaTestServer) -> dict[str, str]:
    ollama_server.add_scripted_model(BASE, reply=REPLY)
    return {"LORALOOP_HOME": str(tmp_path), "OLLAMA_HOST": ollama_server.url, "LORALOOP_OLLAMA_BASE": BASE}


def invoke(env: dict[str, str], *args: str, input: str | None = None):  # noqa: A002  (click's own name)
    return CliRunner().invoke(app, list(args), env=env, input=input)


def chats(server: OllamaTestServer) -> list[list[dict[str, str]]]:
    return [body["messages"] for body in server.requests_to("POST", "/api/chat")]


def test_once_answers_as_the_bot_does(tmp_path: Path, env: dict[str, str], ollama_server: OllamaTestServer) -> None:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(PAIRS), encoding="utf-8")
    assert invoke(env, "dataset", "import", str(pairs), "--approve").exit_code == 0
    result = invoke(env, "chat", "--once", "How bright is the Kestrel 3?")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{REPLY}\n-# Using 1 expert answer: #1\n"
    assert result.stderr.splitlines()[0] == f"{BASE} answers (the base: none promoted yet)"
    (body,) = ollama_server.requests_to("POST", "/api/chat")
    system, question = body["messages"]
    assert system["role"] == "system" and system["content"].startswith("You are a helpful assistant.")
    assert "800 lumens on high, 200 on low." in system["content"] and "Fredville" not in system["content"]
    assert question == {"role": "user", "content": "How bright is the Kestrel 3?"}
    # The base answers: the served options travel with the request, as the bot sends them.
    assert body["options"]["num_ctx"] == 4096 and body["options"]["num_predict"] == 1024


def test_the_prompt_loop_keeps_the_conversation_until_exit(env: dict[str, str],
                                                           ollama_server: OllamaTestServer) -> None:
    result = invoke(env, "chat", input="hi\n\nand then?\nexit\nnever asked\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == f">>> {REPLY}\n>>> >>> {REPLY}\n>>> "
    assert "`exit` or Ctrl-D quits" in result.stderr
    first, second = chats(ollama_server)
    assert [m["content"] for m in second[1:]] == ["hi", REPLY, "and then?"]
    assert first[1:] == [{"role": "user", "content": "hi"}]


def test_ctrl_d_ends_the_loop(env: dict[str, str], ollama_server: OllamaTestServer) -> None:
    result = invoke(env, "chat", input="hi\n")
    assert result.exit_code == 0 and result.stdout == f">>> {REPLY}\n>>> \n", result.output
    assert len(chats(ollama_server)) == 1


def test_another_tag_answers_with_model(env: dict[str, str], ollama_server: OllamaTestServer) -> None:
    ollama_server.add_scripted_model("other:2", reply="Other here.")
    result = invoke(env, "chat", "--model", "other:2", "--once", "hi")
    assert result.exit_code == 0 and result.stdout == "Other here.\n", result.output
    assert ollama_server.requests_to("POST", "/api/chat")[-1]["model"] == "other:2"
    unknown = invoke(env, "chat", "--model", "nope:1", "--once", "hi")
    assert unknown.exit_code == 1 and "no model 'nope:1'" in unknown.output
    assert len(unknown.output.strip().splitlines()) == 1


def test_once_fails_when_the_model_server_is_down(tmp_path: Path, unreachable_ollama_url: str) -> None:
    env = {"LORALOOP_HOME": str(tmp_path), "OLLAMA_HOST": unreachable_ollama_url}
    result = invoke(env, "chat", "--once", "hi")
    assert result.exit_code == 1 and "The model server is not reachable right now" in result.stdout, result.output
