"""The active model as the chat path reads it every turn (``Store.answering_model``): a switch made through the
bot's own stores is seen at once, one made by another process within ``max_age``, and never another community's."""

from __future__ import annotations

from data.store import Store

LONG = 3600.0  # a read this old still counts: only a switch through these stores can change the answer


async def _registered(store: Store, name: str = "physics"):
    version = await store.create_model_version(name=name, base_model="tiny", ollama_base="qwen2.5:0.5b")
    return await store.update_model_version(version.id, status="registered", in_ollama=True)


async def test_a_switch_through_the_store_is_seen_at_once(store):
    v1, v2 = await _registered(store), await _registered(store)
    assert await store.answering_model(LONG) is None  # the base answers
    await store.promote(v1.id)
    assert await store.answering_model(LONG) == (v1.tag, v1.id)
    await store.promote(v2.id)
    assert await store.answering_model(LONG) == (v2.tag, v2.id)
    await store.rollback()
    assert await store.answering_model(LONG) == (v1.tag, v1.id)
    await store.rollback_to_base()
    assert await store.answering_model(LONG) is None


async def test_a_scoped_copy_shares_what_it_read_and_what_it_switched(store):
    version = await _registered(store)
    seen_by_copy = store.scoped(store.community)
    assert await seen_by_copy.answering_model(LONG) is None
    await store.promote(version.id)  # the bot's retrain loop promotes through another scoped copy
    assert await seen_by_copy.answering_model(LONG) == (version.tag, version.id)


async def test_another_process_switching_is_seen_within_max_age(store):
    version = await _registered(store)
    assert await store.answering_model(LONG) is None
    other = Store(store.url, connect_args=store.connect_args)  # the CLI's `models promote`, say
    try:
        await other.promote(version.id)
    finally:
        await other.close()
    assert await store.answering_model(LONG) is None  # read less than max_age ago: kept
    assert await store.answering_model(0.0) == (version.tag, version.id)  # older than max_age: read again
    assert await store.answering_model(LONG) == (version.tag, version.id)


async def test_each_community_reads_its_own_active_model(store):
    a, b = store.scoped("alpha"), store.scoped("beta")
    version = await _registered(a, "alpha")
    await a.promote(version.id)
    assert await a.answering_model(LONG) == (version.tag, version.id)
    assert await b.answering_model(LONG) is None
    assert await store.scoped(None).answering_model(LONG) is None  # outside every community: always the base


async def test_one_read_refreshes_every_community(store):
    """A bot in many servers reads the pointers once per max_age, not once per server per turn."""
    alpha, beta = store.scoped("alpha"), store.scoped("beta")
    version = await _registered(beta, "beta")
    assert await beta.answering_model(LONG) is None
    other = Store(store.url, connect_args=store.connect_args).scoped("beta")
    try:
        await other.promote(version.id)  # another process
    finally:
        await other.close()
    assert await alpha.answering_model(0.0) is None  # alpha's read brings beta's pointer too
    assert await beta.answering_model(LONG) == (version.tag, version.id)
