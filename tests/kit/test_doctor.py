"""``loraloop doctor`` against real components: the Ollama-API test server, SQLite and PostgreSQL databases,
Redis, and this machine's torch (a CPU build: no GPU). Each test reads the report the way an operator does."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.cli.doctor import GpuProbe, discord_token_check, gpu_check, head_revision, probe_gpu
from tests.harness.ollama_server import VERSION as OLLAMA_VERSION

REDIS_URL = os.environ.get("LORALOOP_TEST_REDIS_URL")
POSTGRES_URL = os.environ.get("LORALOOP_TEST_POSTGRES_URL")
BASE = "qwen2.5:0.5b-instruct"
GOOD_TOKEN = (base64.urlsafe_b64encode(b"123456789012345678").decode().rstrip("=")
              + ".GhJkLm." + "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789_-xy")
NAMES = ("settings", "discord token", "roles", "database", "ollama", "base model", "deploy path", "redis", "gpu")
LINE = re.compile(rf"^(ok|FAIL|warn|skip)\s+({'|'.join(NAMES)})\s+(.*)$")


class Report:
    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code = exit_code
        self.output = output
        self.lines = {m.group(2): (m.group(1), m.group(3)) for m in map(LINE.match, output.splitlines()) if m}

    def status(self, name: str) -> str:
        return self.lines[name][0]

    def detail(self, name: str) -> str:
        return self.lines[name][1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment in an empty directory (no .env), with a migrated SQLite database and a good token."""
    for name in list(os.environ):
        if (name.startswith("LORALOOP_") and not name.startswith("LORALOOP_TEST_")) or name in (
                "DISCORD_TOKEN", "OLLAMA_HOST"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    values = {
        "LORALOOP_HOME": str(tmp_path / "home"),
        "DISCORD_TOKEN": GOOD_TOKEN,
        "LORALOOP_GUILDS": '{"42": {"expert_role_ids": [7], "admin_role_ids": [8]}}',
        "LORALOOP_OLLAMA_BASE": BASE,
        "OLLAMA_HOST": f"127.0.0.1:{closed_port()}",
        "LORALOOP_DISPATCHER": "local",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def cli(*args: str) -> Report:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return Report(result.exit_code, result.output)


def doctor(*args: str) -> Report:
    report = cli("doctor", *args)
    assert GOOD_TOKEN not in report.output
    return report


def gpu_status(otherwise: str) -> str:
    """What the gpu line says here: ok on a machine with a CUDA GPU, else the given status."""
    return "ok" if probe_gpu().devices else otherwise


def migrate_sqlite(tmp_path: Path) -> None:
    assert cli("db", "upgrade").exit_code == 0
    assert (tmp_path / "home" / "loraloop.db").is_file()


# ---- a healthy bot host ----------------------------------------------------------------------------------


@pytest.mark.skipif(not REDIS_URL, reason="needs LORALOOP_TEST_REDIS_URL (make test sets it when Redis runs)")
def test_a_healthy_bot_host_passes_every_check(env, tmp_path, ollama_server):
    ollama_server.add_scripted_model(BASE)
    env.setenv("OLLAMA_HOST", ollama_server.url)
    env.setenv("LORALOOP_DISPATCHER", "celery")
    env.setenv("LORALOOP_REDIS_URL", REDIS_URL)
    migrate_sqlite(tmp_path)

    report = doctor()

    assert list(report.lines) == list(NAMES)  # one line per check, in order
    assert {name: status for name, (status, _) in report.lines.items()} == {
        "settings": "ok", "discord token": "ok", "roles": "ok", "database": "ok", "ollama": "ok",
        "base model": "ok", "deploy path": "ok", "redis": "ok", "gpu": gpu_status(otherwise="skip")}
    assert "123456789012345678" in report.detail("discord token")
    assert f"revision {head_revision()}" in report.detail("database")
    assert f"Ollama {OLLAMA_VERSION}" in report.detail("ollama")  # the test server's /api/version
    assert BASE in report.detail("base model")
    assert re.search(r"Redis \d+\.\d+", report.detail("redis"))
    if report.status("gpu") == "skip":
        assert "--worker" in report.detail("gpu")  # celery: the GPU is the worker's business
    assert report.exit_code == 0
    assert report.output.rstrip().endswith("all checks passed")


# ---- Ollama ----------------------------------------------------------------------------------------------


def test_a_missing_base_model_fails_and_says_how_to_pull_it(env, tmp_path, ollama_server):
    ollama_server.add_scripted_model("llama3.2:1b")
    env.setenv("OLLAMA_HOST", ollama_server.url)
    migrate_sqlite(tmp_path)

    report = doctor()

    assert report.status("ollama") == "ok"
    assert report.status("base model") == "FAIL"
    assert f"ollama pull {BASE}" in report.detail("base model")
    assert report.exit_code == 1
    assert report.output.rstrip().endswith("1 check(s) failed: base model")


def test_an_unreachable_ollama_fails_and_the_base_model_is_not_checked(env, tmp_path, unreachable_ollama_url):
    env.setenv("OLLAMA_HOST", unreachable_ollama_url)

    report = doctor()

    assert report.status("ollama") == "FAIL"
    assert "not reachable" in report.detail("ollama") and "OLLAMA_HOST" in report.detail("ollama")
    assert report.status("base model") == "skip" and report.status("deploy path") == "skip"
    assert report.exit_code == 1


def test_an_unresolvable_ollama_host_is_named_not_called_refused(env):
    env.setenv("OLLAMA_HOST", "http://ollama.invalid:11434")  # .invalid never resolves (RFC 6761)

    report = doctor("--check", "ollama")

    assert report.status("ollama") == "FAIL"
    assert "cannot resolve host 'ollama.invalid'" in report.detail("ollama")
    assert "refused" not in report.detail("ollama") and "OLLAMA_HOST" in report.detail("ollama")
    assert report.exit_code == 1


def test_a_v1_path_in_ollama_host_is_flagged_as_the_openai_api(env, ollama_server):
    ollama_server.add_scripted_model(BASE)
    env.setenv("OLLAMA_HOST", ollama_server.url + "/v1/")

    report = doctor("--check", "base-model")

    assert report.status("ollama") == "FAIL"
    assert "OpenAI-compatible" in report.detail("ollama")
    assert report.detail("ollama").endswith(f"set OLLAMA_HOST to {ollama_server.url}")
    assert report.status("base model") == "skip" and report.exit_code == 1


# ---- database --------------------------------------------------------------------------------------------


def test_a_missing_sqlite_database_fails_and_doctor_does_not_create_it(env, tmp_path):
    report = doctor()

    assert report.status("database") == "FAIL"
    assert "loraloop db upgrade" in report.detail("database")
    assert not (tmp_path / "home" / "loraloop.db").exists()
    assert report.exit_code == 1


def test_an_empty_database_is_reported_not_migrated_and_left_alone(env, tmp_path):
    db = tmp_path / "home" / "loraloop.db"
    db.parent.mkdir()
    sqlite3.connect(db).close()

    report = doctor()

    assert report.status("database") == "FAIL"
    assert "not migrated" in report.detail("database") and "loraloop db upgrade" in report.detail("database")
    with sqlite3.connect(db) as conn:
        assert conn.execute("select name from sqlite_master").fetchall() == []  # doctor migrated nothing


def test_an_older_schema_is_reported_with_both_revisions_until_db_upgrade(env, tmp_path):
    from sqlalchemy import create_engine

    from data.migrations import upgrade

    db = tmp_path / "home" / "loraloop.db"
    db.parent.mkdir()
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        upgrade(conn, "0001")
    engine.dispose()

    report = doctor()
    assert report.status("database") == "FAIL"
    assert f"revision 0001, code expects {head_revision()}" in report.detail("database")

    migrate_sqlite(tmp_path)
    assert doctor().status("database") == "ok"


def test_a_database_from_a_newer_loraloop_is_reported(env, tmp_path):
    migrate_sqlite(tmp_path)
    with sqlite3.connect(tmp_path / "home" / "loraloop.db") as conn:
        conn.execute("update alembic_version set version_num = '9999'")

    report = doctor()

    assert report.status("database") == "FAIL"
    assert "9999" in report.detail("database") and "does not know" in report.detail("database")


def test_an_unreachable_postgres_fails_without_showing_its_password(env):
    env.setenv("LORALOOP_DATABASE_URL", f"postgresql+asyncpg://loraloop:s3cret-pw@127.0.0.1:{closed_port()}/loraloop")

    report = doctor()

    assert report.status("database") == "FAIL"
    assert "cannot connect" in report.detail("database") and "loraloop:***@127.0.0.1" in report.detail("database")
    assert "s3cret-pw" not in report.output
    assert report.exit_code == 1


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="needs LORALOOP_TEST_POSTGRES_URL (make test sets it)")
def test_a_fresh_postgres_database_is_not_migrated_until_db_upgrade(env):
    import asyncpg

    name = f"loraloop_doctor_{uuid.uuid4().hex[:10]}"
    admin_dsn = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        env.setenv("LORALOOP_DATABASE_URL", POSTGRES_URL.rsplit("/", 1)[0] + "/" + name)
        report = doctor()
        assert report.status("database") == "FAIL" and "not migrated" in report.detail("database")

        assert cli("db", "upgrade").exit_code == 0
        report = doctor()
        assert report.status("database") == "ok" and name in report.detail("database")
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


# ---- Redis -----------------------------------------------------------------------------------------------


def test_redis_is_only_checked_for_the_celery_dispatcher(env):
    env.setenv("LORALOOP_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")

    assert doctor().status("redis") == "skip"

    env.setenv("LORALOOP_DISPATCHER", "celery")
    report = doctor()
    assert report.status("redis") == "FAIL"
    assert "cannot reach Redis" in report.detail("redis") and "LORALOOP_REDIS_URL" in report.detail("redis")
    assert report.exit_code == 1


def test_redis_password_is_not_shown(env):
    env.setenv("LORALOOP_DISPATCHER", "celery")
    env.setenv("LORALOOP_REDIS_URL", f"redis://:hunter2-pw@127.0.0.1:{closed_port()}/0")

    report = doctor()

    assert report.status("redis") == "FAIL" and ":***@127.0.0.1" in report.detail("redis")
    assert "hunter2-pw" not in report.output


# ---- Discord token ---------------------------------------------------------------------------------------

NOT_AN_ID = base64.urlsafe_b64encode(b"hello").decode().rstrip("=")


@pytest.mark.parametrize(("token", "expected"), [
    (None, "is not set"),
    ("   ", "is not set"),
    (f"Bot {GOOD_TOKEN}", "starts with 'Bot '"),
    (f'"{GOOD_TOKEN}"', "quotes"),
    ("8f3c2a9b1d4e5f60718293a4b5c6d7e8", "three base64url parts"),  # a client secret, say
    (GOOD_TOKEN.replace(".", ":"), "three base64url parts"),
    (f"{NOT_AN_ID}.GhJkLm.aBcDeFgHiJkLmNoPqRsTuVwXyZ", "bot id"),
])
def test_a_badly_shaped_token_fails_and_is_never_printed(env, token, expected):
    if token is None:
        env.delenv("DISCORD_TOKEN")
    else:
        env.setenv("DISCORD_TOKEN", token)

    report = doctor()

    assert report.status("discord token") == "FAIL"
    assert expected in report.detail("discord token")
    if token and token.strip():
        assert token.strip() not in report.output
    assert report.exit_code == 1


def test_a_good_token_shape_names_the_bot_id_only():
    check = discord_token_check(f"  {GOOD_TOKEN}\n")
    assert check.status == "ok" and "123456789012345678" in check.detail and GOOD_TOKEN not in check.detail


# ---- settings and roles ----------------------------------------------------------------------------------


def test_invalid_settings_fail_first_and_alone(env):
    env.setenv("LORALOOP_RATING_QUORUM", "0")

    report = doctor()

    assert list(report.lines) == ["settings"]
    assert report.status("settings") == "FAIL" and "rating_quorum" in report.detail("settings")
    assert report.exit_code == 1


def test_a_missing_config_file_fails_settings(env, tmp_path):
    env.setenv("LORALOOP_CONFIG_FILE", str(tmp_path / "nope.yaml"))

    report = doctor()

    assert report.status("settings") == "FAIL" and "nope.yaml" in report.detail("settings")


def test_settings_read_from_dotenv_and_yaml_are_named(env, tmp_path):
    (tmp_path / "loraloop.yaml").write_text("model_name: physics\n")
    (tmp_path / ".env").write_text(f"LORALOOP_CONFIG_FILE={tmp_path / 'loraloop.yaml'}\n")

    detail = doctor().detail("settings")

    assert ".env" in detail and "loraloop.yaml" in detail and "model physics" in detail


def test_missing_roles_warn_without_failing(env, tmp_path, ollama_server):
    ollama_server.add_scripted_model(BASE)
    env.setenv("OLLAMA_HOST", ollama_server.url)
    env.delenv("LORALOOP_GUILDS")
    migrate_sqlite(tmp_path)

    report = doctor()

    assert report.status("roles") == "warn" and "nobody can review" in report.detail("roles")
    assert report.exit_code == 0  # warnings are advice; the gpu line warns too (dispatcher=local on a CPU)
    assert report.status("gpu") == gpu_status(otherwise="warn")


# ---- the worker side -------------------------------------------------------------------------------------


def test_the_worker_needs_redis_ollama_and_a_gpu_but_no_database_or_token(env, ollama_server):
    ollama_server.add_scripted_model(BASE)
    env.setenv("LORALOOP_WORKER_OLLAMA_HOST", ollama_server.url)  # the worker's own view of Ollama wins
    env.setenv("LORALOOP_REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")  # checked even with dispatcher=local
    env.delenv("DISCORD_TOKEN")

    report = doctor("--worker")

    assert report.status("discord token") == report.status("database") == report.status("roles") == "skip"
    assert report.status("ollama") == report.status("base model") == "ok"
    assert report.status("redis") == "FAIL"
    if probe_gpu().devices:  # a GPU machine
        assert report.status("gpu") == "ok"
    else:
        assert report.status("gpu") == "FAIL" and "no CUDA GPU visible" in report.detail("gpu")
        assert report.output.rstrip().endswith("2 check(s) failed: redis, gpu")
    assert report.exit_code == 1


def test_the_real_command_exits_non_zero_on_a_failure(tmp_path, unreachable_ollama_url):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LORALOOP_") and k not in ("DISCORD_TOKEN", "OLLAMA_HOST")}
    env.update(LORALOOP_HOME=str(tmp_path / "home"), OLLAMA_HOST=unreachable_ollama_url, DISCORD_TOKEN=GOOD_TOKEN)
    result = subprocess.run([sys.executable, "-m", "bot.cli", "doctor"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)

    report = Report(result.returncode, result.stdout)
    assert result.returncode == 1, result.stderr
    assert report.status("ollama") == "FAIL" and report.status("database") == "FAIL"
    assert "Traceback" not in result.stderr and GOOD_TOKEN not in result.stdout + result.stderr


# ---- the GPU check's logic (the machine running the tests has no GPU) ------------------------------------


@pytest.mark.parametrize(("probe", "worker", "dispatcher", "status", "text"), [
    (GpuProbe("2.13.0+cu128", "12.8", ["NVIDIA H100 80GB HBM3"]), True, "celery", "ok", "NVIDIA H100"),
    (GpuProbe("2.13.0+cu128", "12.8", ["NVIDIA L4", "NVIDIA L4"]), False, "local", "ok", "2 CUDA device(s)"),
    (GpuProbe("2.13.0+cu128", "12.8", []), True, "celery", "FAIL", "NVIDIA Container Toolkit"),
    (GpuProbe("2.13.0+cpu", None, []), True, "local", "FAIL", "a CPU-only build"),
    (GpuProbe(), True, "celery", "FAIL", "ml extra"),
    (GpuProbe(), False, "celery", "skip", "torch not installed"),
    (GpuProbe("2.13.0+cpu", None, []), False, "local", "warn", "dispatcher=local"),
    (GpuProbe("2.13.0+cpu", None, []), False, "celery", "skip", "doctor --worker"),
])
def test_gpu_check(probe, worker, dispatcher, status, text):
    check = gpu_check(probe, worker=worker, dispatcher=dispatcher)
    assert (check.status, check.name) == (status, "gpu")
    assert text in check.detail


# ---- --check: the containers' healthchecks run a subset ----------------------------------------------------


def test_check_runs_only_the_named_checks(env, tmp_path, ollama_server):
    ollama_server.add_scripted_model(BASE)
    env.setenv("OLLAMA_HOST", ollama_server.url)
    env.delenv("DISCORD_TOKEN")  # failing, but not asked for
    migrate_sqlite(tmp_path)

    report = doctor("--check", "database", "--check", "ollama")

    assert list(report.lines) == ["settings", "database", "ollama"]
    assert report.exit_code == 0


def test_check_base_model_brings_the_ollama_line_along(env, unreachable_ollama_url):
    env.setenv("OLLAMA_HOST", unreachable_ollama_url)

    report = doctor("--check", "base-model")

    assert list(report.lines) == ["settings", "ollama", "base model"]
    assert report.status("ollama") == "FAIL" and report.exit_code == 1


# ---- which way a deploy reaches Ollama ---------------------------------------------------------------------


def test_an_old_ollama_takes_the_adapter_path_and_ollama_judges_the_prompt(env, ollama_server, capsys):
    ollama_server.version = "0.13.0"
    ollama_server.add_scripted_model(BASE)
    env.setenv("OLLAMA_HOST", ollama_server.url)

    report = doctor("--check", "deploy-path")

    assert list(report.lines) == ["settings", "ollama", "base model", "deploy path"]
    assert "Ollama 0.13.0 (a release)" in report.detail("ollama")
    assert "llama on the llama.cpp engine, no renderer (TEMPLATE decides), capabilities completion" in report.detail(
        "base model")
    assert report.status("deploy path") == "ok"
    assert report.detail("deploy path").startswith("deploy_mode auto: adapter path (Ollama 0.13.0 creates and loads")
    assert "Ollama judges the served prompt (_debug_render_only)" in report.detail("deploy path")
    assert report.exit_code == 0
    with capsys.disabled():
        print(f"\n--- loraloop doctor, Ollama {ollama_server.version} ---\n{report.output}")


def test_a_new_ollama_tries_the_adapter_path_and_warns_about_a_forced_adapter_mode(env, ollama_server, capsys):
    ollama_server.version = "0.34.1"
    ollama_server.add_scripted_model(BASE)
    env.setenv("OLLAMA_HOST", ollama_server.url)

    auto = doctor("--check", "deploy-path")
    env.setenv("LORALOOP_DEPLOY_MODE", "adapter")
    forced = doctor("--check", "deploy-path")

    assert auto.status("deploy path") == "ok" and auto.detail("deploy path").startswith(
        "deploy_mode auto: adapter path (Ollama 0.34.1 may not create models with LoRA adapters (removed from its "
        "CLI in 0.34.1): the adapter is tried first, the gguf path if it is refused)")
    assert forced.status("deploy path") == "warn" and "deploy_mode is adapter but Ollama 0.34.1 may not create" in \
        forced.detail("deploy path")
    assert auto.exit_code == forced.exit_code == 0  # a warning, not a failure: deploys would fail with the reason
    with capsys.disabled():
        print(f"\n--- loraloop doctor, Ollama {ollama_server.version} ---\n{auto.output}"
              f"--- with LORALOOP_DEPLOY_MODE=adapter ---\n{forced.output}")


def test_a_new_engine_base_is_named_and_the_adapter_mode_warned_about(env, ollama_server):
    ollama_server.version = "0.13.0"
    ollama_server.add_scripted_model(BASE).family = "qwen3"
    env.setenv("OLLAMA_HOST", ollama_server.url)
    env.setenv("LORALOOP_DEPLOY_MODE", "adapter")
    env.setenv("LORALOOP_DEPLOY_QUANTIZE", "q8_0")

    report = doctor("--check", "deploy-path")

    assert "qwen3 on the new engine" in report.detail("base model")
    assert report.status("deploy path") == "warn" and "loras are not yet implemented" in report.detail("deploy path")


def test_check_rejects_an_unknown_name(env):
    result = CliRunner().invoke(app, ["doctor", "--check", "dns"])
    assert result.exit_code == 2 and "unknown check(s) dns" in result.output


def test_empty_settings_from_an_env_file_copied_from_the_example_mean_defaults(env, tmp_path):
    # .env.example leaves LORALOOP_DATABASE_URL, LORALOOP_CONFIG_FILE and others empty.
    env.setenv("LORALOOP_CONFIG_FILE", "")
    env.setenv("LORALOOP_DATABASE_URL", "")
    migrate_sqlite(tmp_path)

    report = doctor("--check", "database")

    assert report.detail("settings").startswith("read from environment;")
    assert report.status("database") == "ok" and str(tmp_path / "home" / "loraloop.db") in report.detail("database")


# ---- one machine, no Discord: the command line's own profile; a report for scripts ----------------------------


def test_the_cli_profile_does_not_need_a_discord_token(env, tmp_path, ollama_server):
    ollama_server.add_scripted_model(BASE)
    env.setenv("OLLAMA_HOST", ollama_server.url)
    env.delenv("DISCORD_TOKEN")
    env.delenv("LORALOOP_GUILDS")
    migrate_sqlite(tmp_path)
    assert doctor().status("discord token") == "FAIL"  # the bot host's profile needs one

    report = doctor("--cli")

    assert list(report.lines) == list(NAMES)
    assert report.status("discord token") == report.status("roles") == "skip"
    assert report.status("database") == report.status("ollama") == report.status("base model") == "ok"
    assert report.exit_code == 0


def test_cli_and_worker_profiles_are_exclusive(env):
    report = doctor("--cli", "--worker")

    assert report.exit_code == 2 and "--worker and --cli" in report.output


def test_json_report_is_one_object_with_each_checks_name_status_and_message(env, unreachable_ollama_url):
    env.setenv("OLLAMA_HOST", unreachable_ollama_url)
    text = doctor("--json").output

    report = json.loads(text)

    assert text.count("\n") == 1  # one object on one line, nothing else
    assert [c["name"] for c in report["checks"]] == list(NAMES)
    assert all(set(c) == {"name", "status", "message"} and c["status"] in ("ok", "fail", "warn", "skip")
               for c in report["checks"])
    ollama = next(c for c in report["checks"] if c["name"] == "ollama")
    assert ollama["status"] == "fail" and "OLLAMA_HOST" in ollama["message"]
    assert report["ok"] is False
    assert cli("doctor", "--json").exit_code == 1
