"""Settings refuse at load what would only fail later, inside the running bot."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.settings import Settings


def test_approve_mean_must_be_above_reject_mean():
    with pytest.raises(ValidationError, match=r"approve_mean \(2.0\) must be above reject_mean \(3.0\)"):
        Settings(approve_mean=2.0, reject_mean=3.0)
    assert Settings(approve_mean=4.0, reject_mean=2.5).review.approve_mean == 4.0


def test_communities_come_from_the_guild_configs():
    config = Settings(guilds={1: {}, 2: {"community": "acme"}, 3: {"community": "acme"}}, dm_community="acme")
    assert config.community_names() == ["guild-1", "acme"]
    assert config.community_for(3) == "acme" and config.community_for(None) == "acme"
    assert config.community_for(99) is None  # an unconfigured guild
    assert config.guilds_of("acme") == [2, 3]
    with pytest.raises(ValueError, match="there are 2 communities"):
        config.resolve_community(None)
    assert Settings().community_names() == ["default"] and Settings().resolve_community(None) == "default"


@pytest.mark.parametrize(("values", "problem"), [
    ({"guilds": {1: {"community": "Acme Corp"}}}, "is not a community name"),
    ({"guilds": {1: {}}, "dm_community": "acme"}, "dm_community 'acme' is not the community of any configured"),
    ({"guilds": {1: {}}, "communities": {"acme": {"retrain_min_new_examples": 5}}}, "'acme' is not the community"),
])
def test_bad_community_settings_are_refused_at_load(values, problem):
    with pytest.raises(ValidationError, match=problem):
        Settings(**values)


def test_crontab_lines_are_checked_at_load():
    with pytest.raises(ValidationError, match="'0 3 \\* \\*' is not a crontab line"):
        Settings(retrain_cron="0 3 * *")
    with pytest.raises(ValidationError, match="is not a crontab line"):
        Settings(guilds={1: {}}, communities={"guild-1": {"retrain_cron": "every day"}})
    assert Settings(guilds={1: {}}, communities={"guild-1": {"retrain_cron": "0 4 * * 1"}}).retrain_schedule(
        "guild-1") == ("0 4 * * 1", 50)
