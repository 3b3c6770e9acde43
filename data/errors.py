"""loraloop's error tree: :class:`LoraloopError` under every error the project raises on purpose, and the store's
refusals (one module that both the store and its run repository import; neither imports the other for them).

``str(exc)`` of a LoraloopError is always one message fit to show a user: boundaries (a slash command, a CLI
command, the worker) catch ``LoraloopError`` (plus ``OSError``) and show it; anything else is a bug and is logged
with its traceback. Light on purpose: the GPU host imports it without the database stack.
"""

from __future__ import annotations

from typing import Any


class LoraloopError(Exception):
    """An error loraloop raises on purpose; ``str(exc)`` is a message fit to show the user."""


class StoreError(LoraloopError):
    """A request the store refuses; ``str(exc)`` is a message fit to show the user."""


class NotFound(StoreError):
    pass


class DuplicateExample(StoreError):
    def __init__(self, existing_id: int) -> None:
        super().__init__(f"this pair is already in the dataset (example #{existing_id})")
        self.existing_id = existing_id


class SelfRating(StoreError):
    def __init__(self) -> None:
        super().__init__("you cannot rate your own example")


class InvalidRating(StoreError):
    pass


class Superseded(StoreError):
    """The example was replaced by an edited copy: only the copy can be rated, decided or edited now."""

    def __init__(self, example_id: int, replacement_id: int | None) -> None:
        copy = f" (#{replacement_id})" if replacement_id is not None else ""
        then = f"; review #{replacement_id} instead" if replacement_id is not None else ""
        super().__init__(f"example #{example_id} was already superseded by an edit{copy}{then}")
        self.example_id, self.replacement_id = example_id, replacement_id


class NotEditable(StoreError):
    pass


class UnstorableText(StoreError):
    """Text the database cannot hold: a NUL character (PostgreSQL refuses it) or an unpaired surrogate."""


class HourlyLimitReached(StoreError):
    """``wanted`` more pairs would take a person over their hourly limit; nothing of them was stored."""

    def __init__(self, used: int, limit: int, wanted: int) -> None:
        if wanted > limit:
            why = (f"that is {wanted:,} pairs, more than the limit of {limit:,} pairs per hour per user: split it "
                   f"into parts of at most {limit:,}")
        elif used >= limit:
            why = f"you have submitted {used:,} pairs in the last hour; the limit is {limit:,} per hour"
        else:
            why = (f"that is {wanted:,} pairs, but you can submit only {limit - used:,} more this hour (limit "
                   f"{limit:,} per hour, {used:,} used)")
        super().__init__(why)
        self.used, self.limit, self.wanted = used, limit, wanted


class ImportFailed(StoreError):
    """The database refused a row of a bulk import; nothing of the import was kept."""


class NoRollbackTarget(StoreError):
    pass


class RunInProgress(StoreError):
    """A retrain proposal or run is already open (at most one at a time)."""

    def __init__(self, run: Any) -> None:
        what = f"#{run.id} ({run.state})" if run is not None else "another one"
        super().__init__(f"a retrain is already open: {what}; wait for it to finish or cancel it")
        self.run = run


class RunStateError(StoreError):
    """A retrain run is not in a state that allows the requested change."""


class UnfilledPlaceholders(StoreError):
    """An approval of an example that still holds template placeholders (``{{name}}``): it would train them."""
