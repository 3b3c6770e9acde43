"""``loraloop doctor``: check a deployment and explain what is wrong, one line per check.

Nothing is changed: the database is inspected, never migrated; Ollama and Redis are only asked questions; the
Discord token's shape is checked offline and the token is never printed. The exit status is 1 when any check
fails (warnings and skipped checks do not count), so the command doubles as a container healthcheck; ``--json``
prints the same report as one object for scripts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError

from bot.settings import Settings, load_settings, redact_url
from data.validation import describe

Status = Literal["ok", "FAIL", "warn", "skip"]
TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: what was checked, how it went, and what to do about it."""

    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<14}{self.detail}"


@dataclass(frozen=True, slots=True)
class GpuProbe:
    """What torch sees on this host: ``torch_version`` is None when torch is not installed."""

    torch_version: str | None = None
    cuda_version: str | None = None  # the CUDA torch was built for; None for a CPU-only build
    devices: list[str] = field(default_factory=list)


CHECKS = ("settings", "discord token", "roles", "database", "ollama", "base model", "deploy path", "redis", "gpu")
_CHECK_NAMES = ", ".join(c.replace(" ", "-") for c in CHECKS)


def doctor(
    worker: bool = typer.Option(
        False, "--worker", help="Check the GPU worker's side: Redis, Ollama, the base model and a visible GPU."),
    cli: bool = typer.Option(
        False, "--cli", help="Check what the command line needs (train, deploy, chat on one machine): no Discord "
                             "token or roles."),
    only: list[str] = typer.Option(
        None, "--check", metavar="NAME",
        help=f"Run only these checks (repeatable; settings always runs): {_CHECK_NAMES}."),
    as_json: bool = typer.Option(
        False, "--json", help="The report as one JSON object: ok, and each check's name, status and message."),
) -> None:
    """Check settings, Discord token, database, Ollama, base model, Redis and GPU; exit 1 if any check fails."""
    wanted = {name.replace("-", " ").replace("_", " ").lower() for name in only or []}
    if unknown := sorted(wanted - set(CHECKS)):
        typer.echo(f"error: unknown check(s) {', '.join(unknown)}; choose from {_CHECK_NAMES}", err=True)
        raise typer.Exit(2)
    if worker and cli:
        typer.echo("error: --worker and --cli are two different hosts' checks: choose one", err=True)
        raise typer.Exit(2)
    checks = run_checks(worker=worker, cli=cli, only=wanted or None)
    failed = [c.name for c in checks if c.status == "FAIL"]
    if as_json:
        typer.echo(json.dumps({"ok": not failed, "checks": [
            {"name": c.name, "status": c.status.lower(), "message": c.detail} for c in checks]}, ensure_ascii=False))
        raise typer.Exit(1 if failed else 0)
    for check in checks:
        typer.secho(check.line(), fg={"ok": "green", "FAIL": "red", "warn": "yellow"}.get(check.status))
    if failed:
        typer.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}")
        raise typer.Exit(1)
    typer.echo("all checks passed")


def run_checks(
    *, worker: bool = False, cli: bool = False, only: set[str] | None = None,
    probe: Callable[[], GpuProbe] | None = None,
) -> list[Check]:
    """The checks for the bot host (or, with ``worker``, the GPU worker; with ``cli``, a machine that runs only the
    command line), in the order they are printed.

    ``only`` limits them to those names (the settings are always read: every other check needs them).
    """
    config, check = settings_check()
    if config is None:
        return [check]

    def want(*names: str) -> bool:
        return only is None or any(n in only for n in names)

    checks = [check]
    if worker:
        checks.append(Check("discord token", "skip", "not needed on the worker"))
        checks.append(Check("roles", "skip", "not needed on the worker"))
        checks.append(Check("database", "skip", "the worker keeps no database (the bot records the runs)"))
    elif cli:
        checks.append(Check("discord token", "skip", "not needed by the command line (only the bot logs in)"))
        checks.append(Check("roles", "skip", "not needed by the command line"))
        if want("database"):
            checks.append(database_check(config.resolved_database_url))
    else:
        if want("discord token"):
            token = config.discord_token.get_secret_value() if config.discord_token else None
            checks.append(discord_token_check(token))
        if want("roles"):
            checks.append(roles_check(config))
        if want("database"):
            checks.append(database_check(config.resolved_database_url))
    if want("ollama", "base model", "deploy path"):
        if worker and config.worker_ollama_host:
            host, setting = config.worker_ollama_host, "LORALOOP_WORKER_OLLAMA_HOST"
        else:
            host, setting = config.ollama_host, "OLLAMA_HOST"
        checks.extend(asyncio.run(ollama_checks(host, config.ollama_base, setting, config.deploy.mode,
                                                config.deploy.quantize)))
    if want("redis"):
        if worker or config.dispatcher == "celery":
            checks.append(redis_check(config.redis_url))
        else:
            checks.append(Check("redis", "skip", "not used (dispatcher=local)"))
    if want("gpu"):
        checks.append(gpu_check((probe or probe_gpu)(), worker=worker, dispatcher=config.dispatcher))
    # The base model cannot be checked without Ollama, nor the deploy path without the base: their lines come along.
    return [c for c in checks if c.name == "settings" or want(c.name)
            or (c.name == "ollama" and want("base model", "deploy path"))
            or (c.name == "base model" and want("deploy path"))]


