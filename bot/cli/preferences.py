"""``loraloop preferences …``: preference records (chosen vs rejected answers) for the DPO stage.

Import and export LLaMA-Factory ranking files (alpaca, sharegpt, or v1's chosen_messages/rejected_messages) and
TRL's prompt/chosen/rejected shape; list, approve and reject records (an admin's decision on the command line —
experts' ratings decide them otherwise); count them. Every refusal is one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import Community, console, fail, open_store, print_json, settings

if TYPE_CHECKING:
    from data.models import PreferenceRecord
    from data.preferences import PreferenceImport

app = typer.Typer(help="Preference records (a chosen and a rejected answer) for the DPO stage.",
                  no_args_is_help=True)

FORMAT_HELP = "auto, alpaca, sharegpt, openai (TRL's prompt/chosen/rejected) or lf-v1 (LLaMA-Factory v1)"


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A .json or .jsonl preference file.")],
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
    approve: Annotated[bool, typer.Option(help="Admin bulk import: the records count as approved.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid records even if some are invalid.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    community: Community = None,
) -> None:
    """Import preference records (pending review unless --approve); all or nothing."""
    from data import formats
    from data.errors import StoreError
    from data.formats import preference as preference_format
    from data.preferences import import_preferences

    if not path.is_file():
        fail(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    config = settings()
    try:
        parsed = preference_format.read_file(path, format, config.max_stored_chars)
    except formats.FormatError as exc:
        fail(f"{path}: {exc}")
    except OSError as exc:
        fail(f"{path}: cannot read the file: {exc.strerror or exc}")
    if parsed.errors and not skip_invalid:
        first = parsed.errors[0]
        fail(f"{path}: {len(parsed.errors)} of {len(parsed.records) + len(parsed.errors)} records are invalid "
             f"(first, {first.location}: {first.message}); fix them or pass --skip-invalid; nothing imported")
    if not parsed.records:
        fail(f"{path}: no valid preference record to import")

    async def run() -> PreferenceImport:
        async with open_store(config, community) as store:
            return await import_preferences(store, [p for _, p in parsed.records], approve=approve)

    try:
        outcome = asyncio.run(run())
    except StoreError as exc:
        fail(f"{path}: nothing imported: {exc}")
    report = {"file": str(path), "format": parsed.format, "records": len(parsed.records) + len(parsed.errors),
              "imported": outcome.imported, "duplicates": len(outcome.duplicates),
              "in_flight": len(outcome.in_flight),
              "invalid": [{"location": e.location, "message": e.message} for e in parsed.errors],
              "status": "approved" if approve else "pending"}
    if json_out:
        print_json(report)
        return
    console.print(f"{escape(str(path))} ({parsed.format} preferences): imported {outcome.imported}, duplicates "
                  f"{len(outcome.duplicates)}, invalid {len(parsed.errors)}; {report['status']}", highlight=False)
    if outcome.in_flight:
        console.print(f"  not imported: {len(outcome.in_flight)} records another import, still running, is writing "
                      "now: import the file again once it is done", highlight=False)
    if not approve and outcome.imported:
        console.print("  they wait for review: `loraloop preferences list --status pending`, then "
                      "`loraloop preferences approve ID… | --all-pending`", highlight=False)


@app.command()
def export(
    format: Annotated[str, typer.Option("--format", help="alpaca, sharegpt, openai or lf-v1")],
    out: Annotated[Path, typer.Option("--out", help="Output file (.json or .jsonl).")],
    split: Annotated[str, typer.Option(help="train, eval or all (the snapshot's hash-stable split)")] = "all",
    community: Community = None,
) -> None:
    """Export the approved preference records (sorted by hash; a record the format cannot hold leaves no file)."""
    from data.preferences import export_preferences

    config = settings()

    async def run() -> int:
        async with open_store(config, community) as store:
            return await export_preferences(store, out, format, split=split, eval_fraction=config.eval_fraction)

    try:
        count = asyncio.run(run())
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{out}: cannot write the file: {exc.strerror or exc}")
    console.print(f"wrote {count} preference records to {escape(str(out))} ({format}, split {split})",
                  highlight=False)


@app.command()
def stats(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    community: Community = None,
) -> None:
    """Preference records by status and source."""
    from data.preferences import preference_stats

    config = settings()

    async def run() -> dict[str, Any]:
        async with open_store(config, community) as store:
            return await preference_stats(store)

    result = asyncio.run(run())
    if json_out:
        print_json(result)
        return
    table = Table(title="preference records")
    table.add_column("")
    table.add_column("count", justify="right")
    for status, n in result["by_status"].items():
        table.add_row(status, str(n))
    for source, n in result["by_source"].items():
        table.add_row(f"source: {source}", str(n))
    console.print(table)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="pending, approved or rejected")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per record.")] = False,
    community: Community = None,
) -> None:
    """List preference records (oldest first)."""
    from data.preferences import list_preferences

    config = settings()

    async def run() -> list[PreferenceRecord]:
        async with open_store(config, community) as store:
            return await list_preferences(store, status=status, limit=limit)

    rows = asyncio.run(run())
    for row in rows:
        question = next((m["content"] for m in reversed(row.prompt) if m["role"] == "user"), "")
        if json_out:
            print_json({"id": row.id, "status": row.status, "source": row.source, "question": question,
                        "chosen": row.chosen["content"], "rejected": row.rejected["content"],
                        "rejected_model": row.rejected_model})
        else:
            console.print(f"#{row.id} [{row.status}, {row.source}] {escape(question[:80])!s}\n"
                          f"  chosen:   {escape(row.chosen['content'][:100])}\n"
                          f"  rejected: {escape(row.rejected['content'][:100])}", highlight=False)


def _decide(ids: list[int], all_pending: bool, status: str, community: str | None) -> None:
    from data.errors import StoreError
    from data.preferences import list_preferences, set_preference_status

    if bool(ids) == all_pending:
        fail("name the records (IDs) or pass --all-pending, not both")
    config = settings()

    async def run() -> int:
        async with open_store(config, community) as store:
            targets = ids or [r.id for r in await list_preferences(store, status="pending")]
            for preference_id in targets:
                await set_preference_status(store, preference_id, status)
            return len(targets)

    try:
        count = asyncio.run(run())
    except StoreError as exc:
        fail(str(exc))
    console.print(f"{status} {count} preference records", highlight=False)


@app.command()
def approve(
    ids: Annotated[list[int] | None, typer.Argument(help="Record ids.")] = None,
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every pending record.")] = False,
    community: Community = None,
) -> None:
    """An admin's approval: the records are trained on by the next retrain with dpo enabled."""
    _decide(ids or [], all_pending, "approved", community)


@app.command()
def reject(
    ids: Annotated[list[int] | None, typer.Argument(help="Record ids.")] = None,
    all_pending: Annotated[bool, typer.Option("--all-pending", help="Every pending record.")] = False,
    community: Community = None,
) -> None:
    """An admin's rejection: the records are never trained on."""
    _decide(ids or [], all_pending, "rejected", community)
