"""``loraloop bot`` start-up failures: one clear line, no traceback wall, never the token."""

from __future__ import annotations

import socket

import discord
import pytest
from pydantic import SecretStr

from bot.app import StartupError, run_bot, start
from tests.harness.bot import FAKE_TOKEN, make_settings


async def test_rejected_token_is_one_clear_line(discord_api, tmp_path, ollama_server):
    discord_api.login_status = 401
    settings = make_settings(tmp_path, ollama_server.url, discord_token=SecretStr(FAKE_TOKEN))
    with pytest.raises(StartupError) as info:
        await start(settings)
    message = str(info.value)
    assert "rejected DISCORD_TOKEN" in message and FAKE_TOKEN not in message
    assert discord_api.find("GET", "/users/@me")[0].path == "/users/@me"


def test_unreachable_discord_fails_fast(monkeypatch, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    settings = make_settings(tmp_path, "http://127.0.0.1:9", discord_token=SecretStr(FAKE_TOKEN))
    with pytest.raises(SystemExit) as info:
        run_bot(settings)
    assert str(info.value).startswith("error: cannot reach Discord")
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err + str(info.value)
    assert "Traceback" not in captured.err
