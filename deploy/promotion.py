"""Which version answers, and which tags stay: promote, rollback and retention, scoped to a store's community.

The active model is one pointer in the store, switched only after checking that Ollama has the tag it switches to;
:func:`switch_to` is the promotion of a candidate that passed the gate (deploy/pipeline.py
``conclude_candidate``), :func:`promote` and :func:`rollback` what an expert or admin asks for, and retention
(:func:`apply_retention`), :func:`fail_interrupted` and :func:`forget` the housekeeping of tags in Ollama.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from data.community_names import lineage_name
from data.errors import LoraloopError, StoreError
from deploy.errors import DeployFailed
from deploy.ollama import ModelNotFound, OllamaClient, OllamaError

if TYPE_CHECKING:  # the GPU worker imports this module and has no database stack
    from data.models import ModelVersion
    from data.store import Store

log = logging.getLogger(__name__)

# Statuses of a version whose deploy has not finished (a crash leaves them behind).
UNFINISHED = ("created", "registered", "evaluated")


@dataclass(frozen=True, slots=True)
class Answering:
    """What answers after a switch: a fine-tuned version, or the clean base model (``version`` None)."""

    tag: str
    version: ModelVersion | None = None

    def __str__(self) -> str:
        return self.tag if self.version is not None else f"{self.tag} (the base model)"


async def promote(store: Store, client: OllamaClient, tag: str, *, base: str | None = None) -> Answering:
    """Make an existing version active, after checking Ollama still has it; ``tag`` equal to ``base`` (the
    settings' ollama_base) switches back to the clean base model."""
    if base is not None and tag == base:
        return await _to_base(store, client)
    version = await store.get_model_version(tag)
    if not await client.has_model(tag):
        if version.in_ollama:
            await store.update_model_version(tag, in_ollama=False)
        raise DeployFailed(f"{tag} is not in Ollama any more (deleted by retention?); deploy it again instead")
    return Answering(tag, await store.promote(tag))


async def _to_base(store: Store, client: OllamaClient) -> Answering:
    """Answer with the clean base the active version was built on (checked to be in Ollama first)."""
    active = await store.active_model_version()
    if active is None:
        raise AlreadyActive(None)
    if not await client.has_model(active.ollama_base):
        raise DeployFailed(f"the base model {active.ollama_base} is not in Ollama: run `ollama pull "
                           f"{active.ollama_base}` on the Ollama host first")
    await store.rollback_to_base()
    return Answering(active.ollama_base)


async def switch_to(store: Store, client: OllamaClient, tag: str, *, model_name: str,
                    keep_versions: int) -> list[str]:
    """Promote an evaluated version (checked to be in Ollama) and apply retention; the tags retention deleted.

    Retention is housekeeping and never fails a switch that happened: its errors are logged."""
    await promote(store, client, tag)
    try:
        return await apply_retention(store, client, model_name, keep_versions)
    except (OllamaError, StoreError) as exc:
        log.warning("retention after %s failed: %s", tag, exc)
    except Exception:  # a bug here must not have the caller mark the version that now answers as failed
        log.exception("retention after %s crashed", tag)
    return []


class AlreadyActive(LoraloopError):
    """A rollback to the version that already answers: nothing was changed (a retried request, typically).
    ``version`` None: the base model already answers."""

    def __init__(self, version: ModelVersion | None) -> None:
        what = version.tag if version is not None else "the base model"
        super().__init__(f"{what} is already the active model; nothing was rolled back")
        self.version = version


# Per database (its engine: every scoped copy of a store shares it) and community.
_ROLLBACK_LOCKS: weakref.WeakKeyDictionary[Any, dict[str | None, asyncio.Lock]] = weakref.WeakKeyDictionary()


async def rollback(store: Store, client: OllamaClient, to: int | str | None = None) -> Answering:
    """Switch back to the previous good version (checked to be in Ollama first); without one, while a fine-tune
    answers, back to the clean base model. Only the store's community changes.

    ``to`` (a version id or tag) names the version the caller saw as the target, so a retried request cannot
    roll back twice: if ``to`` already answers, AlreadyActive is raised and nothing changes."""
    # One rollback at a time per community in this process: a retry that arrives while the first one waits on
    # Ollama then sees the switched pointer instead of computing "one back" from the old one.
    async with _ROLLBACK_LOCKS.setdefault(store.engine, {}).setdefault(store.community, asyncio.Lock()):
        target = await store.rollback_target() if to is None else await _named_rollback_target(store, to)
        if target is None:
            if await store.active_model_version() is None:
                raise DeployFailed("the base model already answers: there is nothing to roll back to")
            return await _to_base(store, client)
        if not await client.has_model(target.tag):
            await store.update_model_version(target.tag, in_ollama=False)
            raise DeployFailed(f"the rollback target {target.tag} is not in Ollama any more; "
                               "promote a version that is")
        switched = await store.rollback()
    if switched.id != target.id:  # another process rolled back between the check and the switch
        log.warning("rollback to %s switched to %s instead (a concurrent rollback)", target.tag, switched.tag)
    return Answering(switched.tag, switched)


async def _named_rollback_target(store: Store, to: int | str) -> ModelVersion:
    wanted = await store.get_model_version(to)
    active = await store.active_model_version()
    if active is not None and active.id == wanted.id:
        raise AlreadyActive(wanted)
    target = await store.rollback_target()
    if target is None:
        raise DeployFailed("there is no earlier good model version to roll back to")
    if target.id != wanted.id:
        raise DeployFailed(f"{wanted.tag} is not the previous good version (that is {target.tag}); "
                           f"`loraloop models promote {wanted.tag}` switches to any registered version")
    return target


async def apply_retention(store: Store, client: OllamaClient, model_name: str, keep: int) -> list[str]:
    """Delete the store's community's fine-tuned tags beyond its newest ``keep`` in Ollama, never its active one
    or its rollback target."""
    names = _ours(store, model_name)
    deleted = []
    for v in await store.retention_candidates(keep):
        if v.name not in names:
            continue
        try:
            await client.delete(v.tag)
        except ModelNotFound:
            pass  # already gone: the store catches up
        await store.update_model_version(v.tag, in_ollama=False)
        deleted.append(v.tag)
    return deleted


async def fail_interrupted(store: Store, client: OllamaClient, model_name: str) -> list[str]:
    """Mark failed the versions a crashed deploy left half-way in the store's community (never the active one)
    and drop their tags."""
    active = await store.active_model_version()
    names = _ours(store, model_name)
    marked = []
    for v in await store.list_model_versions():
        if v.name in names and v.status in UNFINISHED and (active is None or v.id != active.id):
            removed = await forget(client, v.tag)
            await store.update_model_version(v.tag, status="failed", in_ollama=not removed and v.in_ollama,
                                             failure_reason="interrupted: the deploy process stopped before finishing")
            marked.append(v.tag)
    return marked


async def forget(client: OllamaClient, tag: str) -> bool:
    """Delete a candidate that will not serve; True when it is gone from Ollama."""
    try:
        await client.delete(tag)
    except ModelNotFound:
        return True
    except OllamaError:
        return False
    return True


def lineage(store: Store, model_name: str) -> str:
    """The ModelVersion name of the store's community's fine-tunes (data.community_names.lineage_name): tags are
    global in Ollama, so each community's are its own (``loraloop-<model>-<community>:vN``)."""
    return lineage_name(model_name, store.community or "")


def _ours(store: Store, model_name: str) -> tuple[str, ...]:
    """The names of versions a community's housekeeping may touch: its lineage, and ``model_name`` itself, which
    versions from before communities carry in the community they were assigned to (data.communities)."""
    return (lineage(store, model_name), model_name)
