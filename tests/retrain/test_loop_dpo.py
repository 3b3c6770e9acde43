"""The preference loop through Discord: the bot answers, a user 👎 it and suggests a better answer in the modal, two
experts approve the correction (a preference record appears: their answer chosen, the bot's rejected), and a
retrain with ``dpo.enabled`` trains on that pair after SFT — its metrics and the Discord summary say so."""

from __future__ import annotations

import pytest

from data import runs
from data.conversation import Conversation, InvalidConversation
from data.formats.preference import Preference
from data.preferences import list_preferences
from data.snapshot import is_eval
from tests.harness.bot import mention, start_bot
from tests.harness.discord import EXPERT_ROLE, Gateway, message_with_buttons
from tests.harness.polling import wait_until
from tests.harness.retrain import EXPERTS, TRAIN, approved_examples, last_answer, loop_settings

# The tiny model answers and trains on two shared cores beside other work: generous bounds, each on the event
# itself (the answer recorded, the run ended), and a test-wide one above them all.
ANSWER_LIMIT_S = 120
RUN_LIMIT_S = 600
pytestmark = [pytest.mark.slow, pytest.mark.timeout(ANSWER_LIMIT_S + RUN_LIMIT_S + 300)]
DPO_TRAIN = {**TRAIN, "dpo": {"enabled": True, "min_pairs": 1, "max_steps": 2, "learning_rate": 1e-3,
                              "batch_size": 1}}


async def trainable_answer(bot, gateway, tries: int = 5):
    """The bot's answer to a question, asked again while the random tiny model's text is not storable text (its
    byte-fallback tokens can spell a NUL character, which no preference record may hold)."""
    for _ in range(tries):
        before = await last_answer(bot)
        await gateway.message(mention("what colour is lamp 7?"))
        answer = await wait_until(lambda previous=before: _newer_answer(bot, previous), ANSWER_LIMIT_S,
                                  "the bot's answer")
        try:
            Conversation.qa("what colour is lamp 7?", answer.answer).validate()
            return answer
        except InvalidConversation:
            continue
    raise AssertionError(f"no storable answer in {tries} tries")


def correction_in_train(answer, eval_fraction: float) -> tuple[str, str]:
    """A better answer whose preference record (it chosen, the bot's answer rejected) lands in the training split,
    and that record's content hash. The split is by hash and the bot's answer is random, so a fixed wording would
    land in eval now and then: of a few wordings, the first that trains is taken."""
    prompt = [m for m in answer.prompt if m.get("role") in ("system", "user", "assistant")
              and isinstance(m.get("content"), str)]  # what the store keeps of it (data.preferences)
    for n in range(100):
        better = "lamp 7 is green." if n == 0 else f"lamp 7 is green ({n})."
        digest = Preference.from_row(prompt, {"role": "assistant", "content": better},
                                     {"role": "assistant", "content": answer.answer}).content_hash()
        if not is_eval(digest, eval_fraction):
            return better, digest
    raise AssertionError("no wording of the correction lands in the training split")


async def _newer_answer(bot, before):
    last = await last_answer(bot)
    return last if last is not None and (before is None or last.id != before.id) else None


async def test_a_thumbs_down_correction_is_trained_on_by_the_dpo_stage(tmp_path, discord_api, base_server,
                                                                       tiny_llama_dir):
    settings = loop_settings(tmp_path, base_server.url, tiny_llama_dir, dispatcher="local",
                             retrain_train=DPO_TRAIN, eval_fraction=0.02)
    bot = await start_bot(settings, run_scheduler=False)
    gateway = Gateway(bot, discord_api)
    gateway.add_guild()
    try:
        await approved_examples(bot.store, 40)

        # ---- the bot answers; an expert 👎 it and suggests a better answer through the modal --------------------
        answer = await trainable_answer(bot, gateway)
        better, digest = correction_in_train(answer, settings.eval_fraction)
        author = EXPERTS[0]
        buttons = message_with_buttons([f"ll:fb:down:{answer.id}", f"ll:fb:fix:{answer.id}"], answer.answer)
        await gateway.click(f"ll:fb:down:{answer.id}", message=buttons, user_id=author, roles=[EXPERT_ROLE])
        await gateway.click(f"ll:fb:fix:{answer.id}", message=buttons, user_id=author, roles=[EXPERT_ROLE])
        modal = discord_api.interaction_responses()[-1].json
        assert modal["type"] == 9, modal
        fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
        await gateway.submit_modal(modal["data"]["custom_id"],
                                   dict(zip(fields, ["what colour is lamp 7?", better], strict=True)),
                                   user_id=author, roles=[EXPERT_ROLE])
        pending = await bot.store.list_examples(status="pending")
        assert len(pending) == 1, [r.json for r in discord_api.interaction_responses()[-3:]]
        [correction] = pending
        assert correction.source == "correction" and correction.answer_id == answer.id
        assert await list_preferences(bot.store) == []

        # ---- two other experts approve it: the preference record appears -----------------------------------------
        for rater in EXPERTS[1:]:
            await gateway.click(f"ll:rv:5:{correction.id}", message=message_with_buttons([f"ll:rv:5:{correction.id}"]),
                                user_id=rater, roles=[EXPERT_ROLE])
        records = await list_preferences(bot.store)
        assert len(records) == 1, (answer.prompt, answer.answer, await bot.store.get_example(correction.id))
        [record] = records
        assert record.status == "approved" and record.source == "thumbs-down"
        assert record.chosen["content"] == better and record.rejected["content"] == answer.answer
        assert record.rejected_model == answer.model_tag
        assert record.content_hash == digest  # the record chosen to train: the split below counts it there
        assert not is_eval(record.content_hash, settings.eval_fraction)

        # ---- a retrain: SFT, then DPO on that pair ------------------------------------------------------------
        await gateway.command("retrain", subcommand="propose", user_id=EXPERTS[0], roles=[EXPERT_ROLE])
        run = await runs.open_run(bot.store)
        proposal = discord_api.messages[run.message_id]
        approve = f"ll:rt:approve:{run.id}"
        for expert in EXPERTS[:2]:
            await gateway.click(approve, message=proposal, user_id=expert, roles=[EXPERT_ROLE])
        done = await bot.get_cog("RetrainCog").orchestrator.wait(run.id, limit_s=RUN_LIMIT_S)
        assert done.state == "promoted", (done.state, done.reason)
        dpo = done.result["metrics"]["dpo"]
        assert dpo["ran"] and dpo["pairs"]["train"] == 1 and dpo["pairs"]["eval"] == 0  # may be truncated: long
        assert dpo["steps"] == 2 and dpo["reference"].startswith("the SFT model")
        assert "DPO on 1 preference pairs" in done.result["table"]
        await wait_until(lambda: [c for c in discord_api.find("POST") if c.json and "DPO on 1 preference pairs"
                                  in (c.json.get("content") or "")], 30, "the Discord summary of the DPO stage")
    finally:
        await bot.close()
