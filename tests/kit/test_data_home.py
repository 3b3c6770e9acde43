"""Where the database lives when LORALOOP_HOME is not set: every folder finds the same one (issue 29)."""

from __future__ import annotations

import os

import pytest

from bot.settings import Settings


def test_the_default_home_is_the_per_user_folder_whatever_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        assert Settings().home == tmp_path / "xdg" / "loraloop"


def test_an_existing_loraloop_data_folder_is_still_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loraloop-data").mkdir()
    assert Settings().home.resolve() == tmp_path / "loraloop-data"
    monkeypatch.setenv("LORALOOP_HOME", str(tmp_path / "elsewhere"))
    assert Settings().home == tmp_path / "elsewhere"


def test_every_command_that_used_the_store_says_which(cli_in, tmp_path):
    result = cli_in(tmp_path / "one", "dataset", "stats")
    assert result.exit_code == 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"store: sqlite+aiosqlite:///{os.environ['XDG_DATA_HOME']}/loraloop/loraloop.db (community default)")
    # From another folder: the same database.
    again = cli_in(tmp_path / "two", "review", "list", "--json")
    assert again.exit_code == 0 and again.stderr.strip() == result.stderr.strip()
    assert again.stdout.startswith("{")  # the JSON alone on stdout


@pytest.fixture
def cli_in(monkeypatch):
    from typer.testing import CliRunner

    from bot.cli import app

    monkeypatch.delenv("LORALOOP_HOME", raising=False)

    def invoke(folder, *args: str):
        folder.mkdir(exist_ok=True)
        monkeypatch.chdir(folder)
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    return invoke