# ---- settings -----------------------------------------------------------------------------------------------


def settings_check() -> tuple[Settings | None, Check]:
    try:
        config = load_settings()
    except ValidationError as exc:
        return None, Check("settings", "FAIL", f"invalid: {describe(exc, root='settings')}")
    except FileNotFoundError as exc:
        return None, Check("settings", "FAIL", str(exc))
    sources = ["environment"]
    if Path(".env").is_file():
        sources.append(f"{Path('.env').resolve()}")
    if config.config_file and config.config_file.is_file():  # an empty LORALOOP_CONFIG_FILE reads as "."
        sources.append(str(config.config_file))
    return config, Check("settings", "ok", f"read from {', '.join(sources)}; home {config.home}, "
                                           f"model {config.model_name} on {config.ollama_base}")


# ---- Discord ------------------------------------------------------------------------------------------------

_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")


def discord_token_check(token: str | None) -> Check:
    """The token's shape only (Discord is not asked): ``base64url(id).timestamp.hmac``. Never prints the token."""
    name = "discord token"
    if not token or not token.strip():
        return Check(name, "FAIL", "DISCORD_TOKEN is not set: Discord developer portal → your application → Bot "
                                   "→ Reset Token, then put it in DISCORD_TOKEN (.env)")
    token = token.strip()
    if token.lower().startswith("bot "):
        return Check(name, "FAIL", "DISCORD_TOKEN starts with 'Bot ': set the token alone, without the prefix")
    if token[0] in "\"'" or token[-1] in "\"'":
        return Check(name, "FAIL", "DISCORD_TOKEN is wrapped in quotes: remove them")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.match(p) for p in parts):
        return Check(name, "FAIL", f"DISCORD_TOKEN does not look like a bot token: expected three base64url parts "
                                   f"separated by dots, got {len(parts)} part(s) of {len(token)} characters "
                                   "(an application id, client secret or public key is not the bot token)")
    try:
        bot_id = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        bot_id = ""
    if not bot_id.isdigit():
        return Check(name, "FAIL", "DISCORD_TOKEN does not look like a bot token: its first part is not a "
                                   "base64-encoded bot id")
    return Check(name, "ok", f"shaped like a bot token for bot id {bot_id} (Discord itself is asked when the bot "
                             "logs in)")


def roles_check(config: Settings) -> Check:
    configured = {g: r for g, r in config.guilds.items() if r.expert_role_ids or r.admin_role_ids}
    if not configured:
        return Check("roles", "warn", "no guild has expert or admin roles configured: nobody can review, approve "
                                      "a retrain or roll back (see README, 'Quick start')")
    no_admin = [str(g) for g, r in configured.items() if not r.admin_role_ids]
    detail = f"{len(configured)} guild(s) with expert/admin roles"
    if no_admin:
        return Check("roles", "warn", f"{detail}; no admin role in guild(s) {', '.join(no_admin)}: nobody there "
                                      "can approve directly, promote or roll back")
    return Check("roles", "ok", detail)


# ---- database -----------------------------------------------------------------------------------------------


