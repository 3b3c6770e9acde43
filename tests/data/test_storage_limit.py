"""Discord's 4000-character form limit is the forms' limit, not the dataset's: file imports take long records up
to their own storage limit (issue 29)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from bot.settings import Settings


def test_a_long_record_imports_from_the_command_line(cli, tmp_path):
    source = tmp_path / "long.json"
    source.write_text(json.dumps([{"instruction": "Explain it all.", "input": "", "output": "x" * 6293}]))
    result = cli("dataset", "import", str(source))
    assert result.exit_code == 0, result.output
    assert "imported: 1" in result.output


def test_the_storage_limit_still_holds_and_says_which_setting(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LORALOOP_MAX_STORED_CHARS", "5000")
    source = tmp_path / "long.json"
    source.write_text(json.dumps([{"instruction": "Explain it all.", "input": "", "output": "x" * 6293}]))
    result = cli("dataset", "import", str(source))
    assert "imported: 1" not in result.output
    assert "6293" in result.output and "5000" in result.output


def test_the_form_limit_cannot_exceed_discords():
    with pytest.raises(ValidationError, match="max_field_chars"):
        Settings(max_field_chars=6000)
