"""Dataset snapshots: an immutable JSONL of approved examples plus a manifest; readable without a database.

The train/eval split is hash-stable: an example's split depends only on its content hash (and its ``holdout``
tag), so an example in the eval split stays there in every later snapshot and eval metrics stay comparable across
model versions. Examples tagged ``holdout`` are eval questions experts wrote for judging (typically a taught
fact asked in new words): never trained, always in the eval split. ``eval_fraction`` 0 holds out nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from data.conversation import Conversation
from data.errors import LoraloopError
from data.validation import describe

FORMAT: Final = "loraloop-snapshot/1"
EXAMPLES_FILE: Final = "examples.jsonl"
MANIFEST_FILE: Final = "manifest.json"
# Preference records (chosen/rejected answers, for the DPO stage): their own file, the same hash-stable split.
# Listed in the manifest with their own sha256; snapshots written before it have none and read as before.
PREFERENCES_FILE: Final = "preferences.jsonl"


class SnapshotError(LoraloopError):
    """A snapshot that cannot be written or read; the message says why."""


class SplitCounts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    total: int
    train: int
    eval: int


class PreferencesEntry(BaseModel):
    """The manifest's entry for ``preferences.jsonl``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: Literal["preferences.jsonl"]
    sha256: str
    counts: SplitCounts


class DataSource(BaseModel):
    """The data file a snapshot was made from (``loraloop train --data FILE``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    sha256: str
    format: str
    records: int
    undesirable_skipped: int


class SnapshotManifest(BaseModel):
    """``manifest.json``: what the snapshot holds and the sha256 its payload must have."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["loraloop-snapshot/1"]
    file: Literal["examples.jsonl"] = EXAMPLES_FILE
    sha256: str
    counts: SplitCounts
    eval_fraction: float
    sources: dict[str, int]
    created_at: str  # ISO 8601, UTC
    preferences: PreferencesEntry | None = None  # absent in snapshots written before preference records
    source: DataSource | None = None

    def to_json(self) -> str:
        """The manifest file's text (keys sorted, absent entries left out)."""
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class WrittenSnapshot:
    """A snapshot just written: its directory (absolute) and its manifest."""

    path: Path
    manifest: SnapshotManifest

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def counts(self) -> SplitCounts:
        return self.manifest.counts

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON plus ``path`` (not stored in the manifest file): what ``--json`` prints."""
        return {**self.manifest.model_dump(mode="json", exclude_none=True), "path": str(self.path)}


def parse_manifest(text: str | bytes, where: str = MANIFEST_FILE) -> SnapshotManifest:
    """A manifest's text as a :class:`SnapshotManifest`, or SnapshotError saying what is wrong with it."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else raw
        raise SnapshotError(f"{where}: unknown snapshot format {found!r} (expected {FORMAT})")
    try:
        return SnapshotManifest.model_validate(raw, strict=True)
    except ValidationError as exc:
        problems = describe(exc, root="manifest", limit=3, unknown="unexpected field")
        raise SnapshotError(f"{where} is not a {FORMAT} manifest ({problems})") from None


class _ExampleLike(Protocol):
    content_hash: str
    messages: list[dict[str, str]] | str  # decoded, or the JSON text as stored
    tags: list[str] | str
    source: str
    tools: str | None


HOLDOUT = "holdout"  # an example with this tag is an eval question: never trained, always judged


def _held_out(tags: list[str] | str | None) -> bool:
    if not tags:
        return False
    return f'"{HOLDOUT}"' in tags if isinstance(tags, str) else HOLDOUT in tags