def head_revision() -> str:
    """The newest Alembic revision this code knows."""
    from alembic.script import ScriptDirectory

    from data.migrations import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def database_check(url: str) -> Check:
    """Connect, read ``alembic_version`` and compare it with the code's head; never creates or migrates."""
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url

    from data.migrations import alembic_config

    shown = redact_url(url)
    upgrade = "run `loraloop db upgrade` (the bot also migrates when it starts)"
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path and path != ":memory:" and not Path(path).is_file():  # connecting would create it
            return Check("database", "FAIL", f"no database at {path} yet: {upgrade}")
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    try:
        current = asyncio.run(_current_revision(url, asyncpg=parsed.get_driver_name() == "asyncpg"))
    except Exception as exc:  # any driver's connection error: its message is the explanation
        return Check("database", "FAIL", f"cannot connect to {shown}: {_why(exc)}")
    if current == head:
        return Check("database", "ok", f"{shown} reachable, migrated (revision {head})")
    if current is None:
        return Check("database", "FAIL", f"{shown} reachable but not migrated (no schema; code expects revision "
                                         f"{head}): {upgrade}")
    try:
        known = script.get_revision(current) is not None
    except Exception:  # alembic raises its own errors for an unknown id
        known = False
    if not known:
        return Check("database", "FAIL", f"{shown} is at revision {current}, which this loraloop does not know "
                                         f"(migrated by a newer version?); code expects {head}")
    return Check("database", "FAIL", f"{shown} is at revision {current}, code expects {head}: {upgrade}")


async def _current_revision(url: str, *, asyncpg: bool) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, connect_args={"timeout": TIMEOUT_S} if asyncpg else {})
    try:
        async with asyncio.timeout(TIMEOUT_S * 2), engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    finally:
        await engine.dispose()


# ---- Ollama -------------------------------------------------------------------------------------------------


async def ollama_checks(host: str, base_tag: str, setting: str = "OLLAMA_HOST", mode: str = "auto",
                        quantize: str | None = None) -> list[Check]:
    """Ollama's version; whether the clean base tag every fine-tune builds on is present, and what Ollama says
    about it (engine, renderer); which registration path a deploy takes there, warning when ``mode`` cannot work."""
    from deploy.ollama import ModelNotFound, OllamaClient, OllamaError, OllamaUnavailable
    from deploy.registration import DaemonFacts, PathUnavailable, choose_path, parse_version

    unreachable = [Check("base model", "skip", f"{base_tag}: Ollama not reachable"),
                   Check("deploy path", "skip", "Ollama not reachable")]
    if problem := _address_problem(host, setting):
        return [Check("ollama", "FAIL", problem), *unreachable]
    async with OllamaClient(host, timeout=TIMEOUT_S) as client:
        try:
            version = await client.version()
        except OllamaError as exc:
            if unresolved := _unresolvable(client.host):
                why = f"{unresolved}: fix {setting} (in docker compose Ollama's host is the service name, `ollama`)"
            elif isinstance(exc, OllamaUnavailable) or exc.status is None:
                why = f"{exc}: start it (`docker compose up -d ollama`, or `ollama serve`) or fix {setting}"
            else:  # something answers there, but not as Ollama does
                why = f"{client.host} answered HTTP {exc.status} to GET /api/version: is {setting} Ollama's address?"
            return [Check("ollama", "FAIL", why), *unreachable]
        release = "a development build" if parse_version(version) is None else "a release"
        checks = [Check("ollama", "ok", f"{client.host} reachable, Ollama {version or '(no version)'} ({release})")]
        try:
            shown = await client.show(base_tag)
        except ModelNotFound:
            return [*checks, Check("base model", "FAIL", f"{base_tag} is not in Ollama: run `ollama pull {base_tag}` "
                                                        "on the Ollama host (`docker compose exec ollama ollama pull "
                                                        f"{base_tag}`), or fix LORALOOP_OLLAMA_BASE"),
                    Check("deploy path", "skip", f"{base_tag} is not in Ollama")]
        except OllamaError as exc:
            return [*checks, Check("base model", "FAIL", f"cannot read {base_tag} from Ollama: {exc}"),
                    Check("deploy path", "skip", f"{base_tag} could not be read")]
    facts = DaemonFacts.from_show(client.host, version, base_tag, shown)
    checks.append(Check("base model", "ok", f"{base_tag} present; {facts.summary().split(': ', 1)[1]}"))
    try:
        choice = choose_path(mode, facts)
    except PathUnavailable as exc:
        return [*checks, Check("deploy path", "warn", str(exc))]
    prompt_check = ("Ollama judges the served prompt (_debug_render_only)" if facts.renders_debug else
                    "no _debug_render_only here: the served prompt is checked by loraloop's interpreter only")
    detail = f"deploy_mode {mode}: {choice.path} path ({choice.reason}); {prompt_check}"
    if choice.path == "adapter" and quantize:
        return [*checks, Check("deploy path", "warn", f"{detail}; deploy_quantize {quantize} is ignored: it applies "
                                                      "to the gguf and merged paths only")]
    if mode == "merged" and facts.adapter_refusal() is None and not facts.template_ignored():
        detail += " (auto would take the adapter path here: far fewer bytes per retrain)"
    return [*checks, Check("deploy path", "ok", detail)]


