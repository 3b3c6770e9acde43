"""The `loraloop` command line, run in-process on a fresh home (tests/data's CLI tests share it)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bot.cli import app


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in ("LORALOOP_DATABASE_URL", "LORALOOP_CONFIG_FILE", "LORALOOP_MAX_FIELD_CHARS",
                "LORALOOP_MAX_STORED_CHARS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LORALOOP_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke
