"""Dataset snapshots: an immutable JSONL of approved examples plus a manifest; readable without a database.

The train/eval split is hash-stable: an example's split depends only on its content hash, so an example in
the eval split stays there in every later snapshot and eval metrics stay comparable across model versions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from data.conversation import Conversation

FORMAT = "loraloop-snapshot/1"
EXAMPLES_FILE = "examples.jsonl"
MANIFEST_FILE = "manifest.json"


class SnapshotError(Exception):
    """A snapshot that cannot be written or read; the message says why."""


class _ExampleLike(Protocol):
    content_hash: str
    messages: list[dict[str, str]] | str  # decoded, or the JSON text as stored
    tags: list[str] | str
    source: str
    tools: str | None


def is_eval(example_id: str, eval_fraction: float) -> bool:
    """eval iff sha256("loraloop-split:" + id), read as a fraction of 2**64, is below ``eval_fraction``."""
    digest = hashlib.sha256(f"loraloop-split:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def write_snapshot(examples: Iterable[_ExampleLike], out_dir: Path, eval_fraction: float = 0.1) -> dict[str, Any]:
    """Write ``examples.jsonl`` (sorted by id) and ``manifest.json`` into a new or empty ``out_dir``.

    Returns the manifest plus ``path`` (the directory's absolute path, not stored in the manifest file).
    """
    if not 0 < eval_fraction < 1:
        raise SnapshotError(f"eval_fraction must be between 0 and 1, not {eval_fraction}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SnapshotError(f"{out_dir} is not empty: a snapshot is immutable, write it to a new directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    splits: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for ex in sorted(examples, key=lambda e: e.content_hash):
        split = "eval" if is_eval(ex.content_hash, eval_fraction) else "train"
        record: dict[str, Any] = {"id": ex.content_hash, "split": split, "messages": _json_value(ex.messages),
                                  "tags": _json_value(ex.tags or []), "source": ex.source}
        if ex.tools:
            record["tools"] = ex.tools
        lines.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode())
        splits[split] += 1
        sources[ex.source] += 1
    payload = ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
    (out_dir / EXAMPLES_FILE).write_bytes(payload)
    manifest = {
        "format": FORMAT,
        "file": EXAMPLES_FILE,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "counts": {"total": len(lines), "train": splits["train"], "eval": splits["eval"]},
        "eval_fraction": eval_fraction,
        "sources": dict(sorted(sources.items())),
        "created_at": datetime.now(UTC).isoformat(),
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {**manifest, "path": str(out_dir.resolve())}


def _json_value(value: Any) -> Any:
    """JSON text from the store goes into the line verbatim, re-serialised canonically (compact, key order
    as stored); decoded values are serialised by orjson the same way."""
    if isinstance(value, str):
        return orjson.Fragment(orjson.dumps(orjson.loads(value)) if value[:1] not in "[{" else value)
    return value


@dataclass(frozen=True)
class Snapshot:
    path: Path
    manifest: dict[str, Any]
    train: list[Conversation]
    eval: list[Conversation]
    ids: dict[str, list[str]]  # split → example ids, in file order

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]


def read_snapshot(path: Path | str) -> Snapshot:
    """Read and verify a snapshot directory (sha256, format, counts)."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SnapshotError(f"{path} is not a snapshot: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{manifest_path} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise SnapshotError(f"{manifest_path}: unknown snapshot format {manifest.get('format')!r} (expected {FORMAT})")
    data_path = path / manifest.get("file", EXAMPLES_FILE)
    if not data_path.is_file():
        raise SnapshotError(f"{data_path} is missing")
    payload = data_path.read_bytes()
    actual = hashlib.sha256(payload).hexdigest()
    if actual != manifest.get("sha256"):
        raise SnapshotError(f"{data_path} does not match its manifest (sha256 {actual[:12]}…, "
                            f"expected {str(manifest.get('sha256'))[:12]}…): the snapshot was modified")
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
    counts = manifest.get("counts", {})
    if counts.get("train") != len(train) or counts.get("eval") != len(evals):
        raise SnapshotError(f"{path}: the manifest's counts do not match {EXAMPLES_FILE}")
    return Snapshot(path=path, manifest=manifest, train=train, eval=evals, ids=ids)
