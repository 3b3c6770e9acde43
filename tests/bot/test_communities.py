"""Several servers, one bot (issue 27): each configured guild's knowledge stays in its community.

The Discord stand-in holds two configured guilds, A and B (each its own community), an unconfigured guild C and
DMs; the store is a real SQLite database, and PostgreSQL where the run has one (the module's ``bot``). Each leak
the issue reported has its own test: what A taught never reaches the prompts, footers, exports, stats or review
queues of B, C or a DM; B's approvals never reach A; a DM's 👎 stays out of every server's review; B can teach
what A already holds; C can only chat, with the base model. And two guilds that name one community share it."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import update

from bot.app import LoraloopBot
from bot.permissions import NOT_SET_UP
from bot.retrieval import BLOCK_HEAD
from bot.settings import GuildRoles
from data.conversation import Conversation
from data.models import Example
from data.review import ReviewPolicy
from data.store import Store
from tests.harness.bot import (
    ADMIN,
    ANSWER,
    BASE_TAG,
    EXPERT,
    FAKE_TOKEN,
    MEMBER,
    QUESTION,
    ask,
    chats,
    make_settings,
    mention,
    start_bot,
    teach,
    teach_and_approve,
)
from tests.harness.db import BACKENDS, make_store
from tests.harness.discord import (
    ADMIN_ROLE,
    CHANNEL_ID,
    EXPERT_ROLE,
    GUILD_ID,
    Gateway,
    message_with_buttons,
    user_payload,
)

GUILD_A, CHANNEL_A = GUILD_ID, CHANNEL_ID
GUILD_B, CHANNEL_B = 800_000_000_000_000_002, 700_000_000_000_000_002
GUILD_C, CHANNEL_C = 800_000_000_000_000_003, 700_000_000_000_000_003  # not in the settings
GUILD_D, CHANNEL_D = 800_000_000_000_000_004, 700_000_000_000_000_004  # shares A's community (its own test)
DM_CHANNEL = 700_000_000_000_000_009
B_EXPERT_ROLE, B_ADMIN_ROLE = 600_000_000_000_000_011, 600_000_000_000_000_012
A = {"guild_id": GUILD_A, "channel_id": CHANNEL_A}
B = {"guild_id": GUILD_B, "channel_id": CHANNEL_B}
C = {"guild_id": GUILD_C, "channel_id": CHANNEL_C}
D = {"guild_id": GUILD_D, "channel_id": CHANNEL_D}
DM = {"guild_id": None, "channel_id": DM_CHANNEL}
B_ANSWER = "On staging, ask #infra for a one-time link."


def guild_a(**kw) -> GuildRoles:
    return GuildRoles(expert_role_ids=[EXPERT_ROLE], admin_role_ids=[ADMIN_ROLE], allow_non_expert_teach=False,
                      experts_channel_id=CHANNEL_A, **kw)


def guild_b(**kw) -> GuildRoles:
    return GuildRoles(expert_role_ids=[B_EXPERT_ROLE], admin_role_ids=[B_ADMIN_ROLE], allow_non_expert_teach=False,
                      experts_channel_id=CHANNEL_B, **kw)


@pytest.fixture
def settings(tmp_path, ollama_server):
    return make_settings(tmp_path, ollama_server.url, guilds={GUILD_A: guild_a(), GUILD_B: guild_b()})


@pytest.fixture(params=BACKENDS)
async def bot(request, tmp_path, discord_api, settings):
    store, cleanup = await make_store(request.param, tmp_path, settings.review.policy())
    bot = LoraloopBot(settings, store=store.scoped(settings.community_names()[0]), run_scheduler=False)
    await bot.login(FAKE_TOKEN)
    try:
        yield bot
    finally:
        await bot.close()
        await cleanup()


@pytest.fixture
def gateway(bot, discord_api, ollama_server) -> Gateway:
    ollama_server.add_scripted_model(BASE_TAG, reply="Use the vault.")
    gateway = Gateway(bot, discord_api)
    for where in (A, B, C, D):
        gateway.add_guild(where["guild_id"], channel_id=where["channel_id"])
    return gateway


def sent(ollama_server) -> str:
    """Everything the model server received in the newest chat."""
    return json.dumps(chats(ollama_server)[-1])


def buttons(message: dict) -> list[str]:
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


def answer_id(reply: dict) -> int:
    return int(buttons(reply)[0].rsplit(":", 1)[1])


async def click(gateway: Gateway, custom_id: str, where: dict, **kw) -> None:
    message = message_with_buttons([custom_id], guild_id=where["guild_id"], channel_id=where["channel_id"])
    await gateway.click(custom_id, message=message, **where, **kw)


async def review_bad_answers(gateway: Gateway, discord_api, where: dict, role: int) -> str:
    await gateway.command("review", {"what": "bad answers"}, user_id=EXPERT, roles=[role], **where)
    return discord_api.reply_text()


# ---- knowledge: prompts, footers, the pairs behind an answer -------------------------------------------------


async def test_a_pair_approved_in_a_reaches_only_as_prompts(bot, gateway, discord_api, ollama_server):
    example_id = await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
    in_a = await ask(gateway, discord_api, QUESTION, **A)
    assert ANSWER in sent(ollama_server) and f"#{example_id}" in in_a["content"]  # A uses it
    for where in (B, C, DM):
        reply = await ask(gateway, discord_api, QUESTION, **where)
        assert ANSWER not in sent(ollama_server) and BLOCK_HEAD not in sent(ollama_server), where
        assert reply["content"] == "Use the vault."  # no footer naming A's pair
        assert not any(b.startswith("ll:pairs:") for b in buttons(reply))
    # Outside every community (C, the DM) the answers are recorded where no community sees them.
    dm_answer = answer_id(reply)
    assert (await bot.community_store(None).get_answer(dm_answer)).community is None
    for community in bot.settings.community_names():
        with pytest.raises(Exception, match="no answer"):
            await bot.community_store(community).get_answer(dm_answer)


async def test_bs_experts_never_see_as_pairs_behind_an_answer(bot, gateway, discord_api, ollama_server):
    await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
    in_a = await ask(gateway, discord_api, QUESTION, **A)
    used = f"ll:pairs:{answer_id(in_a)}"
    assert used in buttons(in_a)
    await click(gateway, used, B, user_id=EXPERT, roles=[B_EXPERT_ROLE])  # A's button, pressed in B
    assert ANSWER not in discord_api.reply_text() and "no answer" in discord_api.reply_text()
    await click(gateway, used, A, user_id=EXPERT, roles=[EXPERT_ROLE])
    assert ANSWER in discord_api.reply_text()  # A's own experts do


async def test_bs_admin_approval_never_reaches_as_chats(bot, gateway, discord_api, ollama_server):
    b_pair = await teach_and_approve(bot, gateway, discord_api, QUESTION, B_ANSWER, **B, expert_role=B_EXPERT_ROLE,
                                     admin_role=B_ADMIN_ROLE)
    await ask(gateway, discord_api, QUESTION, **B)
    assert B_ANSWER in sent(ollama_server)  # B uses it
    await ask(gateway, discord_api, QUESTION, **A)
    assert B_ANSWER not in sent(ollama_server) and BLOCK_HEAD not in sent(ollama_server)
    # A's own pair waits for A's review: B's admin cannot approve it by its id, and A's queue has not B's pair.
    await teach(gateway, discord_api, "Where are the build logs?", "In the CI tab.")
    [a_pair] = await bot.community_store(bot.settings.community_of_guild(GUILD_A)).list_examples(status="pending")
    await click(gateway, f"ll:rv:approve:{a_pair.id}", B, user_id=ADMIN, roles=[B_ADMIN_ROLE])
    assert f"no example #{a_pair.id}" in discord_api.reply_text()
    a_store = bot.community_store(bot.settings.community_of_guild(GUILD_A))
    assert (await a_store.get_example(a_pair.id)).status == "pending"
    with pytest.raises(Exception, match="no example"):
        await a_store.get_example(b_pair)


async def test_reteaching_as_pending_pair_in_b_is_accepted(bot, gateway, discord_api):
    assert "waiting for expert review" in await teach(gateway, discord_api, QUESTION, ANSWER, **A)
    again = await teach(gateway, discord_api, QUESTION, ANSWER, **B, expert_role=B_EXPERT_ROLE)
    assert "waiting for expert review" in again and "already" not in again  # nothing of A's is confirmed
    again_in_a = await teach(gateway, discord_api, QUESTION, ANSWER, **A)
    assert "already in the dataset" in again_in_a  # within one community a duplicate is still one


# ---- the dataset and the review queues -----------------------------------------------------------------------


async def test_bs_dataset_export_and_stats_exclude_a(bot, gateway, discord_api):
    await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
    await gateway.command("dataset", {"format": "alpaca"}, subcommand="export", user_id=EXPERT,
                          roles=[B_EXPERT_ROLE], **B)
    assert discord_api.reply_text().startswith("0 approved examples")
    assert all(ANSWER.encode() not in data for call in discord_api.calls for _, data in call.files)
    await gateway.command("dataset", subcommand="stats", user_id=EXPERT, roles=[B_EXPERT_ROLE], **B)
    assert discord_api.reply_text().startswith("**Examples:** 0 (pending 0, approved 0,")
    await gateway.command("dataset", subcommand="stats", user_id=EXPERT, roles=[EXPERT_ROLE], **A)
    assert discord_api.reply_text().startswith("**Examples:** 1 (pending 0, approved 1,")
    await gateway.command("dataset", {"format": "alpaca"}, subcommand="export", user_id=EXPERT,
                          roles=[EXPERT_ROLE], **A)
    assert discord_api.reply_text().startswith("1 approved examples")


async def test_a_dm_thumbs_down_is_in_no_servers_bad_answers(bot, gateway, discord_api):
    reply = await ask(gateway, discord_api, "my private question", **DM)
    await click(gateway, f"ll:fb:down:{answer_id(reply)}", DM, user_id=11)
    assert "noted 👎" in discord_api.reply_text()
    in_c = await ask(gateway, discord_api, "a question in an unconfigured server", **C)
    await click(gateway, f"ll:fb:down:{answer_id(in_c)}", C, user_id=MEMBER)
    assert "noted 👎" in discord_api.reply_text()
    for where, role in ((A, EXPERT_ROLE), (B, B_EXPERT_ROLE)):
        listed = await review_bad_answers(gateway, discord_api, where, role)
        assert "No 👎 answer is waiting" in listed and "private question" not in listed
    # The same 👎 in A is A's experts' to fix, and still not B's.
    in_a = await ask(gateway, discord_api, "a question in A", **A)
    await click(gateway, f"ll:fb:down:{answer_id(in_a)}", A, user_id=MEMBER)
    assert "a question in A" in await review_bad_answers(gateway, discord_api, A, EXPERT_ROLE)
    assert "No 👎 answer is waiting" in await review_bad_answers(gateway, discord_api, B, B_EXPERT_ROLE)


# ---- an unconfigured server: chat with the base model, nothing else -----------------------------------------


@pytest.mark.parametrize(("name", "sub", "options"), [
    ("teach", None, None),
    ("review", None, None),
    ("review", None, {"what": "bad answers"}),
    ("import", None, {"file": "1"}),
    ("dataset", "stats", None),
    ("dataset", "export", {"format": "alpaca"}),
    ("model", "status", None),
    ("model", "history", None),
    ("model", "rollback", None),
])
async def test_an_unconfigured_server_refuses_every_teaching_and_model_command(bot, gateway, discord_api, name, sub,
                                                                                options):
    attachments = {"1": {"id": "1", "filename": "x.json", "size": 10, "url": "http://127.0.0.1:1/x",
                         "proxy_url": "http://127.0.0.1:1/x"}} \
        if name == "import" else None
    # Even someone holding A's admin role (role ids mean nothing in C).
    await gateway.command(name, options, subcommand=sub, user_id=ADMIN, roles=[ADMIN_ROLE, EXPERT_ROLE], **C,
                          attachments=attachments)
    assert discord_api.reply_text() == NOT_SET_UP.format(guild_id=GUILD_C)
    assert "\n" not in discord_api.reply_text() and "guilds:" in discord_api.reply_text()


async def test_an_unconfigured_server_chats_with_the_base_and_refuses_every_button(bot, gateway, discord_api,
                                                                                   ollama_server):
    a_pair = await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
    reply = await ask(gateway, discord_api, QUESTION, **C)
    assert ollama_server.requests_to("POST", "/api/chat")[-1]["model"] == BASE_TAG and ANSWER not in sent(
        ollama_server)
    answer = answer_id(reply)
    await gateway.command("ask", {"question": QUESTION}, user_id=MEMBER, **C)  # /ask too
    assert ollama_server.requests_to("POST", "/api/chat")[-1]["model"] == BASE_TAG and ANSWER not in sent(
        ollama_server)
    assert "Using" not in discord_api.reply_text()
    await click(gateway, f"ll:fb:up:{answer}", C, user_id=MEMBER)
    assert discord_api.reply_text() == "Thanks, noted 👍"  # votes are kept, where no community sees them
    refused = NOT_SET_UP.format(guild_id=GUILD_C)
    for custom_id in (f"ll:fb:fix:{answer}", f"ll:ba:{answer}", f"ll:pairs:{answer}", f"ll:rv:approve:{a_pair}",
                      f"ll:rv:4:{a_pair}", f"ll:rv:edit:{a_pair}", f"ll:pf:approve:{a_pair}", "ll:rb:base",
                      "ll:cmp:1:start:0"):
        await click(gateway, custom_id, C, user_id=ADMIN, roles=[ADMIN_ROLE, EXPERT_ROLE])
        assert discord_api.reply_text() == refused, custom_id


# ---- DMs ------------------------------------------------------------------------------------------------------


async def test_dm_community_answers_its_members_only(tmp_path, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Use the vault.")
    settings = make_settings(tmp_path, ollama_server.url, guilds={GUILD_A: guild_a(), GUILD_B: guild_b()},
                             dm_community=f"guild-{GUILD_A}")
    bot = await start_bot(settings)
    try:
        gateway = Gateway(bot, discord_api)
        for where in (A, B):
            gateway.add_guild(where["guild_id"], channel_id=where["channel_id"])
        await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
        member, stranger = user_payload(31, "member"), user_payload(32, "stranger")
        discord_api.add_member(GUILD_A, 31)
        discord_api.add_member(GUILD_B, 32)  # in B only: not a member of the DM community's servers
        reply = await ask(gateway, discord_api, QUESTION, **DM, author=member)
        assert ANSWER in sent(ollama_server)
        await click(gateway, f"ll:fb:down:{answer_id(reply)}", DM, user_id=31)
        assert QUESTION in await review_bad_answers(gateway, discord_api, A, EXPERT_ROLE)  # its experts' to see
        assert "No 👎 answer is waiting" in await review_bad_answers(gateway, discord_api, B, B_EXPERT_ROLE)
        before = len(chats(ollama_server))
        await gateway.message(mention(QUESTION, author=stranger, **DM))
        assert len(chats(ollama_server)) == before  # not answered at all
        assert "members of the servers" in discord_api.bot_messages(DM_CHANNEL)[-1]["content"]
        await gateway.command("ask", {"question": QUESTION}, user_id=32, **DM)
        assert len(chats(ollama_server)) == before and "members of the servers" in discord_api.reply_text()
        await gateway.command("ask", {"question": QUESTION}, user_id=31, **DM)
        assert ANSWER in sent(ollama_server)
    finally:
        await bot.close()


# ---- communities shared, models per community, the upgrade ---------------------------------------------------


async def test_two_guilds_naming_one_community_share_it(tmp_path, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Use the vault.")
    d_roles = GuildRoles(expert_role_ids=[B_EXPERT_ROLE], admin_role_ids=[B_ADMIN_ROLE], community="team")
    settings = make_settings(tmp_path, ollama_server.url, guilds={
        GUILD_A: guild_a(community="team"), GUILD_D: d_roles, GUILD_B: guild_b()})
    bot = await start_bot(settings)
    try:
        gateway = Gateway(bot, discord_api)
        for where in (A, B, D):
            gateway.add_guild(where["guild_id"], channel_id=where["channel_id"])
        example_id = await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
        reply = await ask(gateway, discord_api, QUESTION, **D)
        assert ANSWER in sent(ollama_server) and f"#{example_id}" in reply["content"]
        await gateway.command("dataset", subcommand="stats", user_id=EXPERT, roles=[B_EXPERT_ROLE], **D)
        assert discord_api.reply_text().startswith("**Examples:** 1 (pending 0, approved 1,")
        await ask(gateway, discord_api, QUESTION, **B)
        assert ANSWER not in sent(ollama_server)
        # Teaching it again in D is a duplicate: it is the same community's dataset.
        assert "already in the dataset" in await teach(gateway, discord_api, QUESTION, ANSWER, **D,
                                                       expert_role=B_EXPERT_ROLE)
    finally:
        await bot.close()


async def test_each_community_answers_with_its_own_model_and_rolls_back_alone(bot, gateway, discord_api,
                                                                              ollama_server):
    a_store = bot.community_store(bot.settings.community_of_guild(GUILD_A))
    version = await a_store.create_model_version(name="m", base_model="tiny", ollama_base=BASE_TAG)
    await a_store.update_model_version(version.id, status="registered", in_ollama=True)
    ollama_server.add_scripted_model(version.tag, reply="fine-tuned")
    await a_store.promote(version.id)

    def model() -> str:
        return ollama_server.requests_to("POST", "/api/chat")[-1]["model"]

    await ask(gateway, discord_api, "hello", **A)
    assert model() == version.tag
    for where in (B, C, DM):
        await ask(gateway, discord_api, "hello", **where)
        assert model() == BASE_TAG, where
    await gateway.command("model", subcommand="status", user_id=MEMBER, **B)
    assert f"base model `{BASE_TAG}`" in discord_api.reply_text()
    # A's only fine-tune: the base is the rollback target; B is not touched.
    await gateway.command("model", subcommand="rollback", user_id=ADMIN, roles=[ADMIN_ROLE], **A)
    confirm = discord_api.last_reply()
    assert f"to the base model `{BASE_TAG}`" in confirm["content"] and buttons(confirm) == ["ll:rb:base"]
    await click(gateway, "ll:rb:base", A, user_id=ADMIN, roles=[ADMIN_ROLE])
    assert discord_api.reply_text() == f"Rolled back: now answering with `{BASE_TAG}`."
    await ask(gateway, discord_api, "hello", **A)
    assert model() == BASE_TAG
    await gateway.command("model", subcommand="rollback", user_id=ADMIN, roles=[B_ADMIN_ROLE], **B)
    assert "Nothing to roll back" in discord_api.reply_text()


async def test_rows_from_before_communities_go_to_their_guilds_at_start(tmp_path, discord_api, ollama_server,
                                                                       caplog):
    settings = make_settings(tmp_path, ollama_server.url, guilds={GUILD_A: guild_a(), GUILD_B: guild_b()})
    old = Store(settings.resolved_database_url, policy=ReviewPolicy(), community=f"guild-{GUILD_B}")
    await old.migrate()
    await old.add_example(Conversation.qa(QUESTION, B_ANSWER), source="teach", guild_id=GUILD_B, status="approved")
    await old.add_example(Conversation.qa("from the CLI", "yes"), source="import", status="approved")
    async with old.engine.begin() as conn:  # as an upgrade finds them: no community yet
        await conn.execute(update(Example).values(community=None))
    await old.close()
    caplog.set_level(logging.INFO, logger="loraloop.bot")
    bot = await start_bot(settings)
    try:
        b_rows = await bot.community_store(f"guild-{GUILD_B}").list_examples()
        a_rows = await bot.community_store(f"guild-{GUILD_A}").list_examples()
        assert [e.messages[-1]["content"] for e in b_rows] == [B_ANSWER]
        assert [e.messages[-1]["content"] for e in a_rows] == ["yes"]  # no guild: the first community
        assert any("rows from before communities" in r.getMessage() for r in caplog.records)
    finally:
        await bot.close()


async def test_a_regression_is_told_in_its_own_communitys_experts_channel(bot, gateway, discord_api, ollama_server):
    b_store = bot.community_store(bot.settings.community_of_guild(GUILD_B))

    async def promoted():
        version = await b_store.create_model_version(name="m", base_model="tiny", ollama_base=BASE_TAG)
        await b_store.update_model_version(version.id, status="registered", in_ollama=True)
        ollama_server.add_scripted_model(version.tag, reply="x")
        return await b_store.promote(version.id)

    async def voted(version, user: int, value: int) -> None:
        answer = await b_store.record_answer(prompt=[{"role": "user", "content": "q?"}], answer="a",
                                             model_tag=version.tag, model_version_id=version.id, guild_id=GUILD_B)
        if value > 0:
            await b_store.add_feedback(answer.id, user, 1)
        else:
            await click(gateway, f"ll:fb:down:{answer.id}", B, user_id=user)

    v1 = await promoted()
    for i in range(30):
        await b_store.add_feedback((await b_store.record_answer(
            prompt=[{"role": "user", "content": "q?"}], answer="a", model_tag=v1.tag, model_version_id=v1.id)).id,
            1000 + i, 1 if i < 25 else -1)
    v2 = await promoted()
    for i in range(26):
        await voted(v2, 5000 + i, 1 if i < 6 else -1)
    [alert] = [m for m in discord_api.messages.values() if "gets more 👎" in (m.get("content") or "")]
    assert int(alert["channel_id"]) == CHANNEL_B and buttons(alert) == [f"ll:rb:{v1.id}"]
    # A's admin pressing it in A finds no such version in A's community; B's admin rolls B back.
    await gateway.click(f"ll:rb:{v1.id}", message=alert, user_id=ADMIN, roles=[ADMIN_ROLE], **A)
    assert "Rollback refused" in discord_api.reply_text()
    assert (await b_store.active_model_version()).id == v2.id
    await gateway.click(f"ll:rb:{v1.id}", message=alert, user_id=ADMIN, roles=[B_ADMIN_ROLE], **B)
    assert (await b_store.active_model_version()).id == v1.id
