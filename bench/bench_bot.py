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
from collections.abc import Callable
from pathlib import Path

import discord

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.ollama import OllamaClient
from tests.harness.bot import BASE_TAG, make_settings, start_bot
from tests.harness.discord import BOT_ID, DiscordAPI, Gateway, message_payload, user_payload
from tests.harness.ollama_server import OllamaTestServer
from tests.harness.polling import wait_until

BOT = user_payload(BOT_ID, "loraloop", bot=True)


ROUND_GAP_S = 0.3  # between rounds, on both paths: answers overlap alike (each streams for about 0.8 s)


async def first_token_direct(url: str, rounds: int) -> list[float]:
    times = []
    async with OllamaClient(url) as client:
        readers = []
        for _ in range(rounds):
            first: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            readers.append(asyncio.create_task(read_answer(client, first)))
            times.append(await first)
            await asyncio.sleep(ROUND_GAP_S)
        await asyncio.gather(*readers)
    return times


async def read_answer(client: OllamaClient, first: asyncio.Future[float]) -> None:
    """Time the first piece, then read the answer to its end, as the bot does: a client hanging up mid-stream
    makes the test server log a traceback for each answer cut off."""
    start = time.perf_counter()
    async for _piece in client.chat_stream(BASE_TAG, [{"role": "user", "content": "hi"}]):
        if not first.done():
            first.set_result(time.perf_counter() - start)


def finished_answers(api: DiscordAPI) -> int:
    """Answers rendered to the end (the final edit carries the feedback buttons)."""
    return len([c for c in api.find("PATCH") if c.json and c.json.get("components")])


async def until_finished(api: DiscordAPI, count: int) -> bool:
    """Wait (60 s at most) until ``count`` answers have finished; False if they did not."""
    try:
        await wait_until(lambda: finished_answers(api) >= count, 60, "the answers to finish", interval=0.05)
    except AssertionError:
        return False
    return True


async def first_token_bot(gateway: Gateway, api: DiscordAPI, rounds: int,
                          question: Callable[[int], str] = "question {}".format) -> list[float]:
    times = []
    done_before = finished_answers(api)
    for i in range(rounds):
        seen = len(api.sent_messages())
        start = time.perf_counter()
        await gateway.message(message_payload(f"<@{BOT_ID}> {question(i)}", author=user_payload(1000 + i),
                                              mentions=[BOT]))
        await wait_until(lambda seen=seen: len(api.sent_messages()) > seen, 60, "the bot's first message",
                         interval=0.0005)
        times.append(time.perf_counter() - start)
        await asyncio.sleep(ROUND_GAP_S)
    await until_finished(api, done_before + rounds)  # no answer still streaming into the next measurement
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
    before = finished_answers(api)
    for i in range(concurrent):
        gateway.client._connection.parse_message_create(message_payload(
            f"<@{BOT_ID}> talk {i}", author=user_payload(5000 + i), mentions=[BOT]))
    if not await until_finished(api, before + concurrent):
        print(f"(only {finished_answers(api) - before} of {concurrent} answers finished within 60 s)")
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
