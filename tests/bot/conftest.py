"""A logged-in LoraloopBot talking to the recording Discord server and the Ollama-API test server."""

from __future__ import annotations

import pytest

from tests.harness.bot import make_settings, start_bot
from tests.harness.discord import Gateway


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
