"""All configuration, read in one place: environment (``LORALOOP_*``), ``.env`` and an optional YAML file.

The settings a GPU host reads too (home, model identity, Ollama, Redis, worker_*) and how the file is found are
declared once in worker/settings.py :class:`~worker.settings.WorkerSettings`; :class:`Settings` adds the bot's.
Two groups nest: ``deploy:`` (deploy/config.py :class:`~deploy.config.DeploySettings`) and ``review:``
(:class:`ReviewSettings`), set as ``deploy: {mode: gguf}`` in YAML or ``LORALOOP_DEPLOY__MODE`` in the environment;
their settings' earlier flat names (``deploy_mode``, ``gate_paraphrases``, ``approve_mean``…) are still read
(:data:`FLAT_NAMES`).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from data.community_names import DEFAULT_COMMUNITY, check_name, guild_community
from data.review import ReviewPolicy
from data.validation import describe
from deploy.config import DeployConfig, DeploySettings
from deploy.options import check_options, serve_options_from
from trainer.config import DEFAULT_SYSTEM_PROMPT  # torch-free; one default for the bot and the trainer
from worker.settings import WorkerSettings
from worker.settings import parse_ollama_host as parse_ollama_host  # re-exported: the bot's code reads them here
from worker.settings import redact_text as redact_text
from worker.settings import redact_url as redact_url


class GuildRoles(BaseModel):
    """One configured guild: which Discord roles count as experts and admins, and its community."""

    expert_role_ids: list[int] = Field(default_factory=list)
    admin_role_ids: list[int] = Field(default_factory=list)
    # Whether members without the expert role may /teach (their pairs always enter review as pending).
    allow_non_expert_teach: bool = True
    experts_channel_id: int | None = None
    # The community whose knowledge this guild shares (data/communities.py); unset: its own, guild-<id>.
    community: str | None = None

    @field_validator("community")
    @classmethod
    def _community_name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)


class CommunitySettings(BaseModel):
    """Per-community overrides of the retrain schedule (unset: the global retrain_cron / threshold)."""

    model_config = {"extra": "forbid"}

    retrain_cron: str | None = None
    retrain_min_new_examples: int | None = Field(default=None, ge=1)

    @field_validator("retrain_cron")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        return None if value is None else check_crontab(value)


def check_crontab(value: str) -> str:
    """A crontab line APScheduler accepts (UTC); the scheduler would otherwise fail only when it starts."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a crontab line (minute hour day month weekday): {exc}") from None
    return value


# data/review.py's rule has the review defaults (the store uses them without settings); the settings start there.
_POLICY = ReviewPolicy()


class ReviewSettings(BaseModel):
    """How people's judgements count: ratings of a pair, 👍/👎 on a version, the blind comparison of a candidate.
    The ``review:`` settings (``LORALOOP_REVIEW__<NAME>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rating_quorum: int = Field(default=_POLICY.quorum, ge=1, description="Ratings needed before a pair is decided.")
    approve_mean: float = Field(default=_POLICY.approve_mean, ge=1, le=5,
                                description="A pair whose mean rating is at least this is approved.")
    reject_mean: float = Field(default=_POLICY.reject_mean, ge=1, le=5,
                               description="A pair whose mean rating is at most this is rejected.")
    quality_min_votes: int = Field(
        default=20, ge=1, description="Distinct voters each version needs before a 👎-rate regression can be called.")
    compare_questions: int = Field(
        default=5, ge=1, le=25, description="Questions in the experts' blind comparison of a candidate.")
    compare_automatic: bool = Field(
        default=False, description="automatic mode: experts also compare a promoted version with the previous one.")

    @model_validator(mode="after")
    def _decidable(self) -> ReviewSettings:
        # Checked at load, not when the bot builds its review policy (after connecting to Discord).
        if self.approve_mean <= self.reject_mean:
            raise ValueError(f"approve_mean ({self.approve_mean}) must be above reject_mean ({self.reject_mean}): "
                             "a pair between the two waits for more ratings")
        return self

    def policy(self) -> ReviewPolicy:
        """The store's rule for deciding a rated pair (data/review.py)."""
        return ReviewPolicy(self.rating_quorum, self.approve_mean, self.reject_mean)


