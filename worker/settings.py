"""The worker's settings: the part of loraloop's configuration a GPU host reads, and hiding secrets in what it
reports. The same ``LORALOOP_*`` environment, ``.env`` and YAML file as the bot: bot/settings.py ``Settings``
extends :class:`WorkerSettings`, so each shared setting is declared once and the worker needs no bot code; how
those places are read is declared here too (:class:`FlatNames`: grouped settings by their earlier flat names).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class JobLimits(BaseModel):
    """The largest job a worker agrees to run: worker/job.py refuses a job with any number outside these before
    anything is created. Generous for real retrains; tight enough that a job cannot hold the GPU for weeks or
    switch the gate off (a gate margin of 1 passes every candidate). Set as ``LORALOOP_WORKER_LIMITS__<NAME>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_run_id: int = Field(default=2**31 - 1, ge=1, description="Run ids are the bot's database ids.")
    max_steps: int = Field(default=100_000, ge=1, description="train.max_steps (and dpo.max_steps).")
    max_epochs: int = Field(default=100, ge=1, description="train.epochs and dpo.epochs.")
    max_lora_r: int = Field(default=256, ge=1, description="train.lora_r.")
    max_length: int = Field(default=32_768, ge=8, description="train.max_length (tokens per example).")
    max_batch_size: int = Field(default=256, ge=1, description="train.batch_size and dpo.batch_size.")
    max_grad_accum: int = Field(default=256, ge=1, description="train.grad_accum and dpo.grad_accum.")
    max_new_tokens: int = Field(
        default=4096, ge=1, description="train.max_new_tokens, train.retention_max_new_tokens.")
    max_eval_generate: int = Field(default=1000, ge=0, description="train.eval_generate.")
    max_probes: int = Field(default=64, ge=0, description="Probe questions: train.probes, deploy.probes.")
    max_retention_prompts: int = Field(default=1000, ge=0, description="train.retention_prompts.")
    max_eval_limit: int = Field(default=1000, ge=0, description="deploy.eval_limit (gate prompts per model).")
    max_gate_margin: float = Field(default=0.2, ge=0, description="deploy.gate_margin (ROUGE-L, from 0).")
    max_retention_drop: float = Field(default=1.0, ge=0, description="deploy.max_retention_drop (from 0).")
    max_paraphrases: int = Field(default=64, ge=0, description="deploy.paraphrases.")
    max_consistency_n: int = Field(default=16, ge=0, description="deploy.consistency_n.")
    max_num_ctx: int = Field(default=131_072, ge=1, description="num_ctx in deploy.serve_options/gate_options.")
    max_num_predict: int = Field(
        default=32_768, ge=1, description="num_predict in deploy.serve_options/gate_options.")
    min_heartbeat_ttl_s: float = Field(default=1.0, gt=0, description="heartbeat_ttl_s, from this.")
    max_heartbeat_ttl_s: float = Field(default=3600.0, gt=0, description="heartbeat_ttl_s, up to this.")


# The folder a checkout's earlier versions kept everything in: still used where it exists.
LOCAL_HOME = Path("loraloop-data")


def default_home() -> Path:
    """``./loraloop-data`` when it exists in the current folder (a project that has always kept its data there),
    else the per-user data folder: every command finds the same database whatever folder it runs in."""
    import platformdirs

    return LOCAL_HOME if LOCAL_HOME.is_dir() else platformdirs.user_data_path("loraloop")


