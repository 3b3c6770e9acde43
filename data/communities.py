"""Communities: the unit of isolation. Everything that holds knowledge or judgement belongs to exactly one.

A community is one or more Discord guilds that share knowledge (by default each configured guild is its own,
``guild-<id>``; a ``community:`` key in guild configs joins several). Without any configured guild, as on a
command line with no Discord at all, there is one community, ``default``. The store (data.store.Store) is always
scoped to one community: every query it runs names it, so no code path can read another community's rows.

Rows written before communities existed carry NULL, which no community sees, until ``assign_communities``
gives them the community of the guild they were taught in.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, not_, or_, select, update

from data.community_names import (  # re-exported: the rules, in a module the GPU worker can import
    DEFAULT_COMMUNITY as DEFAULT_COMMUNITY,
)
from data.community_names import BadCommunityName as BadCommunityName
from data.community_names import check_name as check_name
from data.community_names import guild_community as guild_community
from data.community_names import lineage_name as lineage_name
from data.models import (
    ActiveModel,
    Answer,
    Comparison,
    Example,
    ModelVersion,
    PreferenceRecord,
    Promotion,
    RetrainRun,
    SnapshotRecord,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.engine import CursorResult
    from sqlalchemy.ext.asyncio import AsyncEngine

# Tables whose rows say which guild they came from, and those that do not (they follow the deployment).
_BY_GUILD: tuple[Any, ...] = (Example, PreferenceRecord, RetrainRun, Answer)
_NO_GUILD: tuple[Any, ...] = (SnapshotRecord, ModelVersion, ActiveModel, Promotion, Comparison)
# Unique per community: a row moved into a community that already holds the same content stays unassigned.
_UNIQUE_HASH: tuple[Any, ...] = (Example, PreferenceRecord)


@dataclass
class Assignment:
    """What ``assign_communities`` did, table by table."""

    assigned: dict[str, dict[str, int]] = field(default_factory=dict)  # table → community → rows
    # Rows left unassigned (invisible): table → reason → rows.
    left: dict[str, dict[str, int]] = field(default_factory=dict)
    fallback: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.assigned)

    def lines(self) -> list[str]:
        """The summary, one line per table, for the log and the command line."""
        out = []
        for table, per in sorted(self.assigned.items()):
            out.append(f"{table}: " + ", ".join(f"{n} to {c!r}" for c, n in sorted(per.items())))
        for table, per in sorted(self.left.items()):
            out.append(f"{table}: " + ", ".join(f"{n} left unassigned ({why})" for why, n in sorted(per.items())))
        if self.fallback is not None and any(
                t in self.assigned for t in ("model_versions", "snapshots", "active_model")):
            out.append(f"rows taught outside any server (command-line imports), the model versions and the active "
                       f"model went to {self.fallback!r}, the first configured community")
        return out


async def assign_communities(engine: AsyncEngine, by_guild: Mapping[int, str], fallback: str) -> Assignment:
    """Give rows without a community (written before communities existed) the community of the guild they were
    taught in; rows from no guild (command-line imports, model versions, runs proposed by the scheduler) go to
    ``fallback``. Idempotent and cheap when nothing is left: the bot and the CLI call it on every start.

    Left unassigned, and counted: answers given in DMs (a private question is no community's business) and rows
    from guilds the settings do not configure (they are assigned once the guild is configured); a conversation
    its community already holds (taught in two servers that now share a community).
    """
    result = Assignment(fallback=fallback)
    async with engine.begin() as conn:
        for table in (*_BY_GUILD, *_NO_GUILD):
            name = table.__tablename__
            if await conn.scalar(select(table.id).where(table.community.is_(None)).limit(1)) is None:
                continue
            targets: list[tuple[str, Any]] = []
            if table in _BY_GUILD:
                targets += [(community, table.guild_id == guild) for guild, community in by_guild.items()]
                if table is not Answer:
                    targets.append((fallback, table.guild_id.is_(None)))
            else:
                targets.append((fallback, True))
            for community, where in targets:
                clause = and_(table.community.is_(None), where)
                if table in _UNIQUE_HASH:
                    taken = select(table.content_hash).where(table.community == community).scalar_subquery()
                    clause = and_(clause, not_(table.content_hash.in_(taken)))
                if table is ActiveModel:  # one pointer per community: only if it has none yet
                    if await conn.scalar(select(ActiveModel.id).where(ActiveModel.community == community)):
                        continue
                moved = typing.cast("CursorResult[Any]", await conn.execute(
                    update(table).where(clause).values(community=community)))
                if moved.rowcount:
                    per = result.assigned.setdefault(name, {})
                    per[community] = per.get(community, 0) + moved.rowcount
            for why, where in _leftovers(table, by_guild):
                n = await conn.scalar(select(func.count()).select_from(table).where(table.community.is_(None), where))
                if n:
                    result.left.setdefault(name, {})[why] = n
    return result


def _leftovers(table: Any, by_guild: Mapping[int, str]) -> list[tuple[str, Any]]:
    known = list(by_guild)
    reasons: list[tuple[str, Any]] = []
    if table in _BY_GUILD:
        reasons.append(("from a server the settings do not configure",
                        and_(table.guild_id.is_not(None), not_(table.guild_id.in_(known)))))
        if table is Answer:
            reasons.append(("given in a DM", table.guild_id.is_(None)))
    if table in _UNIQUE_HASH:
        reasons.append(("the same conversation is already in its community",
                        or_(table.guild_id.in_(known), table.guild_id.is_(None))))
    if table is ActiveModel:
        reasons.append(("its community already has an active model", True))
    return reasons
