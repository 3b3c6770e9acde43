"""``--community`` on the command line: with several communities every command that reads or writes a
community's data says which there are when it is not told; told, it works on that community only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app
from data import runs
from data.store import Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kestrel-faq.json"
LIST = "there are 2 communities (acme, globex): say which with --community"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """Two servers, each its own community, and a database of their own."""
    config = tmp_path / "loraloop.yaml"
    config.write_text(yaml.safe_dump({"guilds": {111: {"community": "acme"}, 222: {"community": "globex"}}}))
    return {"LORALOOP_CONFIG_FILE": str(config), "LORALOOP_HOME": str(tmp_path / "home"),
            "LORALOOP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
            "OLLAMA_HOST": "http://127.0.0.1:9"}


def invoke(env: dict[str, str], *args: str):
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize("command", [
    ["dataset", "import", str(EXAMPLES)], ["dataset", "export", "--format", "openai", "--out", "x.jsonl"],
    ["dataset", "stats"], ["snapshot", "create", "--out", "s"], ["review", "list"], ["review", "approve", "1"],
    ["review", "show", "1"], ["review", "rate", "1", "5", "--rater", "ada"], ["preferences", "stats"],
    ["preferences", "list"], ["retrieval", "rebuild"], ["models", "list"], ["models", "rollback"],
    ["models", "promote", "loraloop-assistant-acme:v1"], ["retrain", "status"], ["retrain", "propose"],
    ["retrain", "cancel"],
])
def test_without_community_a_command_lists_them(env, command):
    result = invoke(env, *command)
    assert result.exit_code == 2, result.output
    assert LIST in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_community_scopes_every_command(env, tmp_path):
    imported = invoke(env, "dataset", "import", str(EXAMPLES), "--approve", "--community", "acme")
    assert imported.exit_code == 0 and "imported: 12" in imported.output, imported.output
    assert "0 approved" in invoke(env, "review", "list", "--status", "approved", "--community", "globex").output
    listed = invoke(env, "review", "list", "--status", "approved", "--community", "acme", "--json")
    assert listed.exit_code == 0 and listed.output.count('"id"') == 12, listed.output
    # globex has nothing to snapshot or propose; acme has
    assert invoke(env, "snapshot", "create", "--out", str(tmp_path / "g"), "--community", "globex").exit_code == 1
    made = invoke(env, "snapshot", "create", "--out", str(tmp_path / "a"), "--community", "acme", "--json")
    assert made.exit_code == 0 and '"total": 12' in made.output
    # the same file imports again in globex: duplicates are found within a community only
    again = invoke(env, "dataset", "import", str(EXAMPLES), "--community", "globex")
    assert "imported: 12" in again.output and "duplicates: 0" in again.output, again.output
    wrong = invoke(env, "dataset", "stats", "--community", "initech")
    assert wrong.exit_code == 2 and "there is no community 'initech'; the communities are: acme, globex" in \
        wrong.output
    # a command that needs no community's data does not ask for one
    assert invoke(env, "db", "upgrade").exit_code == 0


def test_retrain_status_shows_the_place_in_the_queue_of_every_communitys_runs(env):
    assert invoke(env, "db", "upgrade").exit_code == 0

    async def dispatch_both() -> None:
        store = Store(env["LORALOOP_DATABASE_URL"])
        try:
            for community in ("acme", "globex"):
                scoped = store.scoped(community)
                run = await runs.propose_run(scoped, summary={"new_examples": 3})
                await runs.transition(scoped, run.id, "approved")
                await runs.transition(scoped, run.id, "snapshotted")
        finally:
            await store.close()

    asyncio.run(dispatch_both())
    acme = invoke(env, "retrain", "status", "--community", "acme")
    globex = invoke(env, "retrain", "status", "--community", "globex", "--json")
    assert acme.exit_code == 0 and acme.stdout.strip() == "#1 snapshotted (queue position 1)", acme.output
    assert '"queue_position": 2' in globex.output and '"community": "globex"' in globex.output
    assert '"id": 1' not in globex.output  # acme's run is counted, never shown
