"""Bulk import: a file in any supported format → validated conversations → the store, all or nothing
(written in batches that stay hidden until the last one is in).

What the file holds is checked first (data.formats.kinds): preference and multimodal files are refused whole; a KTO
file's desirable answers are imported as pairs and its undesirable ones (label false) as *rejected* examples, kept
for preference use and never trained on. Template placeholders ({{name}}, LLaMA-Factory's identity data) are
filled with ``set_values``; left unfilled, they may enter review but are never approved in bulk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from data import formats
from data.placeholders import fill_placeholders, placeholders_in
from data.store import Store


class PlaceholdersLeft(formats.FormatError):
    """--approve on records that still hold template placeholders; the message says how to fill them."""


@dataclass(frozen=True)
class ImportReport:
    format: str
    records: int
    imported: int
    duplicates: list[str] = field(default_factory=list)  # locations of records already known
    errors: list[formats.RecordError] = field(default_factory=list)
    # False when per-record errors stopped the import: then nothing was written.
    committed: bool = True
    kind: str = "sft"
    # KTO files: undesirable answers stored as rejected (counted in ``imported`` too).
    rejected: int = 0
    # Placeholder names left unfilled in the imported records, and how many records hold one.
    placeholders: list[str] = field(default_factory=list)
    with_placeholders: int = 0
    approved: bool = False
    # Locations of records another import still being written holds: not imported, not duplicates (yet).
    in_flight: list[str] = field(default_factory=list)
    # Pending placeholder copies an earlier import left, superseded by this import's filled records (--set).
    replaced: int = 0

    @property
    def waiting(self) -> int:
        """Pairs this import left waiting for review."""
        return 0 if self.approved else self.imported - self.rejected

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors"] = [{"location": e.location, "message": e.message} for e in self.errors]
        out["waiting_for_review"] = self.waiting
        return out


async def import_bytes(
    store: Store,
    data: bytes,
    filename: str,
    *,
    format: str = "auto",
    approve: bool = False,
    source: str = "import",
    author_id: int | None = None,
    guild_id: int | None = None,
    skip_invalid: bool = False,
    max_chars: int | None = None,
    columns: formats.ColumnMap | None = None,
    set_values: Mapping[str, str] | None = None,
    allow_placeholders: bool = False,
    hourly_limit: int | None = None,
    tags: Sequence[str] = (),
) -> ImportReport:
    """Parse and import; raises ``formats.FormatError`` when the file is not usable at all.

    Any invalid record stops the whole import (nothing written) unless ``skip_invalid``; with ``skip_invalid``,
    an import that leaves nothing valid is not committed either. ``approve`` with unfilled placeholders raises
    PlaceholdersLeft unless ``allow_placeholders``. ``hourly_limit``: the author's (Store.import_conversations);
    raises HourlyLimitReached, nothing written, when the records it would store go over it. ``tags`` are added to
    every record (``holdout``: the file's questions judge the gate and never train).
    """
    # The records stay alive until the import is done: the collector would walk them all again and again (see
    # formats.collector_paused); the bot's own garbage waits for the end of the import. The records are freed
    # (_import's frame is gone) before the collector is back, so it never walks them at all.
    with formats.collector_paused():
        return await _import(store, data, filename, format=format, approve=approve, source=source,
                             author_id=author_id, guild_id=guild_id, skip_invalid=skip_invalid, max_chars=max_chars,
                             columns=columns, set_values=set_values, allow_placeholders=allow_placeholders,
                             hourly_limit=hourly_limit, tags=tuple(tags))


async def _import(store: Store, data: bytes, filename: str, *, format: str, approve: bool, source: str,
                  author_id: int | None, guild_id: int | None, skip_invalid: bool, max_chars: int | None,
                  columns: formats.ColumnMap | None, set_values: Mapping[str, str] | None,
                  allow_placeholders: bool, hourly_limit: int | None, tags: tuple[str, ...] = ()) -> ImportReport:
    parsed = await asyncio.to_thread(formats.read_bytes, data, filename, format, max_chars, columns)
    total = len(parsed.records) + len(parsed.undesirable) + len(parsed.errors)
    wanted = [r.conversation for r in parsed.records]
    undesirable = [r.conversation for r in parsed.undesirable]
    if tags:
        wanted = [replace(c, tags=tuple(dict.fromkeys((*c.tags, *tags)))) for c in wanted]
    copies: list[tuple[str, str]] = []  # (as written, filled): the placeholder copies a re-import replaces
    if set_values:
        written = wanted
        wanted = [fill_placeholders(c, set_values) for c in wanted]
        undesirable = [fill_placeholders(c, set_values) for c in undesirable]
        copies = [(before.content_hash(), after.content_hash()) for before, after in zip(written, wanted, strict=True)
                  if after is not before and after.messages != before.messages]
    names: list[str] = []
    holding = 0
    # Most files hold no "{{" at all, nor its JSON escape: then no record needs a search.
    if b"{{" in data or b"\\u007b" in data or b"\\u007B" in data:
        found: set[str] = set()
        for conversation in wanted:
            if names_in := placeholders_in(conversation):
                found |= names_in
                holding += 1
        names = sorted(found)
    if approve and names and not allow_placeholders:
        shown = ", ".join("{{" + n + "}}" for n in names)
        fill = " ".join(f"--set {n}=VALUE" for n in names)
        raise PlaceholdersLeft(f"{holding} records hold template placeholders ({shown}): fill them with {fill}, "
                               "or pass --allow-placeholders to approve them as written")
    if parsed.errors and (not skip_invalid or not (wanted or undesirable)):
        return ImportReport(parsed.format, total, 0, [], list(parsed.errors), committed=False, kind=parsed.kind,
                            approved=approve)
    outcome = await store.import_conversations(
        wanted + undesirable, source=source, approve=approve, author_id=author_id, guild_id=guild_id,
        reject=range(len(wanted), len(wanted) + len(undesirable)), hourly_limit=hourly_limit,
    )
    replaced = await store.replace_pending_copies(copies)
    located = parsed.records + parsed.undesirable
    duplicates = [located[i].location for i in outcome.duplicates]
    in_flight = [located[i].location for i in outcome.in_flight]
    rejected = len(undesirable) - sum(1 for i in (*outcome.duplicates, *outcome.in_flight) if i >= len(wanted))
    return ImportReport(parsed.format, total, outcome.imported, duplicates, list(parsed.errors), kind=parsed.kind,
                        rejected=rejected, placeholders=names, with_placeholders=holding, approved=approve,
                        in_flight=in_flight, replaced=replaced)


async def import_file(store: Store, path: Path, **kwargs: Any) -> ImportReport:
    data = await asyncio.to_thread(Path(path).read_bytes)
    return await import_bytes(store, data, Path(path).name, **kwargs)
