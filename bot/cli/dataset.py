"""``loraloop dataset …`` and ``loraloop snapshot …``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import console, fail, open_store, print_json, settings

app = typer.Typer(help="Import, export and inspect the teaching dataset.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Freeze the approved examples into an immutable training snapshot.",
                           no_args_is_help=True)

FORMAT_HELP = "auto, alpaca, sharegpt, openai, lf-v1 or csv"


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A .json, .jsonl or .csv file.")],
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
    approve: Annotated[bool, typer.Option(help="Admin bulk import: examples count as approved.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid records even if some are invalid.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Import examples (pending review unless --approve); all or nothing.

    Every refusal is one line on stderr and exit status 1. Text from the file is printed escaped: it is not markup.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from data import formats
    from data.importer import import_file
    from data.store import StoreError

    if not path.is_file():
        fail(f"{escape(str(path))}: {'not a file' if path.exists() else 'no such file'}")
    if format != "auto" and format not in formats.FORMATS:
        fail(f"unknown format {escape(repr(format))} (expected {FORMAT_HELP})")
    config = settings()

    async def run():
        async with open_store(config) as store:
            return await import_file(store, path, format=format, approve=approve, skip_invalid=skip_invalid,
                                     max_chars=config.max_field_chars)

    name = escape(str(path))
    try:
        report = asyncio.run(run())
    except formats.FormatError as exc:
        fail(f"{name}: {escape(str(exc))}")
    except OSError as exc:  # unreadable (permissions), or gone since the check above
        fail(f"{name}: cannot read the file: {escape(exc.strerror or str(exc))}")
    except StoreError as exc:  # the store refused the import as a whole; it wrote nothing
        fail(f"{name}: nothing imported: {escape(str(exc))}")
    except SQLAlchemyError as exc:
        fail(f"{name}: nothing imported: the database failed ({escape(str(exc).splitlines()[0][:300])})")
    if json_out:
        print_json({"file": str(path), **report.to_dict()})
    else:
        status = "imported" if report.committed else "[bold red]nothing imported[/]"
        console.print(f"{name} ({report.format}, {report.records} records): {status}", highlight=False)
        console.print(f"  imported: {report.imported}  duplicates: {len(report.duplicates)}  "
                      f"rejected: {len(report.errors)}")
        for error in report.errors[:50]:
            console.print(f"  [red]{error.location}[/]: {escape(error.message)}", highlight=False)
        if len(report.errors) > 50:
            console.print(f"  … and {len(report.errors) - 50} more (use --json for all)")
        if report.errors and not report.committed:
            console.print("Fix the records above, or pass --skip-invalid to import the valid ones.")
    if not report.committed:
        raise SystemExit(1)


@app.command()
def export(
    format: Annotated[str, typer.Option("--format", help="openai, alpaca, sharegpt, lf-v1 or csv")],
    out: Annotated[Path, typer.Option("--out", help="Output file (.json, .jsonl or .csv).")],
    split: Annotated[str, typer.Option(help="train, eval or all (the snapshot's hash-stable split)")] = "all",
) -> None:
    """Export the approved examples."""
    from data import formats
    from data.conversation import Conversation
    from data.snapshot import is_eval

    if split not in ("train", "eval", "all"):
        fail(f"--split must be train, eval or all, not {split!r}")
    if format not in formats.FORMATS:
        fail(f"unknown format {format!r} (expected one of {', '.join(formats.FORMATS)})")
    config = settings()

    async def run():
        async with open_store(config) as store:
            return await store.approved_examples()

    examples = asyncio.run(run())
    if split != "all":
        examples = [e for e in examples if is_eval(e.content_hash, config.eval_fraction) == (split == "eval")]
    conversations = [Conversation.from_dicts(e.messages, e.tags, e.tools) for e in examples]
    try:
        count = formats.write_file(conversations, out, format)
    except ValueError as exc:
        fail(escape(str(exc)))
    console.print(f"wrote {count} examples to {out} ({format}, split {split})")


@app.command()
def stats(json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """Counts by status and source, rater agreement, new approved examples since the active model."""
    config = settings()

    async def run():
        async with open_store(config) as store:
            return await store.dataset_stats()

    result = asyncio.run(run())
    if json_out:
        print_json(result.to_dict())
        return
    table = Table(title="dataset")
    table.add_column("")
    table.add_column("count", justify="right")
    for status, n in result.by_status.items():
        table.add_row(status, str(n))
    for source, n in result.by_source.items():
        table.add_row(f"source: {source}", str(n))
    console.print(table)
    agreement = "n/a" if result.agreement is None else f"{result.agreement:.0%}"
    console.print(f"ratings: {result.ratings} on {result.rated_examples} examples; agreement {agreement}; "
                  f"new approved since the active model: {result.new_approved_since_active}")


@snapshot_app.command("create")
def snapshot_create(
    out: Annotated[Path, typer.Option("--out", help="A new (or empty) directory.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Freeze the approved examples (examples.jsonl + manifest.json, hash-stable train/eval split)."""
    from data.snapshot import SnapshotError

    config = settings()

    async def run():
        async with open_store(config) as store:
            return await store.create_snapshot(out, config.eval_fraction)

    try:
        manifest = asyncio.run(run())
    except SnapshotError as exc:
        fail(str(exc))
    if json_out:
        print_json(manifest)
    else:
        c = manifest["counts"]
        console.print(f"snapshot {manifest['sha256'][:12]} in {out}: {c['total']} examples "
                      f"({c['train']} train, {c['eval']} eval)")
