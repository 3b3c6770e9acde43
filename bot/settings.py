"""All configuration, read in one place: environment (``LORALOOP_*``), ``.env`` and an optional YAML file."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class GuildRoles(BaseModel):
    """Which Discord roles count as experts and admins in one guild."""

    expert_role_ids: list[int] = Field(default_factory=list)
    admin_role_ids: list[int] = Field(default_factory=list)
    # Whether members without the expert role may /teach (their pairs always enter review as pending).
    allow_non_expert_teach: bool = True
    experts_channel_id: int | None = None


class Settings(BaseSettings):
    """loraloop's settings. Every field can be set as ``LORALOOP_<FIELD>`` or in the YAML file."""

    model_config = SettingsConfigDict(
        env_prefix="LORALOOP_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    home: Path = Field(default=Path("./loraloop-data"), description="Where the SQLite file, snapshots, runs live.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default sqlite+aiosqlite under LORALOOP_HOME."
    )
    config_file: Path | None = Field(default=None, description="Optional YAML file with any of these settings.")

    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_TOKEN", "LORALOOP_DISCORD_TOKEN")
    )
    ollama_host: str = Field(
        default="http://127.0.0.1:11434", validation_alias=AliasChoices("OLLAMA_HOST", "LORALOOP_OLLAMA_HOST")
    )

    # Model identity.
    model_name: str = Field(default="assistant", description="Fine-tuned tags are loraloop-<model_name>:v<N>.")
    base_model: str = Field(default="Qwen/Qwen2.5-0.5B-Instruct", description="HF id or local dir to train on.")
    ollama_base: str = Field(default="qwen2.5:0.5b-instruct", description="The clean Ollama base tag.")
    system_prompt: str = "You are a helpful assistant."

    # Review policy.
    rating_quorum: int = Field(default=2, ge=1)
    approve_mean: float = Field(default=4.0, ge=1, le=5)
    reject_mean: float = Field(default=2.5, ge=1, le=5)

    eval_fraction: float = Field(default=0.1, gt=0, lt=1)

    # Deploy (adapter → Ollama): see deploy/pipeline.py DeployConfig.
    deploy_mode: Literal["auto", "adapter", "merged"] = Field(
        default="auto", description="auto: adapter where the Ollama daemon can serve one for the base, else merged; "
                                    "adapter: a GGUF LoRA on the clean base; merged: merged safetensors.")
    deploy_quantize: str | None = Field(
        default=None, description="merged path only: q4_K_M, q4_K_S, q8_0, f16, f32 or bf16 (what Ollama accepts)")
    deploy_gate_margin: float = Field(default=0.02, ge=0, description="allowed ROUGE-L drop vs the active model")
    deploy_eval_limit: int = Field(default=32, ge=0, description="eval prompts answered by each model in the gate")
    deploy_keep_versions: int = Field(default=3, ge=1, description="fine-tuned tags kept in Ollama")
    deploy_outtype: Literal["f16", "f32"] = "f16"
    # The gate's other dimensions (deploy/gate.py; README "What the gate checks").
    gate_max_retention_drop: float = Field(
        default=0.5, ge=0, description="Rejects a candidate whose NLL of the base's answers to general prompts rose "
                                       "by more than this (nats/token): general ability lost.")
    gate_paraphrases: int = Field(
        default=4, ge=0, description="Eval questions reworded by the base and answered again (0: off); a large "
                                     "drop on the rewording flags over-fitting.")
    gate_consistency_n: int = Field(
        default=3, ge=0, description="Answers per probe at the served sampling options, compared pairwise "
                                     "(below 2: off).")
    general_prompts_file: Path | None = Field(
        default=None, description="JSON set of general prompts for the retention measurement; default: the "
                                  "shipped data/general_prompts/general-v1.json.")
    serve_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Sampling options users get (temperature, top_p, top_k, num_ctx, repeat_penalty, num_predict…), "
                    "over deploy/pipeline.py SERVE_OPTIONS; written into each fine-tune and sent with chats to the "
                    "base. num_predict defaults to chat_max_tokens.")

    # Retraining (bot/retrain): when to propose, who approves, where the training runs.
    retrain_cron: str = Field(default="0 3 * * *", description="When to check for enough new data (crontab, UTC).")
    retrain_min_new_examples: int = Field(default=50, ge=1, description="New approved examples that warrant a run.")
    retrain_quorum: int = Field(default=2, ge=1, description="Distinct experts whose approval starts a run.")
    retrain_expiry_h: float = Field(default=48.0, gt=0, description="A proposal dies after this many hours.")
    retrain_reminder_h: float = Field(default=12.0, ge=0, description="Remind experts this long before expiry.")
    compare_questions: int = Field(
        default=5, ge=1, le=25, description="Questions in the experts' blind comparison of a candidate.")
    compare_automatic: bool = Field(
        default=False, description="automatic mode: experts also compare a promoted version with the previous one.")
    quality_min_votes: int = Field(
        default=20, ge=1, description="Votes each version needs before a 👎-rate regression can be called.")
    retrain_promotion: Literal["automatic", "manual"] = Field(
        default="automatic", description="manual: a candidate that passed the gate waits for an expert's promote.")
    retrain_train: dict[str, Any] = Field(
        default_factory=dict, description="Trainer settings for scheduled runs (trainer/config.py TrainConfig).")
    dispatcher: Literal["local", "celery"] = Field(
        default="local", description="local: train in a subprocess here; celery: on a GPU worker over Redis.")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Broker for the celery dispatcher.")
    worker_time_limit_s: int = Field(default=6 * 3600, ge=60, description="A training job is stopped after this.")
    worker_heartbeat_timeout_s: float = Field(
        default=60.0, gt=0, description="A running job with no heartbeat for this long is failed (worker lost).")
    worker_home: Path = Field(default=Path("./loraloop-worker"), description="Where the worker keeps its runs.")
    worker_ollama_host: str | None = Field(
        default=None, description="Ollama as the worker reaches it, if not at the bot's OLLAMA_HOST.")
    worker_allowed_base_models: list[str] = Field(
        default_factory=list,
        description="Base models a worker agrees to train besides its own base_model (a job naming another is "
                    "refused).")

    # Discord.
    guilds: dict[int, GuildRoles] = Field(default_factory=dict)
    chat_cooldown_s: float = 3.0
    max_import_bytes: int = 5 * 1024 * 1024
    max_field_chars: int = 4000
    max_pairs_per_user_hour: int = Field(
        default=200, ge=0,
        description="Pairs one user may submit per hour (/teach, suggestions, /import); 0: no limit.")
    chat_max_tokens: int = Field(default=1024, ge=16, description="Longest chat answer, in tokens (num_predict).")
    chat_time_limit_s: float = Field(default=120.0, gt=0, description="A chat answer stops streaming after this.")
    chat_thinking: Literal["spoiler", "hidden"] = Field(
        default="spoiler", description="A reasoning model's <think> block: collapsed behind a spoiler, or hidden.")
    # Retrieval (bot/retrieval.py): approved pairs shown to the model in the system message until it learns them.
    retrieval_scope: Literal["delta", "all", "off"] = Field(
        default="delta", description="delta: approved pairs the active model was not trained on; all: every "
                                     "approved pair; off: no retrieval.")
    embed_model: str | None = Field(
        default=None, description="Ollama embedding model (e.g. nomic-embed-text) for dense retrieval beside the "
                                  "lexical one; unset: lexical only.")
    retrieval_k: int = Field(default=3, ge=1, le=20, description="Most expert answers added to one chat turn.")
    retrieval_max_chars: int = Field(
        default=3000, ge=0, description="Characters of questions and answers the retrieved pairs may add.")
    retrieval_sync_s: float = Field(
        default=60.0, gt=0, description="How often the bot reads approvals made elsewhere (CLI, imports).")
    message_content_intent: bool = Field(
        default=False, description="Ask Discord for the privileged message-content intent (enable it in the "
                                   "developer portal first): the bot then reads replies to /ask answers and every "
                                   "turn of a reply chain or thread, not only messages that mention it.")

    @field_validator("deploy_quantize")
    @classmethod
    def _ollama_quantize_type(cls, value: str | None) -> str | None:
        # Ollama refuses any other type only when the merged model is created (at 3 a.m.): refuse it here.
        from deploy.registration import quantize_type

        return quantize_type(value) if value else None

    @field_validator("serve_options")
    @classmethod
    def _typed_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Ollama would create the model and then refuse every chat with it: refuse at start-up instead.
        from deploy.pipeline import check_options

        check_options(value, "serve_options")
        return value

    @field_validator("retrain_train")
    @classmethod
    def _train_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Read by the trainer only when a run starts (days later, on another host): a typo fails here, at start-up.
        from trainer.config import TrainConfig  # torch-free

        try:
            TrainConfig.model_validate(value)
        except ValidationError as exc:
            raise ValueError("; ".join(
                f"retrain_train.{'.'.join(map(str, e['loc']))}: " + (
                    "not a trainer setting (trainer/config.py TrainConfig)" if e["type"] == "extra_forbidden"
                    else f"{e['msg']} (got {e['input']!r})")
                for e in exc.errors())) from None
        return value

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        yaml_path = _yaml_path(init_settings, env_settings, dotenv_settings)
        if yaml_path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.home / 'loraloop.db').resolve()}"

    def roles_for(self, guild_id: int | None) -> GuildRoles:
        return self.guilds.get(guild_id or 0, GuildRoles())


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


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once; the CLI calls this and passes the object down."""
    return Settings(**overrides)