class WorkerSettings(BaseSettings):
    """What the worker (and the job it runs) reads. Every field can be set as ``LORALOOP_<FIELD>`` or in the YAML
    file; settings only the bot reads are ignored here."""

    model_config = SettingsConfigDict(
        env_prefix="LORALOOP_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    home: Path = Field(default_factory=lambda: default_home(),
                       description="Where the SQLite file, snapshots and runs live: ./loraloop-data when that folder "
                                   "exists here, else the per-user data folder (~/.local/share/loraloop on Linux).")
    config_file: Path | None = Field(default=None, description="Optional YAML file with any of these settings.")
    ollama_host: str = Field(
        default="http://127.0.0.1:11434", validation_alias=AliasChoices("OLLAMA_HOST", "LORALOOP_OLLAMA_HOST")
    )

    # Model identity.
    model_name: str = Field(default="assistant", description="Fine-tuned tags are loraloop-<model_name>:v<N>.")
    base_model: str = Field(default="Qwen/Qwen2.5-0.5B-Instruct", description="HF id or local dir to train on.")

    # Where training runs (bot/retrain dispatches, worker/ serves).
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Broker for the celery dispatcher.")
    worker_time_limit_s: int = Field(default=6 * 3600, ge=60, description="A training job is stopped after this.")
    worker_home: Path = Field(default=Path("./loraloop-worker"), description="Where the worker keeps its runs.")
    llama_cpp_dir: Path | None = Field(
        default=None, description="A llama.cpp source checkout (convert_hf_to_gguf.py, gguf-py/) for the gguf deploy "
                                  "path; unset: llama-cpp-python's source archive in ~/.cache/loraloop/wheels, "
                                  "unpacked once.")
    worker_ollama_host: str | None = Field(
        default=None, description="Ollama as the worker reaches it, if not at the bot's OLLAMA_HOST.")
    worker_allowed_base_models: list[str] = Field(
        default_factory=list,
        description="Base models a worker agrees to train besides its own base_model (a job naming another is "
                    "refused).")
    worker_job_secret: SecretStr | None = Field(
        default=None,
        description="Shared by the bot and its workers (the same value on both hosts): the bot signs each job it "
                    "puts on Redis with it (HMAC-SHA256) and a worker runs only jobs signed with it. Required by "
                    "the celery dispatcher and by `loraloop worker`; e.g. `openssl rand -hex 32`.")
    worker_limits: JobLimits = Field(
        default_factory=JobLimits, description="The largest job a worker agrees to run (JobLimits).")

    # Settings read under a group by the flat name each had before: flat name → (group, name) (see FlatNames).
    flat_names: ClassVar[Mapping[str, tuple[str, str]]] = {}

    @field_validator("worker_job_secret", mode="before")
    @classmethod
    def _long_enough(cls, value: Any) -> Any:
        # Empty (the .env.example line left blank) means unset; a short one could be guessed from a job on Redis.
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str):
            text = text.strip()
            if not text:
                return None
            if len(text) < 16:
                raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return text

    @field_validator("ollama_host")
    @classmethod
    def _with_scheme(cls, value: str) -> str:
        # Read as Ollama's own clients read OLLAMA_HOST (see parse_ollama_host); a malformed value is one line.
        return parse_ollama_host(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[tuple[PydanticBaseSettingsSource, str]] = [
            (init_settings, "the arguments"), (env_settings, "the environment"), (dotenv_settings, ".env")]
        yaml_path = _yaml_path(init_settings, env_settings, dotenv_settings)
        if yaml_path is not None:
            sources.append((YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path), str(yaml_path)))
        if not cls.flat_names:
            return tuple(source for source, _ in sources)
        return tuple(FlatNames(settings_cls, source, where, cls.flat_names) for source, where in sources)


class FlatNames(PydanticBaseSettingsSource):
    """A settings source that also reads grouped settings by the flat names they had before: ``deploy_mode`` (a
    YAML key, a keyword) and ``LORALOOP_DEPLOY_MODE`` as ``deploy.mode``. One source giving both spellings of one
    setting is refused (a ValidationError naming both); between sources the usual order decides, whichever
    spelling each one used."""

    def __init__(self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource, where: str,
                 flat_names: Mapping[str, tuple[str, str]]) -> None:
        super().__init__(settings_cls)
        self.source, self.where, self.flat_names = source, where, flat_names

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # the wrapped source reads the fields (__call__)

    def __call__(self) -> dict[str, Any]:
        values = dict(self.source())
        # The environment and .env read only the fields' own names: a flat one is looked up among their variables.
        variables: Mapping[str, str | None] | None = getattr(self.source, "env_vars", None)
        prefix, delimiter = self.config.get("env_prefix", ""), self.config.get("env_nested_delimiter") or "__"
        both: list[InitErrorDetails] = []
        for flat, (group, name) in self.flat_names.items():
            variable = prefix + flat if self.config.get("case_sensitive") else (prefix + flat).lower()
            if flat in values:
                value = values.pop(flat)
            elif variables is not None and variable in variables:
                value = variables[variable]
            else:
                continue
            section = values.get(group)
            if isinstance(section, BaseModel):
                section = section.model_dump(exclude_unset=True)
            elif section is None:
                section = {}
            elif not isinstance(section, Mapping):
                continue  # the group's own value is not one: its validation says so
            if name in section:
                spellings = (flat, f"{group}.{name}") if variables is None else \
                    ((prefix + flat).upper(), f"{prefix}{group}{delimiter}{name}".upper())
                both.append(InitErrorDetails(type=PydanticCustomError(
                    "both_spellings", "set as both {flat} and {nested} in {where}: keep one",
                    {"flat": spellings[0], "nested": spellings[1], "where": self.where}), loc=(group, name),
                    input=value))
            values[group] = {**section, name: value}
        if both:
            raise ValidationError.from_exception_data(self.settings_cls.__name__, both)
        return values


