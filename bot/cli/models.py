"""``loraloop models …``: list a community's versions, promote one (or the base tag), roll back to the previous good
one (``--to TAG``) or, with none, to the base model."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.table import Table

from bot.chat import ACTIVE_MODEL_MAX_AGE_S
from bot.cli.common import Community, console, fail, open_ollama, open_store, print_json, settings
from data.errors import LoraloopError

if TYPE_CHECKING:
    from data.models import ModelVersion
    from data.quality import Rate
    from data.store import Store
    from deploy.ollama import OllamaClient

app = typer.Typer(help="List, promote and roll back model versions.", no_args_is_help=True)
T = TypeVar("T")

# A running bot re-reads the active model at most this often (bot/chat.py).
_RUNNING_BOT = f" (a running bot answers with it within {ACTIVE_MODEL_MAX_AGE_S:g} s)"


def _with_store_and_ollama(fn: Callable[[Store, OllamaClient], Awaitable[T]], community: str | None) -> T:

    cfg = settings()

    async def run() -> T:
        async with open_store(cfg, community) as store, open_ollama(cfg, timeout_s=30) as client:
            return await fn(store, client)

    from deploy.promotion import AlreadyActive

    try:
        return asyncio.run(run())
    except AlreadyActive:
        raise  # not a failure: the caller says there was nothing to do
    except LoraloopError as exc:
        fail(str(exc))


@app.command("list")
def list_versions(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    community: Community = None,
) -> None:
    """Every model version, newest first: tag, status, which one is active, eval scores, failure reason."""
    from data import quality
    from deploy.ollama import OllamaError

    async def run(store: Store, client: OllamaClient) -> tuple[list[ModelVersion], ModelVersion | None, set[str] | None,
                                                          dict[int | None, Rate], tuple[bool, ModelVersion | None]]:
        rows = await store.list_model_versions()
        active = await store.active_model_version()
        rates = await quality.feedback_by_version(store)
        previous = await quality.previous_version(store)
        try:
            present: set[str] | None = {m.name for m in await client.list_models()}
        except OllamaError:
            present = None  # listing still works when Ollama is down
        return rows, active, present, rates, previous

    rows, active, present, rates, (_, previous) = _with_store_and_ollama(run, community)
    active_id = active.id if active is not None else None
    base_tag = settings().ollama_base
    if as_json:
        for v in rows:
            record = {
                "tag": v.tag, "name": v.name, "version": v.version, "status": v.status, "active": v.id == active_id,
                "base_model": v.base_model, "ollama_base": v.ollama_base, "snapshot_sha256": v.snapshot_sha256,
                "metrics": v.metrics, "failure_reason": v.failure_reason, "created_at": v.created_at,
                "in_ollama": None if present is None else v.tag in present,
                # 👍/👎 on this version's answers, the 👍 rate and its 95% Wilson interval (data/quality.py)
                "feedback": rates.get(v.id, quality.Rate()).to_dict(),
            }
            if v.id == active_id:  # what the regression alarm compares it with
                before = rates.get(previous.id if previous else None, quality.Rate())
                record["previous"] = {"tag": previous.tag if previous else base_tag, "feedback": before.to_dict()}
            print_json(record)
        return
    if not rows:
        console.print("no model versions yet")
        return
    table = Table("")
    table.add_column("tag", no_wrap=True)
    for column in ("status", "ROUGE-L", "EM", "👍/👎 (95% CI of 👍)", "in Ollama", "created", "note"):
        table.add_column(column)
    for v in rows:
        scores = (v.metrics or {}).get("candidate") or {}
        table.add_row(
            "*" if v.id == active_id else "", v.tag, v.status,
            f"{scores['rouge_l']:.3f}" if "rouge_l" in scores else "",
            f"{scores['exact_match']:.3f}" if "exact_match" in scores else "",
            _feedback_cell(rates.get(v.id)),
            "?" if present is None else ("yes" if v.tag in present else "no"),
            f"{v.created_at:%Y-%m-%d %H:%M}", v.failure_reason or "",
        )
    console.print(table)
    if present is None:
        console.print("[yellow]Ollama is not reachable; 'in Ollama' is unknown[/]")


def _feedback_cell(rate: Rate | None) -> str:
    if rate is None or not rate.votes:
        return ""
    lo, hi = rate.interval
    return f"{rate.up}/{rate.down} ({lo:.0%}–{hi:.0%})"


@app.command("promote")
def promote_cmd(
    tag: str = typer.Argument(..., help="e.g. loraloop-assistant:v3, or the base tag (ollama_base) to answer with it"),
    community: Community = None,
) -> None:
    """Make an existing version the active model (the base tag: the clean base model answers again)."""
    from deploy.promotion import AlreadyActive, promote

    base = settings().ollama_base
    try:
        now = _with_store_and_ollama(lambda store, client: promote(store, client, tag, base=base), community)
    except AlreadyActive as exc:
        console.print(f"nothing to do: {exc}", highlight=False)
        return
    console.print(f"active model is now {now}{_RUNNING_BOT}", highlight=False)


@app.command("rollback")
def rollback_cmd(
    to: str | None = typer.Option(None, "--to", help="The tag to switch back to; running it again changes nothing."),
    community: Community = None,
) -> None:
    """Switch back to the previous good version (--to names it, so a repeated command cannot go two back); with no
    earlier good version, back to the base model."""
    from deploy.promotion import AlreadyActive, rollback

    try:
        now = _with_store_and_ollama(lambda store, client: rollback(store, client, to=to), community)
    except AlreadyActive as exc:
        console.print(f"nothing to do: {exc}", highlight=False)
        return
    console.print(f"rolled back: active model is now {now}{_RUNNING_BOT}", highlight=False)
