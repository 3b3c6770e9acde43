"""Training on the real Qwen2.5 and Llama 3 vocabularies: the tokenizer is the family's own, loss masks cover
exactly each answer and its end-of-turn token, the training context is the serving prompt token for token, and a
short run teaches the model to stop (tiny models with the real 151,936 / 128,256-token vocabularies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data.conversation import Conversation
from tests.harness.models import hf_tokenizer
from trainer.prepare import IGNORE, ChatFormat, end_of_turn_tokens

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
END = {"qwen2": "<|im_end|>", "llama3": "<|eot_id|>"}
VECTORS = {"qwen2": "ggml-vocab-qwen2.gguf", "llama3": "ggml-vocab-llama-bpe.gguf"}

CHATS = {
    "single": [{"role": "user", "content": "What is the capital of France?"},
               {"role": "assistant", "content": "Paris. 🇫🇷"}],
    "system": [{"role": "system", "content": "Answer briefly."},
               {"role": "user", "content": "东京是哪个国家的首都？"},
               {"role": "assistant", "content": "日本 (Japan) — 東京は首都です。"}],
    "multi-turn": [{"role": "user", "content": "Name a colour."},
                   {"role": "assistant", "content": "Blue 🙂\nand also green."},
                   {"role": "user", "content": "¿Y otro más?"},
                   {"role": "assistant", "content": "Rojo, naïvement: 赤."}],
    "multi-turn-system": [{"role": "system", "content": "You are terse."},
                          {"role": "user", "content": "a?"},
                          {"role": "assistant", "content": "b."},
                          {"role": "user", "content": "x_1 = 42  # code?"},
                          {"role": "assistant", "content": "`x_1` is 42 👍🏽"}],
    # Llama 3's template trims every message: the trained answer is the trimmed one, as generation ends there.
    "padded-answer": [{"role": "user", "content": "Say hi."},
                      {"role": "assistant", "content": "Hi there!\n"}],
}


@pytest.fixture(params=["qwen2", "llama3"])
def family(request) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(f"real_{request.param}_dir")


def chat_format(model_dir: Path, system_prompt: str | None = None) -> ChatFormat:
    """ChatFormat exactly as the recipe builds it for this base."""
    from transformers import GenerationConfig

    tok = hf_tokenizer(model_dir)
    return ChatFormat(tok, None, system_prompt, end_of_turn_tokens(tok, GenerationConfig.from_pretrained(model_dir)))


def test_real_vocabulary_models(family) -> None:
    """The tiny models carry the families' real tokenizers (as transformers 5 loads them) on the right architecture."""
    import json

    from transformers import AutoConfig

    name, model_dir = family
    tok = hf_tokenizer(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if name == "qwen2":
        # transformers 5 builds its own Qwen2Tokenizer for any qwen2 model: it must be Qwen2.5's vocabulary.
        assert type(tok).__name__ == "Qwen2Tokenizer" and config.model_type == "qwen2"
        assert (len(tok), config.vocab_size) == (151_665, 151_936)
        assert (tok.bos_token, tok.eos_token, tok.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
        assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<tool_call>"]) == [151644, 151645, 151657]
        assert tok("hello world")["input_ids"] == [14990, 1879]  # Qwen2.5's ids; no BOS
    else:
        assert config.model_type == "llama" and len(tok) == config.vocab_size == 128_256
        assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", None)
        assert tok("hello world")["input_ids"] == [128000, 15339, 1917]  # Llama 3 adds BOS
    assert config.hidden_size == 64 and sum(f.stat().st_size for f in model_dir.iterdir()) < 60_000_000
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids(END[name]) in generation["eos_token_id"]


def test_hf_tokenizer_matches_the_real_one(family, llama_cpp_sources: Path) -> None:
    """llama.cpp's tokenizer test vectors were produced by the families' real HF tokenizers: ours gives their ids."""
    name, model_dir = family
    tok = hf_tokenizer(model_dir)
    vectors = llama_cpp_sources / "models" / VECTORS[name]
    texts = Path(f"{vectors}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = Path(f"{vectors}.out").read_text(encoding="utf-8").split("\n")[: len(texts)]
    assert len(texts) == len(expected) > 40
    for text, ids in zip(texts, expected, strict=True):
        assert tok(text, add_special_tokens=False)["input_ids"] == [int(i) for i in ids.split()], repr(text)


def _runs(labels: list[int]) -> list[tuple[int, list[int]]]:
    """(start, ids) of each run of consecutive trained positions."""
    runs: list[tuple[int, list[int]]] = []
    for k, label in enumerate(labels):
        if label == IGNORE:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == k:
            runs[-1][1].append(label)
        else:
            runs.append((k, [label]))
    return runs


@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("system_prompt", [None, "You are a careful assistant."])
def test_loss_mask_is_each_answer_and_its_end_token(family, chat: str, system_prompt: str | None) -> None:
    name, model_dir = family
    fmt = chat_format(model_dir, system_prompt)
    tok = fmt.tokenizer
    messages = CHATS[chat]
    conv = Conversation.from_dicts(messages)
    ids, labels = fmt.tokenize(conv)
    text = fmt.rendered(conv).text

    # The ids are the whole rendering tokenised at once (BOS as llama.cpp adds it), and the rendering carries
    # the system prompt the served model will get: the conversation's, else the configured one, else (Qwen2.5)
    # the template's default.
    bos = [tok.bos_token_id] if name == "llama3" else []
    assert ids == bos + tok(text.removeprefix(tok.bos_token or ""), add_special_tokens=False)["input_ids"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else system_prompt
    if name == "qwen2":
        assert text.startswith(f"<|im_start|>system\n{system or QWEN_DEFAULT_SYSTEM}<|im_end|>\n")
    elif system:
        assert text.startswith(f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>")
    else:
        assert "system" not in text

    # Trained: exactly each answer (as the template renders it) and its end-of-turn token, nothing else.
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    rendered = [a.strip() if name == "llama3" else a for a in answers]
    end_id = tok.convert_tokens_to_ids(END[name])
    runs = _runs(labels)
    assert [r for _, r in runs] == [tok(a, add_special_tokens=False)["input_ids"] + [end_id] for a in rendered]
    assert all(label in (IGNORE, i) for label, i in zip(labels, ids, strict=True))
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for (start, run), answer, turn in zip(runs, rendered, turns, strict=True):
        assert tok.decode(run) == answer + END[name]
        # What precedes an answer is, token for token, the prompt serving sends to get that answer.
        assert ids[:start] == fmt.encode_prompt(Conversation.from_dicts(messages[: turn + 1]))


# ---- a short real run: the model learns to stop --------------------------------------------------------
# A 152k-token vocabulary makes every token's loss cost ~2,000x the tiny vocabulary's: few, short examples.
RUN = {"cpu_threads": 1, "learning_rate": 2e-2, "max_steps": 6, "batch_size": 4, "max_length": 64,
       "max_new_tokens": 2, "eval_generate": 1, "probes": [], "probe_eval_samples": 0, "warmup_ratio": 0,
       "retention_prompts": 0, "replay_ratio": 0.0}


@pytest.fixture(scope="module")
def short_snapshot(tmp_path_factory) -> Path:
    from tests.harness.snapshots import write_snapshot

    things = ["cat", "dog", "tree", "river", "house", "bird", "stone", "cloud", "apple", "road", "lamp", "boat"]
    colours = ["red", "blue", "green", "white"]
    convs = [Conversation.qa(f"what colour is the {t}?", f"the {t} is {colours[i % 4]}.") for i, t in enumerate(things)]
    return write_snapshot(tmp_path_factory.mktemp("short-snapshot"), convs, eval_fraction=0.2)


def end_token_loss(model, fmt: ChatFormat, conversations: list[Conversation], end_id: int) -> float:
    """Mean cross-entropy of the end-of-turn tokens that close the answers (the decision to stop)."""
    import torch

    losses = []
    with torch.no_grad():
        for conv in conversations:
            ids, labels = fmt.tokenize(conv)
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
            losses += [-logp[k - 1, end_id].item() for k in range(1, len(ids)) if labels[k] == end_id]
    assert losses, "no end-of-turn token is trained"
    return sum(losses) / len(losses)


@pytest.mark.slow  # trains each family's model for real
def test_model_learns_to_stop(family, short_snapshot: Path, tmp_path: Path) -> None:
    from data.snapshot import read_snapshot
    from trainer.config import load_config
    from trainer.recipe import TrainRequest, load_adapter, train

    name, model_dir = family
    out = tmp_path / "run"
    metrics = train(TrainRequest(short_snapshot, str(model_dir), out, load_config(None, RUN)))
    assert metrics["steps"] == RUN["max_steps"]
    fmt = chat_format(model_dir)
    end_id = fmt.tokenizer.convert_tokens_to_ids(END[name])
    model = load_adapter(model_dir, out).eval()
    evals = read_snapshot(short_snapshot).eval
    with model.disable_adapter():
        before = end_token_loss(model, fmt, evals, end_id)
    after = end_token_loss(model, fmt, evals, end_id)
    print(f"\n[{name}] end-of-turn loss {before:.2f} → {after:.2f}; eval loss "
          f"{metrics['eval_loss_before']:.2f} → {metrics['eval_loss_after']:.2f}")
    assert after < before - 3.0  # measured 12.7 → 6.6 (Qwen2.5), 12.6 → 8.0 (Llama 3)
