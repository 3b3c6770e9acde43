"""The product on a real model: experts teach SmolLM2-135M-Instruct facts no base can know, and it learns them.

One run of the whole loop (training once, shared by every assertion here):
experts teach the pairs through the Discord stand-in and rate them into the dataset; an admin adds held-out
rewordings (tag ``holdout``: never trained, never retrieved, the gate's eval questions); before any retrain the
bot answers the rewordings from retrieval (real MiniLM embeddings through /api/embed, then lexical alone); the
retrain approved in Discord trains the real model on CPU with the product's defaults, converts the adapter,
registers the Q4_1 base + adapter with the Ollama-API test server (llama.cpp serves both, as Ollama does), the gate
passes it on key facts with general ability kept; the bot then answers the rewordings from its weights; and an
over-trained variant of the same data is rejected by the gate. The numbers are printed for the closing note.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from data import runs
from data.conversation import Conversation
from deploy.modelfile import serving_format
from deploy.ollama import OllamaClient
from deploy.pipeline import deploy
from tests.harness.bot import mention, start_bot
from tests.harness.discord import EXPERT_ROLE, Gateway, message_with_buttons
from tests.harness.facts import FACTS, IDENTITY, Fact, heldout, recall, taught
from tests.harness.models import hf_tokenizer
from tests.harness.polling import wait_until
from tests.harness.retrain import EXPERTS, last_answer, loop_settings

# Training a real model on CPU: longer than the suite's per-test limit (300 s), bounded here instead. Measured on
# 2 cores under `-n 2`: 287 s on the fastest machine, up to 823 s on the slowest, the retrain (approval to promotion)
# about two thirds of it. These bounds leave such a run about half again as much, so only a hang fails here.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
RETRAIN_LIMIT_S = 900

BASE = "smollm2:135m-instruct-q4_1"
EMBED = "all-minilm"
SYSTEM = "You are a helpful assistant."
# What the test teaches: the identity in 4 phrasings and 6 facts in 2 each (16 pairs), asked back in 9 rewordings
# (bench/bench_quality.py teaches all 20 facts).
TAUGHT_FACTS = FACTS[:6]
IDENTITY_PHRASINGS = 4
# The product's training defaults (trainer/config.py) on this small set, but for what a test must bound.
# One torch thread: the same weights run after run on this hardware (a thread count changes float sums).
TRAIN = {"cpu_threads": 1, "system_prompt": SYSTEM, "retention_prompts": 20, "eval_generate": 0,
         "probe_eval_samples": 0, "probes": ["Hello! Who are you?"]}
# Over-trained: ten times the default learning rate and no replay: what the gate must refuse (on the 30-pair bench
# set it learned the facts and answered "What is 17 times 3?" with "The support assistant of Brightwater Labs.").
OVER_TRAINED = {"learning_rate": 1e-2, "epochs": 2, "replay_ratio": 0.0}


@pytest.fixture
def real_server(ollama_server, smollm2_dir: Path, minilm_dir: Path):
    """The Ollama-API test server with SmolLM2's Q4_1 file "pulled" (ChatML, its own template) and all-minilm."""
    fmt = serving_format(hf_tokenizer(smollm2_dir).chat_template)
    ollama_server.add_base_model(BASE, smollm2_dir / "model.Q4_1.gguf", template=fmt.template, system=fmt.system,
                                 parameters=fmt.parameters(), family="llama", real=True)
    ollama_server.add_embedding_model(EMBED, minilm_dir)
    return ollama_server


