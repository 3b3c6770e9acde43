"""Benchmark retrieval's cost on the chat path: the bot's added first-token latency with retrieval off and on.

Time from a mention arriving at the bot to the first Discord message carrying the answer, minus the time to the
first streamed piece when calling the Ollama-API test server directly (as bench/bench_bot.py measures it), for:
retrieval off; the delta scope over N approved pairs, lexical; the same with embed_model (the test server's
trigram embedding: one /api/embed round trip per turn). Each question matches some pairs, so a block is added.
Also the retrieval p50 alone (``Retriever.search``). Target: added latency with retrieval ≤ 5 ms + retrieval p50;
on a busy machine the bot's path misses 5 ms with retrieval off too, so each line also shows the increment over off.

``--communities K`` adds a run with K configured servers, each its own community holding ``--community-pairs``
approved pairs (one index per community, data/communities.py): the turns go round the servers, each retrieving
from its own community's index; it prints the same numbers, the time to build every index at start and the bot's
resident memory after.
Usage: python bench/bench_retrieval_chat.py [--rounds 30] [--pairs 2000] [--communities 10 --community-pairs 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import discord

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_bot import ROUND_GAP_S, finished_answers, first_token_bot, first_token_direct, until_finished
from bot.settings import GuildRoles
from data.conversation import Conversation
from tests.harness.bot import BASE_TAG, make_settings, start_bot
from tests.harness.discord import BOT_ID, CHANNEL_ID, GUILD_ID, DiscordAPI, Gateway, message_payload, user_payload
from tests.harness.ollama_server import OllamaTestServer
from tests.harness.polling import wait_until

BOT = user_payload(BOT_ID, "loraloop", bot=True)
EMBEDDER = "embedder:latest"
TOPICS = ["password", "invoice", "deploy", "backup", "printer", "vpn", "calendar", "badge", "laptop", "wiki"]


def pair(i: int) -> Conversation:
    return Conversation.qa(f"How do I fix the {TOPICS[i % len(TOPICS)]} problem number {i} on site {i % 13}?",
                           f"Open ticket queue {i % 17} and follow runbook {i}.")


def question(i: int) -> str:
    return f"how to fix {TOPICS[i % len(TOPICS)]} problem {i * 7 % 1000} at site {i % 13}"


async def measure(home: Path, ollama: OllamaTestServer, api: DiscordAPI, rounds: int, pairs: int,
                  **settings: object) -> tuple[list[float], list[float], list[float], int]:
    """(first-token times directly and via the bot, retrieval times alone, pairs found per turn ×100); the direct
    times are taken right before the bot's, so both see the same machine load."""
    direct = await first_token_direct(ollama.url, rounds)
    bot = await start_bot(make_settings(home, ollama.url, **settings))
    gateway = Gateway(bot, api)
    try:
        await bot.store.import_conversations([pair(i) for i in range(pairs)], approve=True)
        await bot.retrieval.wait_idle()
        await bot.retrieval.sync()
        search: list[float] = []
        found = 0
        for i in range(rounds if bot.retrieval.enabled else 0):
            start = time.perf_counter()
            found += len(await bot.retrieval.search(question(i)))
            search.append(time.perf_counter() - start)
        via_bot = await first_token_bot(gateway, api, rounds, question)
        await asyncio.sleep(1.0)  # the last answers stream to their end
    finally:
        await bot.close()
    return direct, via_bot, search, round(100 * found / rounds)


def server(i: int) -> tuple[int, int]:
    """The i-th server of the communities run and its channel."""
    return GUILD_ID + i, CHANNEL_ID + i


async def first_token_round_robin(gateway: Gateway, api: DiscordAPI, rounds: int, servers: int) -> list[float]:
    """bench_bot.first_token_bot, each turn in the next server (so in the next community)."""
    times = []
    done_before = finished_answers(api)
    for i in range(rounds):
        guild_id, channel_id = server(i % servers)
        seen = len(api.sent_messages())
        start = time.perf_counter()
        await gateway.message(message_payload(f"<@{BOT_ID}> {question(i)}", author=user_payload(1000 + i),
                                              mentions=[BOT], guild_id=guild_id, channel_id=channel_id))
        await wait_until(lambda seen=seen: len(api.sent_messages()) > seen, 60, "the bot's first message",
                         interval=0.0005)
        times.append(time.perf_counter() - start)
        await asyncio.sleep(ROUND_GAP_S)
    await until_finished(api, done_before + rounds)
    return times