def _address_problem(host: str, setting: str) -> str | None:
    """Why OLLAMA_HOST cannot be Ollama's native API before anything is asked: a /v1 path is the OpenAI one."""
    from bot.settings import parse_ollama_host

    try:
        url = parse_ollama_host(host)
    except ValueError as exc:
        return f"{exc}: fix {setting}"
    path = urlsplit(url).path.rstrip("/")
    if path == "/v1" or path.endswith("/v1"):
        fixed = url.rstrip("/").removesuffix("/v1")
        return (f"{setting} {host!r} ends in /v1, Ollama's OpenAI-compatible API; loraloop uses the native one "
                f"(/api/…): set {setting} to {fixed}")
    return None


def _unresolvable(url: str) -> str | None:
    """``cannot resolve host …`` when the URL's host name has no address (a typo, or a name from another network)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve host {parts.hostname!r} (from {url}): {exc.strerror or exc}"
    except OSError:
        return None
    return None


# ---- Redis --------------------------------------------------------------------------------------------------


def redis_check(url: str) -> Check:
    import redis

    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
        try:
            version = client.info("server").get("redis_version", "?")
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return Check("redis", "FAIL", f"cannot reach Redis at {shown}: {_why(exc)}; start it (`docker compose up "
                                      "-d redis`) or fix LORALOOP_REDIS_URL")
    return Check("redis", "ok", f"{shown} reachable, Redis {version}")


# ---- GPU ----------------------------------------------------------------------------------------------------


def probe_gpu() -> GpuProbe:
    """Ask torch (if installed) which CUDA devices it can use."""
    try:
        import torch
    except ImportError:
        return GpuProbe()
    devices: list[str] = []
    if torch.cuda.is_available():
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return GpuProbe(torch.__version__, torch.version.cuda, devices)


def gpu_check(probe: GpuProbe, *, worker: bool, dispatcher: str) -> Check:
    """A GPU is required on the worker; on the bot host it only matters when retrains run there (local)."""
    if probe.devices:
        names = ", ".join(probe.devices)
        return Check("gpu", "ok", f"{len(probe.devices)} CUDA device(s): {names} (torch {probe.torch_version}, "
                                  f"CUDA {probe.cuda_version})")
    if probe.torch_version is None:
        if worker:
            return Check("gpu", "FAIL", "torch is not installed: the worker needs the ml extra "
                                        "(pip install '.[ml]', or the worker image)")
        return Check("gpu", "skip", "torch not installed (a bot-only host trains nothing)")
    build = f"torch {probe.torch_version}, " + (f"built for CUDA {probe.cuda_version}" if probe.cuda_version
                                                  else "a CPU-only build")
    if worker:
        return Check("gpu", "FAIL", f"no CUDA GPU visible ({build}): check the NVIDIA driver (nvidia-smi), the "
                                    "NVIDIA Container Toolkit and the worker's GPU reservation")
    if dispatcher == "local":
        return Check("gpu", "warn", f"no CUDA GPU visible ({build}): retrains run on this host (dispatcher=local), "
                                    "on the CPU, which only suits tiny models")
    return Check("gpu", "skip", f"no CUDA GPU visible here ({build}); retrains run on the worker: check it with "
                                "`loraloop doctor --worker`")


# ---- helpers ------------------------------------------------------------------------------------------------


def _why(exc: BaseException) -> str:
    """One line from a driver's exception, without SQLAlchemy's statement and background link."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_S * 2:g} s"
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{inner.__class__.__name__}: {text}" if text else inner.__class__.__name__
