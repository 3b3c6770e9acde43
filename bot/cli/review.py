"""``loraloop review …``: the review queue from the command line, for people who run loraloop without Discord.

approve/reject are an admin's direct decision (the store's ``set_example_status``, the same as the Discord
review card's Approve/Reject buttons): they override the rating rule.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import console, err_console, fail, open_store, print_json, settings

app = typer.Typer(help="List, approve and reject the examples waiting for review.", no_args_is_help=True)

_PREVIEW = 80


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _PREVIEW else flat[:_PREVIEW - 1] + "…"


@app.command("list")
def list_(
    status: Annotated[str, typer.Option(help="pending, approved or rejected")] = "pending",
    limit: Annotated[int | None, typer.Option(help="Show at most this many.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object: the examples in full.")] = False,
) -> None:
    """The examples with a status (pending: the review queue), oldest first."""
    if status not in ("pending", "approved", "rejected"):
        fail(f"--status must be pending, approved or rejected, not {status!r}")
    config = settings()

    async def run():
        async with open_store(config) as store:
            return await store.list_examples(status=status, limit=limit)

    examples = asyncio.run(run())
    if json_out:
        print_json({"status": status, "count": len(examples), "examples": [
            {"id": e.id, "source": e.source, "messages": e.messages, "tags": e.tags, "tools": e.tools,
             "created_at": e.created_at} for e in examples]})
        return
    table = Table(title=f"{len(examples)} {status}")
    for column in ("id", "source", "question", "answer"):
        table.add_column(column)
    for e in examples:
        question = next((m["content"] for m in reversed(e.messages) if m["role"] == "user"), "")
        table.add_row(str(e.id), e.source, escape(_preview(question)), escape(_preview(e.messages[-1]["content"])))
    console.print(table)
    if status == "pending" and examples:
        console.print("approve: loraloop review approve ID… (or --all-pending); reject: loraloop review reject ID…")


def _decide(ids: list[int], all_pending: bool, status: str, json_out: bool) -> None:
    from data.store import StoreError

    if bool(ids) == all_pending:
        fail(f"name the examples to {status[:-1]} (IDs) or pass --all-pending, not both")
    config = settings()

    async def run() -> tuple[list[int], list[tuple[int, str]]]:
        async with open_store(config) as store:
            targets = ids or [e.id for e in await store.list_examples(status="pending")]
            done, refused = [], []
            for example_id in targets:
                try:
                    await store.set_example_status(example_id, status)
                except StoreError as exc:
                    refused.append((example_id, str(exc) or f"example #{example_id} does not exist"))
                else:
                    done.append(example_id)
            return done, refused

    done, refused = asyncio.run(run())
    if json_out:
        print_json({"status": status, "decided_by": "admin", "done": done,
                    "refused": [{"id": i, "reason": r} for i, r in refused]})
    else:
        console.print(f"{len(done)} examples {status} (admin decision)", highlight=False)
        for example_id, reason in refused:
            err_console.print(f"  #{example_id}: {escape(reason)}", highlight=False)
    if refused:
        raise SystemExit(1)


@app.command()
def approve(
    ids: Annotated[list[int] | None, typer.Argument(help="Example ids (see `loraloop review list`).")] = None,
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every example waiting for review.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Approve examples (an admin decision: it overrides the experts' ratings)."""
    _decide(ids or [], all_pending, "approved", json_out)


@app.command()
def reject(
    ids: Annotated[list[int] | None, typer.Argument(help="Example ids (see `loraloop review list`).")] = None,
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every example waiting for review.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Reject examples (an admin decision: it overrides the experts' ratings)."""
    _decide(ids or [], all_pending, "rejected", json_out)
