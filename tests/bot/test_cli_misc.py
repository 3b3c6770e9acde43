"""The command line's small promises: -h and --version, `loraloop bot` checking the token's shape offline, and
OLLAMA_HOST read as Ollama's own clients read it (a malformed value is one line, never a traceback)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.settings import load_settings, parse_ollama_host


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize("args", [["-h"], ["--help"], ["dataset", "import", "-h"], ["review", "-h"],
                                  ["train", "-h"], ["deploy", "convert", "-h"]])
def test_short_and_long_help_everywhere(args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"loraloop {version('loraloop')}"


@pytest.mark.parametrize(("token", "message"), [
    ("Bot abc.def.ghi", "starts with 'Bot '"),
    ("just-a-client-secret", "does not look like a bot token"),
    ("", "DISCORD_TOKEN is not set"),
])
def test_bot_checks_the_token_shape_before_connecting(tmp_path, token, message):
    result = invoke("bot", env={"DISCORD_TOKEN": token, "LORALOOP_HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert token[4:] not in result.output or not token  # the token itself is never printed


@pytest.mark.parametrize(("value", "url"), [
    ("", "http://127.0.0.1:11434"),
    ("1.2.3.4", "http://1.2.3.4:11434"),
    ("ollama:11435", "http://ollama:11435"),
    (":56789", "http://127.0.0.1:56789"),
    ("0.0.0.0", "http://127.0.0.1:11434"),  # where the server listens means this machine
    ("0.0.0.0:8080", "http://127.0.0.1:8080"),
    ("http://example.com", "http://example.com:80"),  # an explicit scheme's own port, as ollama-python
    ("https://example.com", "https://example.com:443"),
    ("https://example.com:56789/path/", "https://example.com:56789/path"),
    ("[::1]:8080", "http://[::1]:8080"),
    ("  http://127.0.0.1:11434/ ", "http://127.0.0.1:11434"),
    ("https://user:s3cret@proxy.example:8443", "https://user:s3cret@proxy.example:8443"),  # a proxy's basic auth
])
def test_ollama_host_as_ollama_reads_it(value, url):
    assert parse_ollama_host(value) == url


def test_ollama_host_agrees_with_ollama_python():
    ollama = pytest.importorskip("ollama._client")
    for value in ("1.2.3.4", ":56789", "example.com:56789/path", "https://example.com", "http://example.com"):
        assert parse_ollama_host(value) == ollama._parse_host(value)


def test_settings_read_ollama_host(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11434")
    assert load_settings().ollama_host == "http://127.0.0.1:11434"


@pytest.mark.parametrize(("value", "message"), [
    ("ftp://host", "the scheme must be http or https"),
    ("host:port", "port 'port' is not a number from 1 to 65535"),
    ("host:70000", "port '70000' is not a number"),
    ("my host", "is not an address"),
    ("user:pw@host", "is not an address"),  # credentials only with an explicit scheme
])
def test_malformed_ollama_host_is_one_line(tmp_path, value, message):
    with pytest.raises(ValueError, match=message):
        parse_ollama_host(value)
    result = invoke("bot", env={"OLLAMA_HOST": value, "LORALOOP_HOME": str(tmp_path)})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
