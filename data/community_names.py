"""Community names and the model lineage they give (data/communities.py): the rules alone, without the database
stack, so the GPU worker checks a job's community and candidate tag with the very functions the store uses."""

from __future__ import annotations

import re

from data.errors import StoreError

DEFAULT_COMMUNITY = "default"
# The longest community name (a column's width in data/models.py; Ollama tags are built from it).
COMMUNITY_MAX = 40
# Lower-case letters, digits, - and _: the name goes into Ollama tags (loraloop-<model>-<community>:vN).
NAME = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{COMMUNITY_MAX - 1}}}")


class BadCommunityName(StoreError, ValueError):
    """A community name that cannot be used (it becomes part of Ollama tags)."""


def check_name(name: str) -> str:
    """``name`` if it is a usable community name; raises BadCommunityName saying what is allowed."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BadCommunityName(f"{name!r} is not a community name: use 1–{COMMUNITY_MAX} lower-case letters, "
                               "digits, '-' and '_', starting with a letter or digit")
    return name


def guild_community(guild_id: int) -> str:
    """The community of a configured guild whose config names none: its own."""
    return f"guild-{guild_id}"


def lineage_name(model_name: str, community: str) -> str:
    """The ModelVersion name of a community's fine-tunes (their tags are ``loraloop-<name>:v<N>``): the model name
    alone for the ``default`` community, as before communities existed."""
    return model_name if community == DEFAULT_COMMUNITY else f"{model_name}-{community}"
