"""Bulk import: a file in any supported format → validated conversations → the store, all or nothing
(written in batches that stay hidden until the last one is in)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data import formats
from data.store import Store


@dataclass(frozen=True)
class ImportReport:
    format: str
    records: int
    imported: int
    duplicates: list[str] = field(default_factory=list)  # locations of records already known
    errors: list[formats.RecordError] = field(default_factory=list)
    # False when per-record errors stopped the import: then nothing was written.
    committed: bool = True

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors"] = [{"location": e.location, "message": e.message} for e in self.errors]
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
) -> ImportReport:
    """Parse and import; raises ``formats.FormatError`` when the file is not usable at all.

    Any invalid record stops the whole import (nothing written) unless ``skip_invalid``.
    """
    parsed = await asyncio.to_thread(formats.read_bytes, data, filename, format, max_chars)
    total = len(parsed.records) + len(parsed.errors)
    if parsed.errors and not skip_invalid:
        return ImportReport(parsed.format, total, 0, [], list(parsed.errors), committed=False)
    outcome = await store.import_conversations(
        [r.conversation for r in parsed.records], source=source, approve=approve, author_id=author_id,
        guild_id=guild_id,
    )
    duplicates = [parsed.records[i].location for i in outcome.duplicates]
    return ImportReport(parsed.format, total, outcome.imported, duplicates, list(parsed.errors))


async def import_file(store: Store, path: Path, **kwargs: Any) -> ImportReport:
    data = await asyncio.to_thread(Path(path).read_bytes)
    return await import_bytes(store, data, Path(path).name, **kwargs)
