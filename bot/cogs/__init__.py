"""One cog per feature; ``EXTENSIONS`` is what the bot loads."""

EXTENSIONS = ("bot.cogs.chat", "bot.cogs.teach", "bot.cogs.review", "bot.cogs.dataset", "bot.cogs.models",
              "bot.cogs.retrain")