async def measure_communities(home: Path, ollama: OllamaTestServer, api: DiscordAPI, rounds: int, servers: int,
                              pairs: int) -> tuple[list[float], list[float], list[float], int, float, float]:
    """measure()'s numbers with ``servers`` communities of ``pairs`` pairs each, plus the seconds to build every
    index and the peak resident memory (MB) after."""
    direct = await first_token_direct(ollama.url, rounds)
    guilds = {server(i)[0]: GuildRoles() for i in range(servers)}
    settings = make_settings(home, ollama.url, guilds=guilds)
    bot = await start_bot(settings)
    gateway = Gateway(bot, api)
    try:
        for community in settings.community_names():
            # Each community its own wording of the pairs: the same text in two communities is two rows anyway.
            await bot.community_store(community).import_conversations(
                [Conversation.qa(f"{p.turns[-2].content} ({community})", p.turns[-1].content)
                 for p in map(pair, range(pairs))], approve=True)
        await bot.retrievers.wait_idle()
        start = time.perf_counter()
        for retriever in bot.retrievers:
            await retriever.rebuild()  # what a start does, community after community
        build = time.perf_counter() - start
        search: list[float] = []
        found = 0
        for i in range(rounds):
            retriever = bot.retrievers.of(settings.community_names()[i % servers])
            start = time.perf_counter()
            found += len(await retriever.search(question(i)))
            search.append(time.perf_counter() - start)
        via_bot = await first_token_round_robin(gateway, api, rounds, servers)
        await asyncio.sleep(1.0)
    finally:
        await bot.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return direct, via_bot, search, round(100 * found / rounds), build, rss


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms" if values else "—"


async def main(rounds: int, pairs: int, communities: int = 0, community_pairs: int = 10_000) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ollama = OllamaTestServer(tmp / "ollama").start()
        ollama.add_scripted_model(BASE_TAG, reply=" ".join(f"w{i}" for i in range(40)), token_delay=0.02)
        ollama.add_embedding_model(EMBEDDER)  # trigram vectors (the test server refuses /api/embed for others)
        api = DiscordAPI()
        await api.start()
        discord.http.Route.BASE = api.url
        runs = [tmp / name for name in ("off", "lexical", "hybrid", "communities")]
        for run in runs:
            run.mkdir()
        extra: tuple[float, float] | None = None
        try:
            results = {
                "retrieval off": await measure(runs[0], ollama, api, rounds, pairs, retrieval_scope="off"),
                "delta, lexical": await measure(runs[1], ollama, api, rounds, pairs),
                "delta, hybrid (embed)": await measure(runs[2], ollama, api, rounds, pairs, embed_model=EMBEDDER),
            }
            if communities:
                *numbers, build, rss = await measure_communities(runs[3], ollama, api, rounds, communities,
                                                                 community_pairs)
                results[f"{communities} communities, lexical"] = tuple(numbers)  # type: ignore[assignment]
                extra = (build, rss)
        finally:
            await api.stop()
            ollama.stop()
    print(f"{pairs} approved pairs, {rounds} turns each; added = via the bot − the Ollama-API server directly")
    off = None
    for name, (direct, via_bot, search, found) in results.items():
        added = (statistics.median(via_bot) - statistics.median(direct)) * 1000
        off = added if off is None else off
        budget = 5.0 + (statistics.median(search) * 1000 if search else 0.0)
        verdict = "ok" if added <= budget else "OVER"
        # On a loaded machine the bot's own path already misses 5 ms; what retrieval adds is the second number.
        print(f"{name:>22}: added first-token latency p50 {added:5.1f} ms (retrieval off +{added - off:4.1f} ms); "
              f"retrieval alone p50 {ms(search)}; {found / 100:.2f} pairs per turn; target ≤ {budget:.1f} ms: "
              f"{verdict}")
    if extra is not None:
        print(f"{communities} communities × {community_pairs} pairs: every index built in {extra[0]:.1f} s "
              f"(one after another, as at start); peak resident memory of the process {extra[1]:.0f} MB")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--communities", type=int, default=0, help="add a run with this many communities")
    parser.add_argument("--community-pairs", type=int, default=10_000, help="approved pairs in each community")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.pairs, args.communities, args.community_pairs))
