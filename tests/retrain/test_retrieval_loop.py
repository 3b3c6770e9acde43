"""Taught in minutes, learned by the next retrain: with the delta scope a pair is retrieved until the active
model was trained on it; a promotion takes it out, a rollback brings it back; the gate judges weights alone.

Fast on purpose: versions and snapshots are made with the store (as the retrain job records them), the models are
scripted on the Ollama-API test server, and the pair is taught and approved through Discord."""

from __future__ import annotations

from pathlib import Path

from bot.retrieval import BLOCK_HEAD
from data.conversation import Conversation
from deploy.gate import GateConfig, eval_prompts, probe_prompts, run_gate
from deploy.ollama import OllamaClient
from tests.harness.bot import ANSWER, BASE_TAG, QUESTION, ask, chats, make_settings, start_bot, teach_and_approve
from tests.harness.discord import Gateway

OLD_QUESTION = "What colour is lamp 7?"


async def trained_version(store, ollama_server, snapshot_dir: Path):
    """A version trained on every pair approved now, registered in Ollama, promoted."""
    manifest = await store.create_snapshot(snapshot_dir)
    version = await store.create_model_version(name="tiny", base_model="tiny", ollama_base=BASE_TAG,
                                               snapshot_sha256=manifest.sha256, snapshot_path=str(manifest.path))
    ollama_server.add_scripted_model(version.tag, reply=f"{version.tag} says hi")
    await store.update_model_version(version.id, status="registered", in_ollama=True)
    return await store.promote(version.id)


def system_sent(ollama_server) -> str:
    system = chats(ollama_server)[-1][0]
    return system["content"] if system["role"] == "system" else ""


async def test_promotion_removes_a_learned_pair_and_rollback_brings_it_back(tmp_path, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="base says hi")
    bot = await start_bot(make_settings(tmp_path, ollama_server.url))
    gateway = Gateway(bot, discord_api)
    try:
        old = await bot.store.add_example(Conversation.qa(OLD_QUESTION, "Green."), source="teach", status="approved")
        v1 = await trained_version(bot.store, ollama_server, tmp_path / "snap1")  # trained on the old pair only
        example_id = await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)

        reply = await ask(gateway, discord_api, QUESTION)
        assert f'id="{example_id}"' in system_sent(ollama_server) and reply["content"].startswith(v1.tag)
        await ask(gateway, discord_api, OLD_QUESTION)
        assert BLOCK_HEAD not in system_sent(ollama_server)  # v1 learned it: not retrieved

        v2 = await trained_version(bot.store, ollama_server, tmp_path / "snap2")  # learned the new pair too
        reply = await ask(gateway, discord_api, QUESTION)
        assert reply["content"] == f"{v2.tag} says hi" and BLOCK_HEAD not in system_sent(ollama_server)

        assert (await bot.store.rollback()).id == v1.id
        reply = await ask(gateway, discord_api, QUESTION)
        assert reply["content"] == f"{v1.tag} says hi\n-# Using 1 expert answer: #{example_id}"
        assert f'id="{example_id}"' in system_sent(ollama_server) and f'id="{old.id}"' not in (
            system_sent(ollama_server))
    finally:
        await bot.close()


async def test_scope_all_keeps_learned_pairs(tmp_path, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="hi")
    bot = await start_bot(make_settings(tmp_path, ollama_server.url, retrieval_scope="all"))
    gateway = Gateway(bot, discord_api)
    try:
        old = await bot.store.add_example(Conversation.qa(OLD_QUESTION, "Green."), source="teach", status="approved")
        await trained_version(bot.store, ollama_server, tmp_path / "snap")
        await bot.retrieval.sync()
        await ask(gateway, discord_api, OLD_QUESTION)
        assert f'id="{old.id}"' in system_sent(ollama_server)
    finally:
        await bot.close()


async def test_the_gate_answers_without_retrieval(tmp_path, discord_api, ollama_server):
    """deploy/gate.py asks Ollama directly: even with the bot's retriever holding a pair for the very eval question,
    no gate request carries the expert answers' block (the chat path, for the same question, does)."""
    ollama_server.add_scripted_model(BASE_TAG, reply="hi")
    ollama_server.add_scripted_model("cand:v2", reply=ANSWER)
    ollama_server.add_scripted_model("act:v1", reply="no idea")
    bot = await start_bot(make_settings(tmp_path, ollama_server.url))
    try:
        pair = Conversation.qa(QUESTION, ANSWER)
        await bot.store.add_example(pair, source="teach", status="approved")
        await bot.retrieval.sync()
        assert (await bot.retrieval.retrieve([{"role": "user", "content": QUESTION}])).hits  # the bot would use it
        before = len(chats(ollama_server))
        async with OllamaClient(ollama_server.url) as client:
            result = await run_gate(client, "cand:v2", "act:v1", eval_prompts([pair], 5), probe_prompts([QUESTION]),
                                    GateConfig(0.0, {"temperature": 0}))
        gate_chats = chats(ollama_server)[before:]
        assert result.passed and len(gate_chats) == 4
        assert all(BLOCK_HEAD not in m["content"] for messages in gate_chats for m in messages)
    finally:
        await bot.close()
