"""What kind of data a file holds, before any record is read as a question/answer pair.

Supervised pairs ("sft") are what loraloop trains on. Three other kinds look alike at a glance and must never be
read as pairs: preference data (a chosen and a rejected answer per prompt, LLaMA-Factory's ``ranking: true``),
KTO data (one answer per prompt with a ``label`` / ``kto_tag`` saying whether it is desirable) and multimodal
records (images, videos or audio referenced by path and by ``<image>`` tokens in the text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Literal

from data.formats.common import RecordIssue

Kind = Literal["sft", "preference", "kto", "multimodal"]

# Key pairs that hold a preferred and a dispreferred answer: LLaMA-Factory/TRL, xtuner, OpenAI preference tuning.
PREFERENCE_KEYS = (("chosen", "rejected"), ("chosen_messages", "rejected_messages"),
                   ("chosen_conversations", "rejected_conversations"), ("preferred_output", "non_preferred_output"))
KTO_KEYS = ("label", "kto_tag")
MEDIA_KEYS = ("images", "videos", "audios", "image", "video", "audio")
MEDIA_TOKEN = re.compile(r"<(image|video|audio)>")
# Content parts that are not text (OpenAI's image_url/input_audio, LLaMA-Factory v1's image_url/video_url/…).
_MEDIA_PART = re.compile(r"image|video|audio")


def is_preference(record: Any) -> bool:
    return isinstance(record, dict) and any(a in record and b in record for a, b in PREFERENCE_KEYS)


def has_kto_label(record: Any) -> bool:
    """Whether the record carries a KTO label key (``label`` or ``kto_tag``), whatever its value."""
    return isinstance(record, dict) and any(key in record for key in KTO_KEYS)


def kto_label(record: Any) -> bool:
    """The record's KTO label: True for a desirable answer, False for an undesirable one.

    Only a JSON boolean is a label, as for LLaMA-Factory: a "false", a 0 or a null would otherwise be taken for
    "desirable" (and approved for training); such a value, or no label, raises RecordIssue naming it.
    """
    if isinstance(record, dict):
        for key in KTO_KEYS:
            if key in record:
                label = record[key]
                if isinstance(label, bool):
                    return label
                raise RecordIssue(f'"{key}" is {json.dumps(label, ensure_ascii=False)[:50]}, not a KTO label: '
                                  "it must be the JSON boolean true or false")
    raise RecordIssue(f"no KTO label in a KTO file: give it \"{KTO_KEYS[0]}\": true or false")


def media_of(record: Any) -> str | None:
    """What makes the record multimodal ("images", "<image> token", "image_url part"), or None."""
    if not isinstance(record, dict):
        return None
    for key in MEDIA_KEYS:
        if record.get(key):
            return key
    for text in _texts(record):
        found = MEDIA_TOKEN.search(text)
        if found:
            return f"{found.group(0)} token"
    for part in _parts(record):
        kind = part.get("type")
        if isinstance(kind, str) and _MEDIA_PART.search(kind):
            return f"{kind} part"
    return None


def detect_kind(records: Iterable[Any]) -> Kind:
    """The kind of data in a file's records (raw JSON values): "preference", "kto", "multimodal" or "sft".

    Any record of a kind decides for the file: a file that mixes pairs with preference or media records cannot be
    imported as pairs either. Multimodal wins over the others (its media would be dropped whatever the kind).
    """
    kind: Kind = "sft"
    for record in records:
        if media_of(record) is not None:
            return "multimodal"
        if kind == "sft" and is_preference(record):
            kind = "preference"
        elif kind == "sft" and has_kto_label(record):
            kind = "kto"
    return kind


def _texts(record: dict[str, Any]) -> Iterable[str]:
    """Every message text of a record in any of the formats (one level of lists of turns)."""
    for key in ("instruction", "input", "output", "question", "answer", "prompt", "query", "response"):
        if isinstance(record.get(key), str):
            yield record[key]
    for key in ("messages", "conversations"):
        turns = record.get(key)
        if isinstance(turns, list):
            for turn in turns:
                if isinstance(turn, dict):
                    for field in ("content", "value"):
                        if isinstance(turn.get(field), str):
                            yield turn[field]


def _parts(record: dict[str, Any]) -> Iterable[dict[str, Any]]:
    turns = record.get("messages")
    if isinstance(turns, list):
        for turn in turns:
            if isinstance(turn, dict) and isinstance(turn.get("content"), list):
                yield from (p for p in turn["content"] if isinstance(p, dict))
