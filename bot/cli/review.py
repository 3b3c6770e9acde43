"""``loraloop review …``: the review queue from the command line, for people who run loraloop without Discord.

approve/reject are an admin's direct decision (the store's ``set_example_status``, the same as the Discord
review card's Approve/Reject buttons): they override the rating rule. rate is one expert's 1–5 rating (the store's
``rate``, the same as the review card's stars): the rating quorum decides, as in Discord.
"""

from __future__ import annotations

import asyncio
import math
import string
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import Community, console, err_console, fail, open_store, plural, print_json, settings

if TYPE_CHECKING:
    from data.models import Example, Rating
    from data.store import RatingOutcome

app = typer.Typer(help="List, approve and reject the examples waiting for review.", no_args_is_help=True)

_PREVIEW = 80
_NAME_CHARS = string.ascii_lowercase + string.digits + "-"
_NAME_MAX = 12  # the longest name whose number fits a BIGINT (bijective base 37)


def rater_id(rater: str) -> int:
    """The ratings' rater id for ``--rater``: digits are a Discord user id (the same person as on Discord);
    a name (a-z, 0-9, -; up to 12) becomes a negative id, which no Discord id is, and ``rater_name`` reads back."""
    if rater.isdigit():
        return int(rater)
    name = rater.lower()
    if not 1 <= len(name) <= _NAME_MAX or any(c not in _NAME_CHARS for c in name):
        raise ValueError(f"--rater is a Discord user id or a name of 1–{_NAME_MAX} letters, digits or -, "
                         f"not {rater!r}")
    number = 0
    for c in name:
        number = number * len(_NAME_CHARS) + _NAME_CHARS.index(c) + 1
    return -number


def rater_name(rater: int) -> str:
    """Who a rating's rater id is: the name ``rater_id`` encoded, or the Discord user id."""
    if rater >= 0:
        return str(rater)
    number, chars = -rater, []
    while number:
        number, digit = divmod(number - 1, len(_NAME_CHARS))
        chars.append(_NAME_CHARS[digit])
    return "".join(reversed(chars))


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _PREVIEW else flat[:_PREVIEW - 1] + "…"