# The flat names the grouped settings had before they were grouped, still read from the environment, .env, the YAML
# file and keywords (worker/settings.py FlatNames): flat name → (group, name).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{f"deploy_{name}": ("deploy", name)
       for name in ("mode", "quantize", "outtype", "gate_margin", "eval_limit", "keep_versions")},
    **{f"gate_{name}": ("deploy", name) for name in ("min_eval", "max_retention_drop", "paraphrases", "consistency_n")},
    **{name: ("review", name) for name in ReviewSettings.model_fields},
}


class Settings(WorkerSettings):
    """loraloop's settings. Every field can be set as ``LORALOOP_<FIELD>`` or in the YAML file; a grouped one as
    ``LORALOOP_<GROUP>__<FIELD>`` or under its group's key."""

    flat_names = FLAT_NAMES

    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default sqlite+aiosqlite under LORALOOP_HOME."
    )

    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_TOKEN", "LORALOOP_DISCORD_TOKEN")
    )

    # Model identity (model_name, base_model: WorkerSettings).
    ollama_base: str = Field(default="qwen2.5:0.5b-instruct", description="The clean Ollama base tag.")
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    review: ReviewSettings = Field(
        default_factory=ReviewSettings, description="How ratings, votes and comparisons count (ReviewSettings).")

    eval_fraction: float = Field(default=0.1, ge=0, lt=1)

    deploy: DeploySettings = Field(
        default_factory=DeploySettings, description="How a version is registered, judged and kept (deploy/config.py "
                                                    "DeploySettings; README \"What the gate checks\").")
    general_prompts_file: Path | None = Field(
        default=None, description="JSON set of general prompts for the retention measurement; default: the "
                                  "shipped data/general_prompts/general-v1.json.")
    serve_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Sampling options users get (temperature, top_p, top_k, num_ctx, repeat_penalty, num_predict…), "
                    "over deploy/options.py SERVE_OPTIONS; written into each fine-tune and sent with chats to the "
                    "base. num_predict defaults to chat_max_tokens.")

    # Retraining (bot/retrain): when to propose, who approves, where the training runs.
    retrain_cron: str = Field(default="0 3 * * *", description="When to check for enough new data (crontab, UTC).")
    retrain_min_new_examples: int = Field(default=50, ge=1, description="New approved examples that warrant a run.")
    retrain_quorum: int = Field(default=2, ge=1, description="Distinct experts whose approval starts a run.")
    retrain_expiry_h: float = Field(default=48.0, gt=0, description="A proposal dies after this many hours.")
    retrain_reminder_h: float = Field(default=12.0, ge=0, description="Remind experts this long before expiry.")
    retrain_promotion: Literal["automatic", "manual"] = Field(
        default="automatic", description="manual: a candidate that passed the gate waits for an expert's promote.")
    retrain_train: dict[str, Any] = Field(
        default_factory=dict, description="Trainer settings for scheduled runs (trainer/config.py TrainConfig).")
    dispatcher: Literal["local", "celery"] = Field(
        default="local", description="local: train in a subprocess here; celery: on a GPU worker over Redis.")
    worker_heartbeat_timeout_s: float = Field(
        default=60.0, gt=0, description="A running job with no heartbeat for this long is failed (worker lost).")

    # Discord.
    guilds: dict[int, GuildRoles] = Field(
        default_factory=dict, description="Configured guilds. A guild not listed gets base-model chat only: no "
                                          "teaching, review, retrieval or model commands there.")
    dm_community: str | None = Field(
        default=None, description="The community whose knowledge DMs use (their answers are its experts' to "
                                  "see); unset: DMs are answered by the base model, without retrieval.")
    communities: dict[str, CommunitySettings] = Field(
        default_factory=dict, description="Per-community retrain schedule overrides, by community name.")
    chat_cooldown_s: float = 3.0
    max_import_bytes: int = 5 * 1024 * 1024
    max_field_chars: int = Field(
        default=4000, ge=1, le=4000, description="Longest text in a Discord form (/teach, suggestions, edits): "
                                                 "Discord's own limit for a modal's text input.")
    max_stored_chars: int = Field(
        default=32000, ge=1, description="Longest message text a file import (/import, dataset import) may hold: "
                                         "LLaMA-Factory-style files carry long answers that no form ever edits.")
    max_pairs_per_user_hour: int = Field(
        default=200, ge=0,
        description="Pairs one user may submit per hour (/teach, suggestions, /import); 0: no limit.")
    chat_max_tokens: int = Field(default=1024, ge=16, description="Longest chat answer, in tokens (num_predict).")
    # An /ask answer is streamed through its interaction's token, which Discord voids 15 min after the command
    # (401 50027): the cap keeps the answer, and what precedes it (retrieval, the queue), well inside that.
    chat_time_limit_s: float = Field(default=120.0, gt=0, le=600,
                                     description="A chat answer stops streaming after this (at most 600 s).")
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

    @field_validator("retrain_cron")
    @classmethod
    def _retrain_crontab(cls, value: str) -> str:
        return check_crontab(value)

    @field_validator("serve_options")
    @classmethod
    def _typed_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Ollama would create the model and then refuse every chat with it: refuse at start-up instead.
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
            raise ValueError(describe(exc, prefix="retrain_train.", show_input=True,
                                      unknown="not a trainer setting (trainer/config.py TrainConfig)")) from None
        return value

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.home / 'loraloop.db').resolve()}"

    def roles_for(self, guild_id: int | None) -> GuildRoles:
        return self.guilds.get(guild_id or 0, GuildRoles())

    def deploy_config(self, **overrides: Any) -> DeployConfig:
        """The deploy configuration: the ``deploy:`` settings, the model they apply to and the options it serves."""
        values: dict[str, Any] = {
            **self.deploy.model_dump(), "model_name": self.model_name, "ollama_base": self.ollama_base,
            "chat_system_prompt": self.system_prompt or None, "serve_options": serve_options_from(self)}
        return DeployConfig(**{**values, **overrides})

    # ---- communities (data/communities.py) ------------------------------------------------------------

    @model_validator(mode="after")
    def _known_communities(self) -> Settings:
        names = set(self.community_names())
        if self.dm_community is not None and self.dm_community not in names:
            raise ValueError(f"dm_community {self.dm_community!r} is not the community of any configured guild "
                             f"(they are: {', '.join(sorted(names))})")
        unknown = sorted(set(self.communities) - names)
        if unknown:
            raise ValueError(f"communities: {', '.join(map(repr, unknown))} is not the community of any configured "
                             f"guild (they are: {', '.join(sorted(names))})")
        return self

    def community_of_guild(self, guild_id: int | None) -> str | None:
        """The community a guild belongs to; None for a guild the settings do not configure (and for None)."""
        if guild_id is None or guild_id not in self.guilds:
            return None
        return self._community_of(guild_id)

    def _community_of(self, guild_id: int) -> str:
        """A configured guild's community: its ``community:``, else its own."""
        return self.guilds[guild_id].community or guild_community(guild_id)

    def community_for(self, guild_id: int | None) -> str | None:
        """The community of a message or interaction: its guild's, or dm_community in a DM; None: none."""
        return self.dm_community if guild_id is None else self.community_of_guild(guild_id)

    def community_names(self) -> list[str]:
        """Every community, in the order of the guilds configuring them; ``default`` alone without any guild
        (a command-line setup with no Discord)."""
        if not self.guilds:
            return [DEFAULT_COMMUNITY]
        return list(dict.fromkeys(self._community_of(g) for g in self.guilds))

    def guilds_of(self, community: str) -> list[int]:
        return [g for g in self.guilds if self.community_of_guild(g) == community]

    def experts_channel_of(self, community: str) -> int | None:
        """Where a community's experts are told things: the first of its guilds' experts channels."""
        return next((self.guilds[g].experts_channel_id for g in self.guilds_of(community)
                     if self.guilds[g].experts_channel_id), None)

    def retrain_schedule(self, community: str) -> tuple[str, int]:
        """(cron, new approved examples that warrant a run) for a community."""
        own = self.communities.get(community, CommunitySettings())
        return (own.retrain_cron or self.retrain_cron,
                own.retrain_min_new_examples or self.retrain_min_new_examples)

    def guild_communities(self) -> dict[int, str]:
        """Each configured guild's community (what Store.assign_communities maps old rows by)."""
        return {g: self._community_of(g) for g in self.guilds}

    def resolve_community(self, name: str | None) -> str:
        """The community a command-line command works on: ``name``, or the only one; ValueError listing them."""
        names = self.community_names()
        if name is None:
            if len(names) == 1:
                return names[0]
            raise ValueError(f"there are {len(names)} communities ({', '.join(names)}): say which with --community")
        if name not in names:
            raise ValueError(f"there is no community {name!r}; the communities are: {', '.join(names)}")
        return name


def load_settings(**overrides: Any) -> Settings:
    """Read the settings once; the CLI calls this and passes the object down."""
    return Settings(**overrides)
