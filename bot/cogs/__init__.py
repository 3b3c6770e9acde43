"""One cog per feature; ``EXTENSIONS`` is what the bot loads (the retrain cog joins it with orchestration)."""

EXTENSIONS = ("bot.cogs.chat", "bot.cogs.teach", "bot.cogs.review", "bot.cogs.dataset", "bot.cogs.models")
