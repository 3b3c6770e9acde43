"""The error a deploy step raises on purpose: registering, judging, promoting or rolling back a version."""

from __future__ import annotations

from data.errors import LoraloopError


class DeployFailed(LoraloopError):
    """A deploy step failed; the version is marked failed with this message and the active model is unchanged."""