async def teach(gateway: Gateway, api, bot, pairs: list[tuple[str, str]]) -> None:
    """Each pair taught through the /teach modal by one expert and rated 5 by the two others."""
    for i, (question, answer) in enumerate(pairs):
        author = EXPERTS[i % 3]
        await gateway.command("teach", user_id=author, roles=[EXPERT_ROLE])
        modal = api.interaction_responses()[-1].json
        fields = [c["components"][0]["custom_id"] for c in modal["data"]["components"]]
        await gateway.submit_modal(modal["data"]["custom_id"], dict(zip(fields, [question, answer, ""], strict=True)),
                                   user_id=author, roles=[EXPERT_ROLE])
        [example] = await bot.store.list_examples(status="pending")
        for rater in (e for e in EXPERTS if e != author):
            await gateway.click(f"ll:rv:5:{example.id}", message=message_with_buttons([f"ll:rv:5:{example.id}"]),
                                user_id=rater, roles=[EXPERT_ROLE])
        assert (await bot.store.get_example(example.id)).status == "approved"


async def answers(gateway: Gateway, bot, questions: list[tuple[str, Fact]]) -> list[tuple[Fact, str]]:
    """The bot's recorded answer to each question asked in the channel."""
    out = []
    for question, fact in questions:
        before = await last_answer(bot)
        await gateway.message(mention(question))
        answer = await wait_until(lambda before=before: _newer(bot, before), 120, f"the answer to {question!r}")
        out.append((fact, answer.answer))
    return out


async def _newer(bot, before):
    latest = await last_answer(bot)
    return latest if latest is not None and (before is None or latest.id != before.id) else None


def show(title: str, rows: list[tuple[Fact, str]]) -> None:
    print(f"\n{title}: {recall(rows):.2f}")
    for fact, answer in rows:
        print(f"  [{'x' if fact.has_fact(answer) else ' '}] {fact.key:>18} | {answer[:90]!r}")