@app.command("list")
def list_(
    status: Annotated[str, typer.Option(help="pending, approved or rejected")] = "pending",
    page: Annotated[int, typer.Option(min=1, help="Which page (1: the oldest).")] = 1,
    per_page: Annotated[int, typer.Option(min=1, help="Examples per page.")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object: the page's examples in full.")] = False,
    community: Community = None,
) -> None:
    """The examples with a status (pending: the review queue), oldest first, a page at a time."""
    if status not in ("pending", "approved", "rejected"):
        fail(f"--status must be pending, approved or rejected, not {status!r}")
    config = settings()

    async def run() -> list[Example]:
        async with open_store(config, community) as store:
            return await store.list_examples(status=status)

    everything = asyncio.run(run())
    pages = max(1, math.ceil(len(everything) / per_page))
    if page > pages:
        fail(f"there is no page {page}: {len(everything)} {status} at {per_page} per page make "
             f"{plural(pages, 'page')}")
    examples = everything[(page - 1) * per_page:page * per_page]
    if json_out:
        print_json({"status": status, "count": len(everything), "page": page, "pages": pages, "examples": [
            {"id": e.id, "source": e.source, "messages": e.messages, "tags": e.tags, "tools": e.tools,
             "created_at": e.created_at} for e in examples]})
        return
    table = Table(title=f"{len(everything)} {status}")
    for column in ("id", "source", "question", "answer"):
        table.add_column(column)
    for e in examples:
        question = next((m["content"] for m in reversed(e.messages) if m["role"] == "user"), "")
        table.add_row(str(e.id), e.source, escape(_preview(question)), escape(_preview(e.messages[-1]["content"])))
    console.print(table)
    if pages > 1:
        console.print(f"page {page} of {pages} (--page K, --per-page N)", highlight=False)
    if status == "pending" and examples:
        console.print("approve: loraloop review approve ID… (or --all-pending); reject: loraloop review reject ID…")


def _decide(ids: list[int], all_pending: bool, status: str, json_out: bool, community: str | None,
            allow_placeholders: bool = False) -> None:
    from data.errors import StoreError

    if bool(ids) == all_pending:
        fail(f"name the examples to {status[:-1]} (IDs) or pass --all-pending, not both")
    config = settings()

    async def run() -> tuple[list[int], list[tuple[int, str]]]:
        async with open_store(config, community) as store:
            targets = ids or [e.id for e in await store.list_examples(status="pending")]
            done, refused = [], []
            for example_id in targets:
                try:
                    await store.set_example_status(example_id, status, allow_placeholders=allow_placeholders)
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
        console.print(f"{plural(len(done), 'example')} {status} (admin decision)", highlight=False)
        for example_id, reason in refused:
            err_console.print(f"  #{example_id}: {escape(reason)}", highlight=False)
    if refused:
        raise SystemExit(1)


@app.command()
def approve(
    ids: Annotated[list[int] | None, typer.Argument(help="Example ids (see `loraloop review list`).")] = None,
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every example waiting for review.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    community: Community = None,
    allow_placeholders: Annotated[bool, typer.Option(
        "--allow-placeholders", help="Approve examples that still hold template placeholders ({{name}}) as "
                                     "written (they train as they are).")] = False,
) -> None:
    """Approve examples (an admin decision: it overrides the experts' ratings)."""
    _decide(ids or [], all_pending, "approved", json_out, community, allow_placeholders)


@app.command()
def reject(
    ids: Annotated[list[int] | None, typer.Argument(help="Example ids (see `loraloop review list`).")] = None,
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every example waiting for review.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    community: Community = None,
) -> None:
    """Reject examples (an admin decision: it overrides the experts' ratings)."""
    _decide(ids or [], all_pending, "rejected", json_out, community)


@app.command()
def show(
    example_id: Annotated[int, typer.Argument(metavar="ID", help="The example (see `loraloop review list`).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    community: Community = None,
) -> None:
    """One example in full: its messages, status, ratings, tags and source."""
    from data.errors import StoreError

    config = settings()

    async def run() -> tuple[Example, list[Rating]]:
        async with open_store(config, community) as store:
            try:
                return await store.get_example(example_id), await store.ratings_for(example_id)
            except StoreError as exc:
                fail(str(exc))

    example, ratings = asyncio.run(run())
    rated = [{"rater": rater_name(r.rater_id), "score": r.score, "comment": r.comment} for r in ratings]
    if json_out:
        print_json({"id": example.id, "status": example.status, "source": example.source, "tags": example.tags,
                    "messages": example.messages, "tools": example.tools, "created_at": example.created_at,
                    "superseded_by": example.superseded_by, "ratings": rated})
        return
    line = f"#{example.id}  {example.status}  source {example.source}  created {example.created_at:%Y-%m-%d %H:%M}"
    console.print(escape(line), highlight=False)
    if example.superseded_by is not None:
        console.print(f"superseded by #{example.superseded_by}", highlight=False)
    console.print(f"tags: {escape(', '.join(map(str, example.tags))) or '(none)'}", highlight=False)
    for message in example.messages:
        console.print(f"\n[bold]{escape(message['role'])}:[/]", highlight=False)
        console.print(escape(str(message.get("content", ""))), highlight=False)
    if example.tools:
        console.print(f"\n[bold]tools:[/] {escape(example.tools)}", highlight=False)
    console.print(f"\n{plural(len(rated), 'rating')}", highlight=False)
    for r in rated:
        comment = f": {r['comment']}" if r["comment"] else ""
        console.print(escape(f"  {r['score']} by {r['rater']}{comment}"), highlight=False)


@app.command()
def rate(
    example_id: Annotated[int, typer.Argument(metavar="ID", help="The example (see `loraloop review list`).")],
    score: Annotated[int, typer.Argument(metavar="N", help="1 (bad) to 5 (excellent).")],
    rater: Annotated[str, typer.Option(
        help="Who rates: a name (alice) or your Discord user id; rating again changes your rating.")],
    comment: Annotated[str | None, typer.Option(help="Why, for the other reviewers.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    community: Community = None,
) -> None:
    """Rate an example as an expert; once enough experts rated it, the mean approves or rejects it."""
    from data.errors import StoreError

    try:
        rater_number = rater_id(rater)
    except ValueError as exc:
        fail(str(exc))
    config = settings()

    async def run() -> RatingOutcome:
        async with open_store(config, community) as store:
            try:
                return await store.rate(example_id, rater_number, score, comment)
            except StoreError as exc:
                fail(str(exc))

    outcome = asyncio.run(run())
    who = rater_name(rater_number)
    if json_out:
        print_json({"example": example_id, "rater": who, "score": score, "changed": outcome.changed,
                    "scores": outcome.scores, "mean": outcome.mean, "decided": outcome.decided,
                    "status": outcome.example.status})
        return
    verb = "changed to" if outcome.changed else "rated"
    if outcome.decided:
        decision = f"{outcome.decided} by the ratings"
    elif outcome.example.status != "pending":  # an admin's decision stands
        decision = f"stays {outcome.example.status}"
    elif len(outcome.scores) < config.review.rating_quorum:
        decision = f"pending until {plural(config.review.rating_quorum, 'rating')}"
    else:
        decision = (f"pending: a mean above {config.review.reject_mean} and below {config.review.approve_mean} "
                    "waits for more ratings")
    console.print(escape(f"#{example_id} {verb} {score} by {who}: {plural(len(outcome.scores), 'rating')}, "
                         f"mean {outcome.mean:.1f}; {decision}"), highlight=False)