def parse_ollama_host(value: str) -> str:
    """OLLAMA_HOST as Ollama's clients read it: scheme and port optional (http, port 11434; an explicit http://
    means port 80 and https:// 443, as in ollama-python), a path kept; 0.0.0.0 (where a server listens) means this
    machine. Raises ValueError with one line when the value is not an address.
    """
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest, port = "http", text, 11434
    elif scheme.lower() in ("http", "https"):
        scheme = scheme.lower()
        port = 80 if scheme == "http" else 443
    else:
        raise ValueError(f"OLLAMA_HOST {value!r}: the scheme must be http or https, not {scheme!r}")
    hostport, _, path = rest.partition("/")
    # Credentials for a proxy in front of Ollama (http://user:pass@host) are kept; httpx sends them as basic auth.
    userinfo, at, hostport = hostport.rpartition("@")
    if any(c.isspace() for c in hostport + userinfo) or "@" in hostport or (at and not sep):
        raise ValueError(f"OLLAMA_HOST {value!r} is not an address (expected host[:port] or http(s)://host[:port])")
    if hostport.startswith("["):  # [IPv6]:port
        host, _, tail = hostport[1:].partition("]")
        host, port_text = f"[{host}]", tail.removeprefix(":")
    elif hostport.count(":") > 1:  # a bare IPv6 address
        host, port_text = f"[{hostport}]", ""
    else:
        host, _, port_text = hostport.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"OLLAMA_HOST {value!r}: port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    path = path.rstrip("/")
    return f"{scheme}://{userinfo + at}{host}:{port}" + (f"/{path}" if path else "")


def _yaml_path(*sources: PydanticBaseSettingsSource) -> Path | None:
    for source in sources:
        values: dict[str, Any] = source()
        if values.get("config_file"):
            path = Path(values["config_file"])
            if not path.is_file():
                raise FileNotFoundError(f"LORALOOP_CONFIG_FILE points at {path}, which does not exist")
            return path
    return None


# Query (and fragment) parameters whose values are secrets. ``key`` is included: API keys ride in it (Google's
# ``?key=``), and hiding a harmless value is cheaper than showing a key. ``sslkey``/``sslcert`` are file paths,
# not secrets, and stay visible: they help diagnose a connection.
SECRET_PARAMS = frozenset({
    "password", "pass", "passwd", "pwd", "sslpassword", "token", "access_token", "refresh_token", "auth_token",
    "id_token", "api_key", "apikey", "api-key", "secret", "client_secret", "key", "signature", "sig",
})
# The same names as ``name=value`` in plain text (a libpq conninfo string inside an error), minus ``key`` and
# ``sig``, which are ordinary words in messages ("duplicate key=…").
_TEXT_SECRETS = sorted(SECRET_PARAMS - {"key", "sig", "pass"}, key=len, reverse=True)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", re.DOTALL)
_PARAM = re.compile(r"(^|[?&;#])([^=&;#?]+)=([^&;#]*)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
_CONNINFO_SECRET = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(n) for n in _TEXT_SECRETS) + r")(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;,'\")]+)",
    re.IGNORECASE)
_PLAIN_USER = re.compile(r"^[A-Za-z0-9._\-]{1,15}$")
REDACTED = "***"


def redact_url(url: str) -> str:
    """A URL as it may be shown: every secret it carries replaced by ``***``.

    Secrets are a password (``user:pw@``, redis' ``:pw@``), a user name alone that looks like a token
    (``https://ghp_…@host``: 16+ characters or any character outside ``[A-Za-z0-9._-]``), and the values of
    :data:`SECRET_PARAMS` in the query or fragment. Anything that is not a URL is returned unchanged.
    """
    match = _SCHEME.match(url)
    if match is None:
        return url
    scheme, rest = match.groups()
    # The authority ends before the query; the *last* "@" before it ends the user info, so a password holding
    # "@" or "/" (typed unencoded) is still hidden whole.
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:query_at], rest[query_at:]
    at = head.rfind("@")
    if at >= 0:
        userinfo, host = head[:at], head[at + 1:]
        user, colon, password = userinfo.partition(":")
        if colon and password:
            userinfo = f"{user}:{REDACTED}"
        elif not colon and user and not _PLAIN_USER.match(user):
            userinfo = REDACTED
        head = f"{userinfo}@{host}"
    return scheme + head + _PARAM.sub(_redact_param, tail)


def _redact_param(match: re.Match[str]) -> str:
    sep, name, value = match.groups()
    if unquote(name).strip().lower() in SECRET_PARAMS and value:
        value = REDACTED
    return f"{sep}{name}={value}"


def redact_text(text: str) -> str:
    """``text`` (an exception message, a failure reason) with the secrets of every URL in it redacted
    (:func:`redact_url`), and ``password=…``-style values of a libpq connection string too."""
    def url(match: re.Match[str]) -> str:
        found = match.group(0)
        # Punctuation that closes a sentence or a bracket around the URL is not part of it.
        stripped = found.rstrip(".,;:!?)]}")
        return redact_url(stripped) + found[len(stripped):]

    text = _URL_IN_TEXT.sub(url, text)
    return _CONNINFO_SECRET.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


def load_worker_settings(**overrides: Any) -> WorkerSettings:
    """Read the worker's settings once (``python -m worker``)."""
    return WorkerSettings(**overrides)
