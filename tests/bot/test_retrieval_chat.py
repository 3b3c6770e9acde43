"""Retrieval in the chat path: a pair taught and approved in Discord reaches the model's next prompt, the answer
names it, experts see it with its 👍/👎, and retrieval failing never fails an answer."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from bot.retrieval import BLOCK_HEAD
from data.conversation import Conversation
from tests.harness.bot import (
    ANSWER,
    BASE_TAG,
    EXPERT,
    MEMBER,
    QUESTION,
    USER,
    ask,
    chats,
    last_response,
    make_settings,
    start_bot,
    teach_and_approve,
)
from tests.harness.discord import BOT_ID, EPHEMERAL, EXPERT_ROLE, Gateway, reply_payload
from tests.harness.polling import wait_until

EMBEDDER = "embedder:latest"


def buttons(message: dict) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


async def test_a_pair_taught_in_discord_is_in_the_next_prompt_and_named_under_the_answer(
        bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Use the vault.")
    await bot.retrieval.wait_idle()
    await ask(gateway, discord_api, QUESTION)
    assert BLOCK_HEAD not in chats(ollama_server)[-1][0]["content"]  # nothing taught yet

    example_id = await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
    reply = await ask(gateway, discord_api, "how can I reset the staging password?")
    system = chats(ollama_server)[-1][0]
    assert system["role"] == "system" and system["content"].startswith("You are terse.\n\n" + BLOCK_HEAD)
    assert f'<expert_answer id="{example_id}">\nQuestion: {QUESTION}\nAnswer: {ANSWER}\n</expert_answer>' in (
        system["content"])
    assert reply["content"] == f"Use the vault.\n-# Using 1 expert answer: #{example_id}"
    answer_id = int(buttons(reply)[0].rsplit(":", 1)[1])
    assert buttons(reply)[-1] == f"ll:pairs:{answer_id}"
    # Recorded: the answer as the model gave it, the prompt without the block (what a retrain would see), the ids.
    answer = await bot.store.get_answer(answer_id)
    assert answer.answer == "Use the vault." and answer.prompt[0] == {"role": "system", "content": "You are terse."}
    assert answer.pair_ids == [example_id]
    assert [t["role"] for t in answer.prompt if t["role"] in ("system", "user", "assistant")] == ["system", "user"]

    # An unrelated question gets no block, no footer and no button.
    other = await ask(gateway, discord_api, "what is the boiling point of water?")
    assert BLOCK_HEAD not in chats(ollama_server)[-1][0]["content"]
    assert "expert answer" not in other["content"] and not any(b.startswith("ll:pairs:") for b in buttons(other))

    # 👍/👎 on the answer count for the pair; experts see the pair with them, members do not.
    await gateway.click(f"ll:fb:up:{answer_id}", message=reply, user_id=MEMBER)
    await gateway.click(f"ll:fb:down:{answer_id}", message=reply, user_id=MEMBER + 1)
    await gateway.click(f"ll:fb:up:{answer_id}", message=reply, user_id=MEMBER + 2)
    assert await bot.store.pair_feedback([example_id, 999]) == {example_id: (2, 1), 999: (0, 0)}
    await gateway.click(f"ll:pairs:{answer_id}", message=reply, user_id=MEMBER, roles=[])
    assert "Only experts" in last_response(discord_api)["data"]["content"]
    await gateway.click(f"ll:pairs:{answer_id}", message=reply, user_id=EXPERT, roles=[EXPERT_ROLE])
    shown = last_response(discord_api)["data"]
    assert shown["flags"] & EPHEMERAL
    assert f"**#{example_id}** · 👍 2 · 👎 1" in shown["content"] and "vault reset --env staging" in shown["content"]


async def test_a_reply_to_an_answer_carries_the_answer_without_its_footer(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Use the vault.")
    example_id = await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
    reply = await ask(gateway, discord_api, QUESTION)
    assert reply["content"].endswith(f"-# Using 1 expert answer: #{example_id}")
    await gateway.message(reply_payload(f"<@{BOT_ID}> and on production?", to=reply, author=USER))
    await wait_until(lambda: chats(ollama_server)[-1][-1]["content"] == "and on production?")
    assert [m["content"] for m in chats(ollama_server)[-1] if m["role"] == "assistant"] == ["Use the vault."]


async def test_a_rejected_pair_leaves_retrieval_after_the_next_sync(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="ok")
    example_id = await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
    await ask(gateway, discord_api, QUESTION)
    assert f'id="{example_id}"' in chats(ollama_server)[-1][0]["content"]
    await bot.store.set_example_status(example_id, "rejected")  # e.g. `loraloop review reject`, another process
    report = await bot.retrieval.sync()
    assert (report.added, report.removed, report.indexed) == (0, 1, 0)
    await ask(gateway, discord_api, QUESTION)
    assert BLOCK_HEAD not in chats(ollama_server)[-1][0]["content"]


async def test_scope_off_and_the_budget(tmp_path, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="ok")
    long_answer = "word " * 400
    for scope, max_chars, expected in (("off", 3000, None), ("all", 3000, 1), ("all", 1000, None)):
        settings = make_settings(tmp_path / scope / str(max_chars), ollama_server.url, retrieval_scope=scope,
                                 retrieval_max_chars=max_chars)
        bot = await start_bot(settings)
        try:
            await bot.store.add_example(Conversation.qa(QUESTION, long_answer.strip()), source="teach",
                                        status="approved")
            await bot.retrieval.wait_idle()
            if scope != "off":
                await bot.retrieval.sync()
            retrieved = await bot.retrieval.retrieve([{"role": "user", "content": QUESTION}])
            assert len(retrieved.hits) == (expected or 0), (scope, max_chars)
            assert (bot.retrieval.index is None) is (scope == "off")
        finally:
            await bot.close()


@pytest.fixture
def embed_settings(tmp_path, ollama_server):
    ollama_server.add_embedding_model(EMBEDDER)
    return make_settings(tmp_path, ollama_server.url, embed_model=EMBEDDER)


async def test_dense_retrieval_runs_end_to_end_and_falls_back_to_lexical_logged_once(
        embed_settings, discord_api, ollama_server, caplog):
    ollama_server.add_scripted_model(BASE_TAG, reply="ok")
    discord_api.message_content_intent = False
    bot = await start_bot(embed_settings)
    gateway = Gateway(bot, discord_api)
    try:
        pair = await bot.store.add_example(Conversation.qa("how do I reset my password", "Use the reset link."),
                                           source="teach", status="approved")
        await bot.retrieval.wait_idle()
        await bot.retrieval.sync()
        assert bot.retrieval.index.dim == 768 and bot.retrieval.index.without_vectors() == []
        embedded = ollama_server.requests_to("POST", "/api/embed")
        assert embedded and embedded[-1] == {"model": EMBEDDER, "input": ["how do I reset my password"]}

        # Typos: no word in common, so only the dense list (the server's trigram embedding) can find the pair.
        typo = "ho do i resett my pasword"
        assert bot.retrieval.index.query(typo, 3) == []
        await ask(gateway, discord_api, typo)
        assert f'id="{pair.id}"' in chats(ollama_server)[-1][0]["content"]
        assert ollama_server.requests_to("POST", "/api/embed")[-1]["input"] == [typo]

        # The embedding model fails: answers go on with lexical retrieval, and the failure is logged once.
        ollama_server.embed_error = (500, "llama runner process has terminated")
        caplog.set_level(logging.WARNING, logger="bot.retrieval")
        for _ in range(2):
            reply = await ask(gateway, discord_api, "how do I reset my password?")
            assert reply["content"].startswith("ok") and f"#{pair.id}" in reply["content"]
            assert f'id="{pair.id}"' in chats(ollama_server)[-1][0]["content"]
        assert sum("lexical retrieval only" in r.getMessage() for r in caplog.records) == 1
        # While it is down, turns do not even wait for it: one attempt, then none until the retry interval.
        calls = len(ollama_server.requests_to("POST", "/api/embed"))
        await ask(gateway, discord_api, "how do I reset my password?")
        assert len(ollama_server.requests_to("POST", "/api/embed")) == calls
        # Back after the retry interval: dense again.
        ollama_server.embed_error = None
        now = bot.retrieval.clock()
        bot.retrieval.clock = lambda: now + 3600
        await ask(gateway, discord_api, typo)
        assert f'id="{pair.id}"' in chats(ollama_server)[-1][0]["content"]
        assert bot.retrieval.embedding_working
    finally:
        await bot.close()


async def test_an_embedding_model_missing_from_the_server_leaves_retrieval_lexical(tmp_path, discord_api,
                                                                                  ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="ok")
    settings = make_settings(tmp_path, ollama_server.url, embed_model="not-pulled")
    bot = await start_bot(settings)
    try:
        # The start's own sync first: under load it may run after the pair is added, and then its embedding pass
        # (the one that fails) can still be in flight when the sync below returns.
        await bot.retrieval.wait_idle()
        pair = await bot.store.add_example(Conversation.qa(QUESTION, ANSWER), source="teach", status="approved")
        await bot.retrieval.sync()
        assert pair.id in bot.retrieval.index and bot.retrieval.index.dim is None
        assert not bot.retrieval.embedding_working
        retrieved = await bot.retrieval.retrieve([{"role": "user", "content": QUESTION}])
        assert retrieved.ids == [pair.id]
    finally:
        await bot.close()


def test_cli_query_shows_what_would_be_retrieved_and_why(tmp_path, monkeypatch, ollama_server):
    import asyncio

    from bot.cli import app
    from data.store import Store

    ollama_server.add_embedding_model(EMBEDDER)
    monkeypatch.setenv("LORALOOP_HOME", str(tmp_path))
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)
    monkeypatch.setenv("LORALOOP_EMBED_MODEL", EMBEDDER)
    database = f"sqlite+aiosqlite:///{tmp_path / 'loraloop.db'}"

    async def seed() -> list[int]:
        async with Store(database) as store:
            await store.migrate()
            rows = [await store.add_example(Conversation.qa(q, a), source="teach", status="approved")
                    for q, a in ((QUESTION, ANSWER), ("What is a LoRA adapter?", "A low-rank weight update."))]
            return [r.id for r in rows]

    ids = asyncio.run(seed())
    runner = CliRunner()
    result = runner.invoke(app, ["retrieval", "rebuild"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Indexed 2 approved pairs (2 with vectors" in result.output
    result = runner.invoke(app, ["retrieval", "query", "reset the staging password", "--json"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["scope"] == "delta" and shown["indexed"] == 2 and shown["in_scope"] == 2
    [hit] = shown["hits"]
    assert hit["example_id"] == ids[0] and hit["lexical"] > 0.3 and hit["dense"] > 0.5
    assert hit["lexical_rank"] == 1 and hit["dense_rank"] == 1 and hit["thumbs_up"] == 0
    table = runner.invoke(app, ["retrieval", "query", "knitting socks"], catch_exceptions=False)
    assert table.exit_code == 0 and "Nothing relevant enough" in table.output
    monkeypatch.setenv("LORALOOP_RETRIEVAL_SCOPE", "off")
    off = runner.invoke(app, ["retrieval", "query", "reset"], catch_exceptions=False)
    assert off.exit_code == 1 and "retrieval is off" in off.output

