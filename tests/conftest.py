"""Each area's fixtures live in tests/fixtures/<area>.py; they are loaded here."""

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.models",
    "tests.fixtures.ollama",
    "tests.fixtures.discord",
]
