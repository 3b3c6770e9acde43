"""``loraloop dataset …`` and ``loraloop snapshot …``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import Community, console, fail, open_store, plural, print_json, settings

if TYPE_CHECKING:
    from data.importer import ImportReport
    from data.snapshot import WrittenSnapshot
    from data.store import DatasetStats

app = typer.Typer(help="Import, export and inspect the teaching dataset.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Freeze the approved examples into an immutable training snapshot.",
                           no_args_is_help=True)

FORMAT_HELP = "auto, alpaca, sharegpt, openai, lf-v1 or csv"


@app.command("import")
def import_(
    path: Annotated[Path | None, typer.Argument(help="A .json, .jsonl or .csv file (or use --dataset-info).")] = None,
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
    approve: Annotated[bool, typer.Option(help="Admin bulk import: examples count as approved.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid records even if some are invalid.")] = False,
    columns: Annotated[str | None, typer.Option(
        "--columns", help="Which column/key is what: question=COL,answer=COL[,system=COL,reasoning=COL].")] = None,
    dataset_info: Annotated[Path | None, typer.Option(
        "--dataset-info", help="A LLaMA-Factory dataset_info.json; import its entry --name.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="The dataset_info.json entry to import.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Fill a template placeholder: --set name=Ada fills {{name}} (repeatable).")] = None,
    allow_placeholders: Annotated[bool, typer.Option(
        help="Approve records that still hold {{placeholders}} as written.")] = False,
    holdout: Annotated[bool, typer.Option(
        help="Held-out eval questions (e.g. rewordings of taught questions): tagged holdout, the gate judges "
             "every retrain on them, they never train and are never retrieved.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    community: Community = None,
) -> None:
    """Import examples (pending review unless --approve); all or nothing.

    Every refusal is one line on stderr and exit status 1. Text from the file is printed escaped: it is not markup.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from data import formats
    from data.errors import StoreError
    from data.importer import import_file

    column_map = None
    try:
        if dataset_info is not None:
            if name is None:
                fail("--dataset-info needs --name (the dataset's entry in the file)")
            if path is not None or columns is not None:
                fail("--dataset-info names the file and its columns: drop the PATH argument and --columns")
            entry = formats.dataset_entry(dataset_info, name)
            if entry.ranking:
                raise formats.PreferenceData(f"dataset {name!r} is ranking (preference) data, not question/answer "
                                             f"pairs: import it with `loraloop preferences import {entry.path}`")
            path, column_map = entry.path, entry.columns
            format = entry.columns.formatting or format
        elif columns is not None:
            column_map = formats.parse_columns(columns)
    except formats.ColumnError as exc:
        fail(str(exc))
    except formats.FormatError as exc:
        fail(f"{name}: {exc}")
    if path is None:
        fail("name the file to import (or --dataset-info PATH --name NAME)")
    values = _set_values(set_ or [])
    if not path.is_file():
        fail(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    if format != "auto" and format not in formats.FORMATS:
        fail(f"unknown format {format!r} (expected {FORMAT_HELP})")
    config = settings()

    async def run() -> ImportReport:
        async with open_store(config, community) as store:
            return await import_file(store, path, format=format, approve=approve, skip_invalid=skip_invalid,
                                     max_chars=config.max_stored_chars, columns=column_map, set_values=values,
                                     allow_placeholders=allow_placeholders, tags=("holdout",) if holdout else ())

    shown = str(path)
    try:
        report = asyncio.run(run())
    except formats.FormatError as exc:
        entries = _dataset_info_entries(path)
        if entries:
            listed = ", ".join(entries[:20]) + (f", … ({len(entries)} in all)" if len(entries) > 20 else "")
            fail(f"{shown} is LLaMA-Factory's dataset_info.json, not a dataset: import one of its entries with "
                 f"--dataset-info {shown} --name NAME (entries: {listed})")
        fail(f"{shown}: {exc}")
    except OSError as exc:  # unreadable (permissions), or gone since the check above
        fail(f"{shown}: cannot read the file: {exc.strerror or str(exc)}")
    except StoreError as exc:  # the store refused the import as a whole; it wrote nothing
        fail(f"{shown}: nothing imported: {exc}")
    except SQLAlchemyError as exc:
        fail(f"{shown}: nothing imported: the database failed ({str(exc).splitlines()[0][:300]})")
    # --skip-invalid that leaves nothing imported is a failure, not a quiet success.
    nothing = skip_invalid and bool(report.errors) and report.imported == 0
    if json_out:
        print_json({"file": str(path), **report.to_dict()})
    else:
        _print_report(escape(shown), report)
    if nothing and report.committed:
        fail(f"{shown}: imported 0 of {plural(report.records, 'record')} (the valid ones are all duplicates)")
    if nothing:
        fail(f"{shown}: imported 0 of {plural(report.records, 'record')}: none is valid")
    if not report.committed:
        raise SystemExit(1)


_DATASET_INFO_KEYS = {"file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"}


def _dataset_info_entries(path: Path) -> list[str]:
    """The entry names when ``path`` is a LLaMA-Factory dataset_info.json (an object of dataset entries), else [].

    Read only after the file failed to import as a dataset, so a good import never pays for it.
    """
    import json

    try:
        if path.stat().st_size > 16 << 20:  # a dataset_info.json is a few KB
            return []
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return []
    if not isinstance(info, dict) or not info or not all(isinstance(v, dict) for v in info.values()):
        return []
    return list(info) if any(_DATASET_INFO_KEYS & set(v) for v in info.values()) else []


def _set_values(pairs: list[str]) -> dict[str, str]:
    from data.placeholders import parse_set_values

    try:
        return parse_set_values(pairs)
    except ValueError as exc:
        fail(str(exc))


def _print_report(name: str, report: ImportReport) -> None:
    status = "imported" if report.committed else "[bold red]nothing imported[/]"
    kind = f", {report.kind}" if report.kind != "sft" else ""
    console.print(f"{name} ({report.format}{kind}, {plural(report.records, 'record')}): {status}", highlight=False,
                  soft_wrap=True)
    console.print(f"  imported: {report.imported}  duplicates: {len(report.duplicates)}  "
                  f"rejected: {len(report.errors)}")
    if report.in_flight:
        console.print(f"  [yellow]not imported:[/] {plural(len(report.in_flight), 'record')} another import, "
                      "still running, is writing now: import the file again once it is done",
                      highlight=False, soft_wrap=True)
    for error in report.errors[:50]:
        console.print(f"  [red]{escape(error.location)}[/]: {escape(error.message)}", highlight=False, soft_wrap=True)
    if len(report.errors) > 50:
        console.print(f"  … and {len(report.errors) - 50} more (use --json for all)")
    if report.errors and not report.committed:
        console.print("Fix the records above, or pass --skip-invalid to import the valid ones.")
    if not report.committed:
        return
    if report.kind == "kto":
        console.print(f"  KTO labels: {plural(report.rejected, 'undesirable answer')} (label false) stored as "
                      "rejected, for preference use; never trained on", highlight=False, soft_wrap=True)
    if report.placeholders:
        names = ", ".join("{{" + n + "}}" for n in report.placeholders)
        fill = " ".join(f"--set {n}=VALUE" for n in report.placeholders)
        console.print(f"  [yellow]warning:[/] {plural(report.with_placeholders, 'record')} "
                      f"{'holds' if report.with_placeholders == 1 else 'hold'} template placeholders "
                      f"({escape(names)}); import again with {fill} to fill them", highlight=False, soft_wrap=True)
    if report.replaced:
        copies = "copy" if report.replaced == 1 else "copies"
        console.print(f"  {report.replaced} pending {copies} with unfilled placeholders replaced by the filled "
                      "records", highlight=False, soft_wrap=True)
    if report.waiting:
        waits, them = ("waits", "it") if report.waiting == 1 else ("wait", "them")
        console.print(f"  {plural(report.waiting, 'pair')} now {waits} for review: approve {them} with "
                      "`loraloop review approve --all-pending` (or review them in Discord)",
                      highlight=False, soft_wrap=True)


@app.command()
def export(
    format: Annotated[str, typer.Option("--format", help="openai, alpaca, sharegpt, lf-v1 or csv")],
    out: Annotated[Path, typer.Option("--out", help="Output file (.json, .jsonl or .csv).")],
    split: Annotated[str, typer.Option(help="train, eval or all (the snapshot's hash-stable split)")] = "all",
    community: Community = None,
) -> None:
    """Export the approved examples (streamed from the database; a refused conversation leaves no file)."""
    from data import formats

    if split not in ("train", "eval", "all"):
        fail(f"--split must be train, eval or all, not {split!r}")
    if format not in formats.FORMATS:
        fail(f"unknown format {format!r} (expected one of {', '.join(formats.FORMATS)})")
    config = settings()

    async def run() -> int:
        async with open_store(config, community) as store:
            return await store.export_approved(out, format, split=split, eval_fraction=config.eval_fraction)

    try:
        count = asyncio.run(run())
    except ValueError as exc:
        fail(str(exc))  # fail() prints text, not markup
    except OSError as exc:
        fail(f"{out}: cannot write the file: {exc.strerror or exc}")
    console.print(f"wrote {plural(count, 'example')} to {escape(str(out))} ({format}, split {split})", highlight=False)


@app.command()
def stats(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    community: Community = None,
) -> None:
    """Counts by status and source, rater agreement, new approved examples since the active model."""
    config = settings()

    async def run() -> DatasetStats:
        async with open_store(config, community) as store:
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
    console.print(f"ratings: {result.ratings} on {plural(result.rated_examples, 'example')}; agreement {agreement}; "
                  f"new approved since the active model: {result.new_approved_since_active}")
    from data.preferences import preference_summary

    console.print(f"preference pairs: {preference_summary(result.preferences)}", highlight=False)


@snapshot_app.command("create")
def snapshot_create(
    out: Annotated[Path, typer.Option("--out", help="A new (or empty) directory.")],
    allow_empty: Annotated[bool, typer.Option(help="Write a snapshot even with no approved example.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    community: Community = None,
) -> None:
    """Freeze the approved examples (examples.jsonl + manifest.json, hash-stable train/eval split)."""
    from data.snapshot import SnapshotError

    config = settings()

    async def run() -> WrittenSnapshot | None:
        async with open_store(config, community) as store:
            if not allow_empty and not (await store.dataset_stats()).by_status.get("approved"):
                return None
            return await store.create_snapshot(out, config.eval_fraction)

    try:
        written = asyncio.run(run())
    except SnapshotError as exc:
        fail(str(exc))
    if written is None:
        fail("no approved examples to snapshot: approve some first (`loraloop review list`, `loraloop review "
             "approve`, or `dataset import --approve`), or pass --allow-empty")
    if json_out:
        print_json(written.to_dict())
    else:
        c = written.counts
        console.print(f"snapshot {written.sha256[:12]} in {out}: {plural(c.total, 'example')} "
                      f"({c.train} train, {c.eval} eval)")
