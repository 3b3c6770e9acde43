"""A logged-in LoraloopBot talking to the recording Discord server and the Ollama-API test server."""

from __future__ import annotations

import pytest

from bot.app import LoraloopBot
from bot.settings import GuildRoles, Settings
from data.review import ReviewPolicy
from data.store import Store
from tests.fixtures.discord import ADMIN_ROLE, EXPERT_ROLE, GUILD_ID, Gateway

BASE_TAG = "tiny-base:latest"
FAKE_TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAw.GAbCdE.fake-token-for-tests-0123456789abcdef"


def make_settings(tmp_path, ollama_url: str, **overrides) -> Settings:
    values = dict(
        home=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", ollama_host=ollama_url,
        ollama_base=BASE_TAG, system_prompt="You are terse.", chat_cooldown_s=0, rating_quorum=2,
        guilds={GUILD_ID: GuildRoles(expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE],
                                     allow_non_expert_teach=False)},
    )
    values.update(overrides)
    return Settings(**values)


async def start_bot(settings: Settings, **options) -> LoraloopBot:
    """``options``: LoraloopBot's keyword arguments (dispatcher, run_scheduler, …)."""
    store = Store(settings.resolved_database_url,
                  policy=ReviewPolicy(settings.rating_quorum, settings.approve_mean, settings.reject_mean))
    bot = LoraloopBot(settings, store=store, **options)
    await bot.login(FAKE_TOKEN)  # GET /users/@me, application info, setup_hook (migrate, cogs, sync)
    return bot


@pytest.fixture
def message_content_intent() -> bool:
    """Whether the operator enabled the privileged intent (off, Discord's default). Chat-path test modules
    override this fixture with ``params=[False, True]`` to run both ways."""
    return False


@pytest.fixture
def settings(tmp_path, ollama_server, message_content_intent):
    return make_settings(tmp_path, ollama_server.url, message_content_intent=message_content_intent)


@pytest.fixture
async def bot(discord_api, settings):
    # The developer portal's toggle follows the operator's setting (a mismatch fails to connect, see Gateway).
    discord_api.message_content_intent = settings.message_content_intent
    bot = await start_bot(settings)
    try:
        yield bot
    finally:
        await bot.close()


@pytest.fixture
def gateway(bot, discord_api) -> Gateway:
    return Gateway(bot, discord_api)
