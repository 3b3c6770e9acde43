"""Waiting for something that happens elsewhere: in the bot's handler tasks, another server, a worker process."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_until(predicate: Callable[[], Any | Awaitable[Any]], limit: float = 10.0, what: str | None = None,
                     interval: float = 0.02) -> Any:
    """Poll ``predicate`` (a function, or a coroutine function) until it returns something true; return that.

    Raises AssertionError after ``limit`` seconds, naming ``what`` (or where the predicate was written)."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:g} s waiting for {what or _where(predicate)}")
        await asyncio.sleep(interval)


def _where(predicate: Callable[..., Any]) -> str:
    code = getattr(predicate, "__code__", None)
    return f"the condition at {code.co_filename}:{code.co_firstlineno}" if code else repr(predicate)
