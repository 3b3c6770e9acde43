"""Benchmark the chat path: added latency to the first token, and event-loop lag under load.

1. First token: time from calling the Ollama-API test server directly to its first streamed piece, versus
   time from a mention arriving at the bot to the first Discord message carrying the answer (the bot's
   history rebuild, active-model lookup, Ollama call and Discord send). Target: added p50 ≤ 5 ms.
2. Event-loop lag with 100 concurrent conversations streaming at once. Target: ≤ 50 ms.
Both servers run on 127.0.0.1 (the recording Discord API stand-in and the Ollama-API test server).
Usage: python bench/bench_bot.py [--rounds 40] [--concurrent 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import discord

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.ollama import OllamaClient  # noqa: E402
from tests.bot.conftest import BASE_TAG, make_settings, start_bot  # noqa: E402
from tests.fixtures.discord import BOT_ID, DiscordAPI, Gateway, message_payload, user_payload  # noqa: E402
from tests.ollama_server import OllamaTestServer  # noqa: E402

BOT = user_payload(BOT_ID, "loraloop", bot=True)


async def first_token_direct(url: str, rounds: int) -> list[float]:
    times = []
    async with OllamaClient(url) as client:
        for _ in range(rounds):
            start = time.perf_counter()
            async for _piece in client.chat_stream(BASE_TAG, [{"role": "user", "content": "hi"}]):
                times.append(time.perf_counter() - start)
                break
    return times


async def first_token_bot(gateway: Gateway, api: DiscordAPI, rounds: int) -> list[float]:
    times = []
    for i in range(rounds):
        seen = len(api.sent_messages())
        start = time.perf_counter()
        await gateway.message(message_payload(f"<@{BOT_ID}> question {i}", author=user_payload(1000 + i),
                                              mentions=[BOT]))
        while len(api.sent_messages()) == seen:  # noqa: ASYNC110 - the reply arrives at another server
            await asyncio.sleep(0.0005)
        times.append(time.perf_counter() - start)
        await asyncio.sleep(0.3)  # let the answer finish before the next round
    return times


async def loop_lag(gateway: Gateway, api: DiscordAPI, concurrent: int) -> list[float]:
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)

    tick = asyncio.create_task(ticker())
    before = len([c for c in api.find("PATCH") if c.json and c.json.get("components")])
    for i in range(concurrent):
        gateway.client._connection.parse_message_create(message_payload(
            f"<@{BOT_ID}> talk {i}", author=user_payload(5000 + i), mentions=[BOT]))
    deadline = time.monotonic() + 60
    while len([c for c in api.find("PATCH") if c.json and c.json.get("components")]) < before + concurrent:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await tick
    return lags


async def main(rounds: int, concurrent: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ollama = OllamaTestServer(Path(tmp) / "ollama").start()
        ollama.add_scripted_model(BASE_TAG, reply=" ".join(f"w{i}" for i in range(40)), token_delay=0.02)
        api = DiscordAPI()
        await api.start()
        discord.http.Route.BASE = api.url
        bot = await start_bot(make_settings(Path(tmp), ollama.url))
        gateway = Gateway(bot, api)
        try:
            direct = await first_token_direct(ollama.url, rounds)
            via_bot = await first_token_bot(gateway, api, rounds)
            lags = await loop_lag(gateway, api, concurrent)
        finally:
            await bot.close()
            await api.stop()
            ollama.stop()
    p50_direct, p50_bot = statistics.median(direct), statistics.median(via_bot)
    print(f"first token, Ollama-API server directly: p50 {p50_direct * 1000:.1f} ms")
    print(f"first answer message in Discord via the bot: p50 {p50_bot * 1000:.1f} ms")
    print(f"added latency p50: {(p50_bot - p50_direct) * 1000:.1f} ms (target ≤ 5 ms)")
    lags.sort()
    print(f"event-loop lag with {concurrent} concurrent conversations: p50 {statistics.median(lags) * 1000:.1f} ms, "
          f"p99 {lags[int(len(lags) * 0.99) - 1] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms (target ≤ 50 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.concurrent))
