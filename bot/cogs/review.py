"""Review: /review shows the next pending example the caller did not write, with rating buttons; /review
what:preferences the next pending preference record (conversation, chosen and rejected answer) to rate the same
way; /review what:bad answers lists 👎 answers nobody has written a better answer for (the answer written goes to
review). Each shows the community of the server it is used in, and is refused in a server the settings do not
configure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from discord import app_commands
from discord.ext import commands

from bot.permissions import experts_only, require_community
from bot.views import (
    BetterAnswerButton,
    PreferenceButton,
    ReviewButton,
    show_bad_answers,
    show_next_for_review,
    show_next_preference,
)

if TYPE_CHECKING:
    from bot.app import LoraloopBot
    from bot.permissions import Interaction


class ReviewCog(commands.Cog):
    def __init__(self, bot: LoraloopBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ReviewButton, PreferenceButton, BetterAnswerButton)

    async def interaction_check(self, interaction: Interaction) -> bool:  # type: ignore[override]  # see Interaction
        return await require_community(interaction)

    @app_commands.command(name="review", description="Rate the next example waiting for review (experts).")
    @app_commands.guild_only()
    @app_commands.describe(what="examples: pending pairs; preferences: chosen vs rejected answers; bad answers: "
                                "👎 ones to fix")
    @experts_only("Only experts can review examples.")
    async def review(self, interaction: Interaction,
                     what: Literal["examples", "preferences", "bad answers"] = "examples") -> None:
        if what == "bad answers":
            return await show_bad_answers(interaction)
        if what == "preferences":
            return await show_next_preference(interaction)
        await show_next_for_review(interaction)


async def setup(bot: LoraloopBot) -> None:
    await bot.add_cog(ReviewCog(bot))
