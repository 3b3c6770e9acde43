"""The bot fits each chat to the served context itself: Ollama would drop the oldest turns without a word
(server/prompt.go chatPrompt) and shift the context mid-answer when the prompt leaves no room for num_predict. The
newest turns, the system prompt and the expert answers are kept (the expert answers shrink before the question is
cut), the answer says how many earlier messages were left out, and a question that alone does not fit is answered
with a clear message instead of being cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.chat import (
    ContextFit,
    QuestionTooLong,
    estimate_tokens,
    fit_context,
    left_out_note,
    prompt_budget,
)
from data.retrieval import Hit
from tests.harness.bot import ANSWER, BASE_TAG, BOT, QUESTION, USER, ask, chats, mention, teach_and_approve
from tests.harness.discord import BOT_ID, message_payload
from tests.harness.polling import wait_until

TOKENIZERS = Path.home() / ".cache" / "loraloop" / "tokenizers"


def qwen2_tokens(messages: list[dict[str, str]]) -> int:
    """Tokens of the chat as Qwen2.5's ChatML template renders it for a reply, by Qwen2.5's own tokenizer."""
    tokenizers = pytest.importorskip("tokenizers")
    path = TOKENIZERS / "qwen2-llama_cpp_python-0.3.36-v4" / "tokenizer.json"
    if not path.is_file():
        pytest.skip("Qwen2.5's tokenizer is not cached (make install converts it)")
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    rendered += "<|im_start|>assistant\n"
    return len(tokenizers.Tokenizer.from_file(str(path)).encode(rendered, add_special_tokens=False).ids)


def turn_text(i: int) -> str:
    return f"Turn {i}: " + " ".join(f"the staging cluster note {i}.{j} about deploys and queues" for j in range(12))


async def test_a_long_thread_is_fitted_to_the_context_newest_turns_and_expert_answers_kept(
        bot, gateway, discord_api, ollama_server):
    bot.settings.serve_options = {"num_ctx": 2048}
    bot.settings.chat_max_tokens = 256
    ollama_server.add_scripted_model(BASE_TAG, reply="Use vault.")
    pair = await teach_and_approve(bot, gateway, discord_api, QUESTION, ANSWER)
    thread = 710_000_000_000_000_002
    gateway.add_guild(thread_ids=(thread,))
    earlier = []
    for i in range(18):  # ~8,000 characters of conversation: far more than 2048 tokens
        if i % 2 == 0:
            discord_api.add_message(mention(turn_text(i), channel_id=thread))
            earlier.append({"role": "user", "content": turn_text(i)})
        else:
            discord_api.add_message(message_payload(turn_text(i), author=BOT, channel_id=thread))
            earlier.append({"role": "assistant", "content": turn_text(i)})
    await gateway.message(mention(QUESTION, channel_id=thread))
    await wait_until(lambda: [m for m in discord_api.bot_messages() if m.get("components")])

    sent = chats(ollama_server)[-1]
    assert sent[0]["role"] == "system" and sent[0]["content"].startswith("You are terse.")
    assert ANSWER in sent[0]["content"] and f'id="{pair}"' in sent[0]["content"]  # the expert answer kept
    assert sent[-1] == {"role": "user", "content": QUESTION}
    kept = sent[1:-1]
    assert 0 < len(kept) < len(earlier) and kept == earlier[-len(kept):]  # the newest turns, whole
    assert kept[0]["role"] == "user"
    # What Ollama counts (Qwen2.5's tokenizer) leaves room for the whole answer: nothing dropped, nothing shifted.
    assert qwen2_tokens(sent) + 256 <= 2048
    [message] = [m for m in discord_api.bot_messages() if m.get("components")]
    note = left_out_note(len(earlier) - len(kept))
    assert note == f"-# {len(earlier) - len(kept)} earlier messages left out to fit the model's context"
    assert message["content"].endswith(f"-# Using 1 expert answer: #{pair}\n{note}")
    answer = await bot.store.get_answer(int(message["components"][0]["components"][0]["custom_id"].rsplit(":")[-1]))
    assert answer.prompt == [sent[0] | {"content": "You are terse."}, *kept, sent[-1]]  # what the model saw

    # The note is the bot's, not the model's: a reply to that answer does not feed it back.
    await gateway.message(message_payload(f"<@{BOT_ID}> thanks", author=USER, mentions=[BOT], reference=message,
                                          channel_id=thread))
    await wait_until(lambda: len(chats(ollama_server)) == 2)
    assert all("left out" not in m["content"] for m in chats(ollama_server)[-1])


async def test_a_question_longer_than_the_context_gets_a_clear_answer(bot, gateway, discord_api, ollama_server):
    bot.settings.serve_options = {"num_ctx": 512}
    ollama_server.add_scripted_model(BASE_TAG, reply="never asked")
    question = " ".join(f"word{i}" for i in range(500))  # ~3,900 characters: well over 512 tokens
    await gateway.message(mention(question))
    await wait_until(lambda: discord_api.bot_messages())
    [message] = discord_api.bot_messages()
    assert "too long for the model" in message["content"] and "shorten" in message["content"]
    assert not chats(ollama_server)  # never sent: Ollama would have cut it without a word


async def test_a_conversation_that_fits_is_sent_whole_without_a_note(bot, gateway, discord_api, ollama_server):
    ollama_server.add_scripted_model(BASE_TAG, reply="Short.")
    message = await ask(gateway, discord_api, "hello")
    assert message["content"] == "Short."
    assert [m["role"] for m in chats(ollama_server)[-1]] == ["system", "user"]


def hit(example_id: int, size: int) -> Hit:
    return Hit(example_id, f"question {example_id}", "answer " * (size // 7), 1.0 / example_id, None, None, None,
               None, None)


def test_expert_answers_shrink_before_the_question_is_cut_and_history_goes_first():
    hits = [hit(1, 700), hit(2, 700), hit(3, 700)]
    history = [{"role": "user", "content": "old question " * 100},
               {"role": "assistant", "content": "old answer " * 100},
               {"role": "user", "content": "What now? " * 30}]
    system = "You are terse."
    one_hit = ContextFit(history[-1:], tuple(hits[:1]), 2, 0)
    question_and = [estimate_tokens(m["content"]) for m in history]
    budget = 4 * 8 + estimate_tokens(system) + question_and[2] + 450  # room for about one expert answer
    fit = fit_context(system, hits, history, budget)
    assert isinstance(fit, ContextFit)
    assert (fit.history, fit.hits, fit.left_out) == (one_hit.history, one_hit.hits, one_hit.left_out)
    assert fit.tokens <= budget

    roomy = fit_context(system, hits, history, 10_000)
    assert isinstance(roomy, ContextFit) and roomy.history == history and roomy.hits == tuple(hits)
    assert roomy.left_out == 0

    too_small = fit_context(system, hits, history, question_and[2])
    assert isinstance(too_small, QuestionTooLong) and too_small.tokens >= question_and[2]


def test_the_answer_keeps_its_room_in_the_context():
    assert prompt_budget(4096, 1024) == 4096 - 1024 - 64
    # An answer cap at or over the context would leave no question: it gets half the context at most.
    assert prompt_budget(2048, 4096) == 1024 - 64


@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog. " * 50,
    "def f(x):\n    return {k: v for k, v in x.items() if v}\n" * 40,
    " ".join(str(n * 7919) for n in range(400)),
    "我们今天讨论一下机器学习模型的训练方法和部署流程。" * 30,
    "Größenänderungen müssen überprüft werden, während die Äpfel fallen. " * 30,
    "😀🎉🚀👍🏽🧠" * 100,
])
def test_the_token_estimate_is_never_below_qwen2_s_count(text):
    assert estimate_tokens(text) >= qwen2_tokens([{"role": "user", "content": text}]) - 8
