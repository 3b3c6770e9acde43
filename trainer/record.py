"""``run.json``: what a training run records for the steps after it (deploy, convert, resume).

The recipe writes it; the deploy pipeline, the GGUF converter, the served-format check and ``--resume`` read it
through :class:`RunRecord`. No torch here: the bot host and the deploy side import this module.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from data.validation import describe

RUN_FILE = "run.json"


class RunRecord(BaseModel):
    """One training run's record; every field may be absent (adapters trained elsewhere, older runs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: str | None = None  # the base as given: a Hugging Face id or a directory
    base_dir: Path | None = None  # where the base's files were on the training host
    snapshot: str | None = None  # the snapshot directory trained on (None: a temporary one, see data_file)
    snapshot_sha256: str | None = None
    chat_template: str | None = None  # the Jinja template training rendered with
    system_prompt: str | None = None  # added to conversations without one
    end_of_turn: tuple[str, ...] = ()
    # How the answers' reasoning parts were trained (trainer.prepare.reasoning_style); None: no reasoning trained.
    reasoning: str | None = None
    # `loraloop train --data FILE`: the data file and its sha256 (the snapshot made from it was temporary).
    data_file: str | None = None
    data_sha256: str | None = None

    @field_validator("base_dir", mode="before")
    @classmethod
    def _empty_is_unknown(cls, value: object) -> object:
        return value or None

    def write(self, run_dir: Path) -> Path:
        """Write ``run_dir/run.json``; returns its path."""
        path = run_dir / RUN_FILE
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path


def read_run(run_dir: Path) -> RunRecord | None:
    """The run record in ``run_dir``; None when there is none. A malformed one is a ValueError naming the file."""
    path = run_dir / RUN_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return RunRecord.model_validate_json(text)
    except ValidationError as exc:
        problems = describe(exc, root="record", limit=3, unknown="unexpected field")
        raise ValueError(f"{path} is not a loraloop run record ({problems})") from None
