"""Secrets in URLs never reach a user: every form a URL carries one in, URLs inside error texts, and a run's
failure reason as stored and as shown in Discord."""

from __future__ import annotations

import socket

import pytest

from bot.settings import redact_text, redact_url
from data import runs
from tests.harness.bot import EXPERT, EXPERTS_CHANNEL_GUILDS, make_settings, start_bot
from tests.harness.discord import CHANNEL_ID, EXPERT_ROLE, Gateway, message_with_buttons

URLS = {
    # form: (url, redacted)
    "user and password": ("postgresql+asyncpg://loraloop:hunter2@db:5432/loraloop",
                          "postgresql+asyncpg://loraloop:***@db:5432/loraloop"),
    "redis password only": ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    "password with @ and /": ("postgresql://u:hun@ter/2@db/x", "postgresql://u:***@db/x"),
    "percent-encoded password": ("redis://default:hun%40ter2@cache:6379", "redis://default:***@cache:6379"),
    "token as user": ("https://ghp_abcdefghij0123456789@github.com/o/r.git", "https://***@github.com/o/r.git"),
    "plain user kept": ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
    "password parameter": ("postgresql://db/x?user=u&password=hunter2&sslmode=require",
                           "postgresql://db/x?user=u&password=***&sslmode=require"),
    "sslpassword parameter, sslkey kept": ("postgresql://db/x?sslkey=/etc/k.pem&sslpassword=hunter2",
                                           "postgresql://db/x?sslkey=/etc/k.pem&sslpassword=***"),
    "token parameters": ("https://api.example/v1?token=t1&access_token=t2&page=2",
                         "https://api.example/v1?token=***&access_token=***&page=2"),
    "api keys and secrets": ("https://h/x?api_key=a&apikey=b&key=c&secret=d&client_secret=e",
                             "https://h/x?api_key=***&apikey=***&key=***&secret=***&client_secret=***"),
    "parameter names in any case": ("https://h/x?Password=a&API_KEY=b", "https://h/x?Password=***&API_KEY=***"),
    "token in the fragment": ("https://h/cb#access_token=hunter2&state=1", "https://h/cb#access_token=***&state=1"),
    "both at once": ("redis://:pw1@h:6379/0?password=pw2", "redis://:***@h:6379/0?password=***"),
    "nothing secret": ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
}


@pytest.mark.parametrize("form", URLS)
def test_each_form_of_secret_is_redacted(form):
    url, expected = URLS[form]
    assert redact_url(url) == expected
    assert redact_url(expected) == expected  # redacting twice changes nothing
    assert redact_text(f"error: {url}") == f"error: {expected}"


@pytest.mark.parametrize("text, secret", [
    # asyncpg / SQLAlchemy
    ("(sqlalchemy.exc.ArgumentError) Could not parse SQLAlchemy URL from string "
     "'postgresql+asyncpg://bot:hunter2@db:5432/x'", "hunter2"),
    # a repr of an exception, as the orchestrator stores an unexpected one
    ("unexpected error: OllamaUnavailable('Ollama is not reachable at http://admin:hunter2@gpu:11434 "
     "(connection refused)')", "hunter2"),
    # redis / kombu, the URL at the end of a sentence and in brackets
    ("Cannot connect to redis://:hunter2@cache:6379/0.", "hunter2"),
    ("broker unreachable (amqp://guest:hunter2@mq:5672//)", "hunter2"),
    # psycopg: a libpq connection string, not a URL
    ("connection failed: host=db port=5432 user=bot password=hunter2 dbname=x", "hunter2"),
    ("connection failed: host=db password='hunter 2' sslpassword=s3cret", "s3cret"),
    ("two: redis://:hunter2@a/0 and postgresql://u:other@b/x", "other"),
])
def test_urls_inside_error_texts_are_redacted(text, secret):
    redacted = redact_text(text)
    assert secret not in redacted and "***" in redacted
    assert "hunter" not in redacted


def test_text_without_secrets_is_unchanged():
    text = "duplicate key=(id)=(5) at http://127.0.0.1:11434/api/chat, see https://example.org/docs?page=2."
    assert redact_text(text) == text


async def test_a_run_failure_carrying_a_dsn_shows_no_password(tmp_path, discord_api, ollama_server):
    """Ollama behind an authenticating proxy, down at promotion: the client's error names its URL, password and
    all; neither the run, nor the version, nor anything sent to Discord may show it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(tmp_path, f"http://admin:hunter2@127.0.0.1:{port}", guilds=EXPERTS_CHANNEL_GUILDS,
                             retrain_promotion="manual")
    bot = await start_bot(settings)
    try:
        store = bot.store
        version = await store.create_model_version(name="assistant", base_model="tiny", ollama_base="tiny-base")
        await store.update_model_version(version.id, status="evaluated", in_ollama=True)
        run = await runs.propose_run(store, summary={}, channel_id=CHANNEL_ID)
        await runs.transition(store, run.id, "snapshotted", model_version_id=version.id)
        await runs.transition(store, run.id, "evaluated")
        ids = [f"ll:rt:promote:{run.id}", f"ll:rt:discard:{run.id}"]
        await Gateway(bot, discord_api).click(ids[0], message=message_with_buttons(ids), user_id=EXPERT,
                                              roles=[EXPERT_ROLE])

        run = await runs.get_run(store, run.id)
        assert run.state == "failed" and "not reachable" in run.reason
        assert f"admin:***@127.0.0.1:{port}" in run.reason and "hunter2" not in run.reason
        assert "hunter2" not in (await store.get_model_version(version.id)).failure_reason
        shown = discord_api.reply_text()
        assert shown.startswith(f"Retrain #{run.id}: failed") and "admin:***@" in shown
        assert not [c for c in discord_api.calls if "hunter2" in repr(c.json)]
    finally:
        await bot.close()