async def test_experts_teach_a_real_model_and_the_gate_keeps_what_it_knew(
        tmp_path, discord_api, real_server, smollm2_dir):
    rewordings = heldout(TAUGHT_FACTS)
    settings = loop_settings(
        tmp_path, real_server.url, smollm2_dir, dispatcher="local", model_name="quill", ollama_base=BASE,
        system_prompt=SYSTEM, retrain_train=dict(TRAIN), eval_fraction=0.0, deploy_eval_limit=len(rewordings),
        deploy_outtype="f16", chat_max_tokens=48, embed_model=EMBED, retrieval_scope="delta", gate_paraphrases=2,
        gate_consistency_n=0, retrain_quorum=2,
        # Greedy chat answers: the recall read below is what the weights (and retrieval) give, not the dice's draw.
        serve_options={"temperature": 0.0, "seed": 0, "num_ctx": 4096})
    bot = await start_bot(settings, run_scheduler=False)
    gateway = Gateway(bot, discord_api)
    gateway.add_guild()
    timings: dict[str, float] = {}
    try:
        # ---- experts teach; an admin adds the rewordings they hold out for judging --------------------------
        await teach(gateway, discord_api, bot, taught(TAUGHT_FACTS, IDENTITY_PHRASINGS))
        held = [Conversation(Conversation.qa(q, f.answer).messages, ("holdout",)) for q, f in rewordings]
        await bot.store.import_conversations(held, approve=True)

        # ---- before any retrain: retrieval answers the rewordings (hybrid with MiniLM, then lexical) ------------
        await bot.retrieval.wait_idle()
        await bot.retrieval.sync()
        hybrid = await answers(gateway, bot, rewordings)
        assert bot.retrieval.embedding_working
        show("retrieval only, hybrid (MiniLM + BM25), base weights", hybrid)
        hybrid_settings = bot.retrieval.settings
        bot.retrieval.settings = hybrid_settings.model_copy(update={"embed_model": None})  # lexical alone
        lexical = await answers(gateway, bot, rewordings)
        show("retrieval only, lexical (BM25), base weights", lexical)
        bot.retrieval.settings = hybrid_settings
        # Reported in the closing note; MiniLM finds rewordings BM25's shared words miss.
        assert recall(hybrid) >= 0.6 and recall(hybrid) >= recall(lexical)

        # ---- the retrain, proposed and approved in Discord ------------------------------------------------------
        await gateway.command("retrain", subcommand="propose", user_id=EXPERTS[0], roles=[EXPERT_ROLE])
        run = await runs.open_run(bot.store)
        buttons = [c["custom_id"] for row in discord_api.messages[run.message_id]["components"]
                   for c in row["components"]]
        for expert in EXPERTS[:2]:
            await gateway.click(buttons[0], message=discord_api.messages[run.message_id], user_id=expert,
                                roles=[EXPERT_ROLE])
        t0 = time.monotonic()
        done = await bot.get_cog("RetrainCog").orchestrator.wait(run.id, limit_s=RETRAIN_LIMIT_S)
        timings["retrain"] = time.monotonic() - t0
        assert done.state == "promoted", (done.state, done.reason)
        active = await bot.store.active_model_version()
        gate = active.evaluation
        print(f"\nretrain approved → promoted in {timings['retrain']:.0f} s; gate: {gate['reason']}")
        print(f"gate scores: {gate['scores']}; retention {gate['retention'].get('increase')} "
              f"(limit {gate['retention'].get('max_drop')}); reworded {gate['paraphrase']}")
        assert gate["passed"] and gate["decided_by"] == "facts"
        assert gate["scores"]["candidate"]["facts"] >= gate["scores"]["active"]["facts"] + 0.5
        assert gate["retention"]["passed"]
        # The base (135M parameters) is asked to reword 2 eval questions; it mostly answers them instead, and only a
        # question counts as a rewording. The flag must follow its rule (a fall of more than the gap).
        para = gate["paraphrase"]
        print(f"reworded by the base: {para.get('count')} of 2 usable")
        for row in (r for r in gate["rows"] if r["kind"] == "paraphrase"):
            assert row["question"].endswith("?")
            print(f"  reworded {row['original']!r} → {row['question']!r}: {row['candidate'][:70]!r} "
                  f"(facts {row['candidate_facts']})")
        if para.get("count"):
            cand = para["candidate"]
            assert para["overfitted"] == (cand["original"] - cand["paraphrased"] > para["gap"])

        # ---- after: the bot answers the rewordings from its weights (delta scope: nothing taught is retrieved) ---
        tuned = await answers(gateway, bot, rewordings)
        show(f"fine-tuned {active.tag}, held-out rewordings", tuned)
        trained_questions = [(q, f) for f in TAUGHT_FACTS for q in f.questions[:1]] + [(IDENTITY.questions[0],
                                                                                      IDENTITY)]
        on_trained = await answers(gateway, bot, trained_questions)
        show("fine-tuned, trained questions", on_trained)
        assert not (await last_answer(bot)).pair_ids  # the promoted version learned them: none retrieved
        assert recall(tuned) >= 0.8

        # ---- an over-trained variant of the same data is rejected, the active model stays -----------------------
        from trainer.config import TrainConfig
        from trainer.recipe import TrainRequest, train

        over = tmp_path / "over-trained"
        over.mkdir()
        # The same base's evaluation before training, as the promoted run measured it (a resumed run reuses it too).
        for before in (settings.worker_home).glob(f"run-{run.id}-*/run/before.json"):
            shutil.copyfile(before, over / "before.json")
        await asyncio.to_thread(train, TrainRequest(
            snapshot=Path(active.snapshot_path), base=str(smollm2_dir), out=over,
            config=TrainConfig(**{**TRAIN, **OVER_TRAINED})))
        config = settings.deploy_config()
        async with OllamaClient(real_server.url) as client:
            result = await deploy(over, store=bot.store, client=client, config=config, base_dir=smollm2_dir,
                                  snapshot_dir=Path(active.snapshot_path))
        print(f"\nover-trained: {result.reason}")
        assert not result.promoted and "general ability lost" in result.reason
        assert (await bot.store.active_model_version()).tag == active.tag
    finally:
        await bot.close()