def is_eval(example_id: str, eval_fraction: float) -> bool:
    """eval iff sha256("loraloop-split:" + id), read as a fraction of 2**64, is below ``eval_fraction``."""
    digest = hashlib.sha256(b"loraloop-split:" + example_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def write_snapshot(examples: Iterable[_ExampleLike], out_dir: Path, eval_fraction: float = 0.1) -> WrittenSnapshot:
    """Write ``examples.jsonl`` (sorted by id) and ``manifest.json`` into a new or empty ``out_dir``.

    Holds every example to sort them; SnapshotWriter takes them already sorted, a batch at a time.
    """
    with SnapshotWriter(out_dir, eval_fraction) as writer:
        writer.write(sorted(examples, key=lambda e: e.content_hash))
        return writer.close()


class SnapshotWriter:
    """Writes a snapshot from examples given in id (content hash) order, one batch at a time.

    Memory stays one batch's, whatever the snapshot's size; the bytes are exactly ``write_snapshot``'s.
    Used as a context manager, a failure removes what was written (the directory too, if this made it).
    """

    def __init__(self, out_dir: Path, eval_fraction: float = 0.1) -> None:
        if not 0 <= eval_fraction < 1:
            raise SnapshotError(f"eval_fraction must be at least 0 and below 1, not {eval_fraction}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and any(self.out_dir.iterdir()):
            raise SnapshotError(f"{self.out_dir} is not empty: a snapshot is immutable, write it to a new directory")
        self._made_dir = not self.out_dir.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.eval_fraction = eval_fraction
        self._file = (self.out_dir / EXAMPLES_FILE).open("xb")
        self._sha256 = hashlib.sha256()
        self._last = ""
        self._splits: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()
        self._preferences: PreferencesEntry | None = None

    def write_preferences(self, records: Iterable[Any]) -> None:
        """Write ``preferences.jsonl`` at once (records with content_hash, prompt, chosen, rejected, tags, tools,
        source — the store's PreferenceRecord rows), sorted by id, split by the same rule as the examples."""
        lines: list[bytes] = []
        splits: Counter[str] = Counter()
        for rec in sorted(records, key=lambda r: r.content_hash):
            split = "eval" if _held_out(rec.tags) or is_eval(rec.content_hash, self.eval_fraction) else "train"
            line: dict[str, Any] = {"id": rec.content_hash, "split": split, "prompt": rec.prompt,
                                    "chosen": rec.chosen, "rejected": rec.rejected, "tags": rec.tags or [],
                                    "source": rec.source}
            if rec.tools:
                line["tools"] = rec.tools
            lines.append(orjson.dumps(line, option=orjson.OPT_SORT_KEYS) + b"\n")
            splits[split] += 1
        payload = b"".join(lines)
        with (self.out_dir / PREFERENCES_FILE).open("xb") as f:
            f.write(payload)
        self._preferences = PreferencesEntry(
            file=PREFERENCES_FILE, sha256=hashlib.sha256(payload).hexdigest(),
            counts=SplitCounts(total=splits.total(), train=splits["train"], eval=splits["eval"]))

    def write(self, examples: Iterable[_ExampleLike]) -> None:
        """Append examples; each id must sort after (or equal) the last one written."""
        self.write_rows((ex.content_hash, ex.messages, ex.tags, ex.source, ex.tools) for ex in examples)

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """``write`` for rows of (content_hash, messages, tags, source, tools), the store's column order."""
        # Hot loop (a million rows is a normal snapshot): rows unpacked (a database row's attributes cost 5× more),
        # counts kept in locals.
        lines, last, fraction, sources, evals = [], self._last, self.eval_fraction, self._sources, 0
        for example_id, messages, tags, source, tools in rows:
            if example_id < last:
                raise SnapshotError(f"examples out of order: {example_id[:12]}… after {last[:12]}… "
                                    "(a snapshot's examples must come sorted by id)")
            last = example_id
            in_eval = _held_out(tags) or is_eval(example_id, fraction)
            evals += in_eval
            record: dict[str, Any] = {"id": example_id, "split": "eval" if in_eval else "train",
                                      "messages": _json_value(messages), "tags": _json_value(tags or []),
                                      "source": source}
            if tools:
                record["tools"] = tools
            lines.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
            sources[source] = sources.get(source, 0) + 1
        self._last = last
        self._splits["eval"] += evals
        self._splits["train"] += len(lines) - evals
        if lines:
            lines.append(b"")  # every line ends in "\n", the last one included
            chunk = b"\n".join(lines)
            self._sha256.update(chunk)
            self._file.write(chunk)

    def close(self) -> WrittenSnapshot:
        """Finish ``examples.jsonl``, write ``manifest.json``."""
        self._file.close()
        manifest = SnapshotManifest(
            format=FORMAT, file=EXAMPLES_FILE, sha256=self._sha256.hexdigest(),
            counts=SplitCounts(total=self._splits.total(), train=self._splits["train"], eval=self._splits["eval"]),
            eval_fraction=self.eval_fraction, sources=dict(sorted(self._sources.items())),
            created_at=datetime.now(UTC).isoformat(), preferences=self._preferences)
        (self.out_dir / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        return WrittenSnapshot(self.out_dir.resolve(), manifest)

    def abort(self) -> None:
        """Remove what this writer wrote: a half-written snapshot must not look like one."""
        self._file.close()
        for name in (EXAMPLES_FILE, MANIFEST_FILE, PREFERENCES_FILE):
            (self.out_dir / name).unlink(missing_ok=True)
        if self._made_dir:
            with contextlib.suppress(OSError):  # someone else's file in it now: leave the directory
                self.out_dir.rmdir()

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.abort()


def _json_value(value: Any) -> Any:
    """JSON text from the store goes into the line verbatim, re-serialised canonically (compact, key order
    as stored); decoded values are serialised by orjson the same way."""
    if isinstance(value, str):
        return orjson.Fragment(orjson.dumps(orjson.loads(value)) if value[:1] not in "[{" else value)
    return value


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: SnapshotManifest
    train: list[Conversation]
    eval: list[Conversation]
    ids: dict[str, list[str]]  # split → example ids, in file order
    # split → preference records (data.formats.preference.Preference), in file order; empty in older snapshots.
    preferences: dict[str, list[Any]] = field(default_factory=lambda: {"train": [], "eval": []})

    @property
    def sha256(self) -> str:
        return self.manifest.sha256


def read_snapshot(path: Path | str) -> Snapshot:
    """Read and verify a snapshot directory (sha256, format, counts)."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SnapshotError(f"{path} is not a snapshot: {MANIFEST_FILE} is missing")
    manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
    data_path = path / manifest.file
    if not data_path.is_file():
        raise SnapshotError(f"{data_path} is missing")
    payload = data_path.read_bytes()
    actual = hashlib.sha256(payload).hexdigest()
    if actual != manifest.sha256:
        raise SnapshotError(f"{data_path} does not match its manifest (sha256 {actual[:12]}…, "
                            f"expected {manifest.sha256[:12]}…): the snapshot was modified")
    train: list[Conversation] = []
    evals: list[Conversation] = []
    ids: dict[str, list[str]] = {"train": [], "eval": []}
    # Split on "\n" only: str.splitlines() also breaks on U+2028 and friends, which JSON keeps raw.
    for number, line in enumerate(payload.decode("utf-8").split("\n")[:-1], start=1):
        try:
            record = orjson.loads(line)
            conv = Conversation.from_dicts(record["messages"], record.get("tags", ()), record.get("tools"))
            split = record["split"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise SnapshotError(f"{data_path} line {number}: not a snapshot record ({exc})") from None
        if split not in ids:
            raise SnapshotError(f"{data_path} line {number}: unknown split {split!r}")
        (train if split == "train" else evals).append(conv)
        ids[split].append(record["id"])
    if manifest.counts.train != len(train) or manifest.counts.eval != len(evals):
        raise SnapshotError(f"{path}: the manifest's counts do not match {EXAMPLES_FILE}")
    preferences = _read_preferences(path, manifest.preferences)
    return Snapshot(path=path, manifest=manifest, train=train, eval=evals, ids=ids, preferences=preferences)


def _read_preferences(path: Path, listed: PreferencesEntry | None) -> dict[str, list[Any]]:
    """The snapshot's preference records by split, verified against the manifest's entry (none: empty)."""
    from data.formats.preference import Preference

    out: dict[str, list[Any]] = {"train": [], "eval": []}
    if listed is None:
        return out
    data_path = path / listed.file
    if not data_path.is_file():
        raise SnapshotError(f"{data_path} is missing")
    payload = data_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != listed.sha256:
        raise SnapshotError(f"{data_path} does not match its manifest: the snapshot was modified")
    for number, line in enumerate(payload.decode("utf-8").split("\n")[:-1], start=1):
        try:
            record = orjson.loads(line)
            pref = Preference.from_row(record["prompt"], record["chosen"], record["rejected"],
                                       record.get("tags", ()), record.get("tools"))
            out[record["split"]].append(pref)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise SnapshotError(f"{data_path} line {number}: not a preference record ({exc})") from None
    if listed.counts.train != len(out["train"]) or listed.counts.eval != len(out["eval"]):
        raise SnapshotError(f"{path}: the manifest's preference counts do not match {PREFERENCES_FILE}")
    return out
