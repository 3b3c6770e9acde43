"""The text and tokens trained on are exactly what serving renders, and the loss covers only the answers."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, LlamaTokenizer

from data.conversation import Conversation
from trainer.config import TrainingRefused
from trainer.prepare import IGNORE, ChatFormat, end_of_turn_tokens

SYSTEM = "you are a helpful assistant."
CONVERSATIONS = {
    "single": Conversation.qa("what colour is the cat?", "the cat is blue."),
    "system": Conversation.qa("how many dogs are there?", "there are two dogs.", system=SYSTEM),
    "multi-turn": Conversation.from_dicts([
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "tell me about the river."},
        {"role": "assistant", "content": "the river is green."},
        {"role": "user", "content": "and the two birds?"},
        {"role": "assistant", "content": "the two birds are red.\nthey sing."},
        {"role": "user", "content": "thanks!"},
        {"role": "assistant", "content": "you are welcome."},
    ]),
    "unicode": Conversation.qa("was ist ein Baum? 🌳", "ein Baum ist grün — wirklich."),
}


def load_tokenizer(model_dir):
    """The tiny model's tokenizer. For the qwen2 model (real Qwen2.5 template) it is loaded as what it is, a
    SentencePiece tokenizer: transformers 5 would force the byte-level Qwen2Tokenizer on it, which drops this
    vocabulary's spaces (a limit of the test model, not of real Qwen checkpoints)."""
    if "qwen2" in (model_dir / "config.json").read_text():
        return LlamaTokenizer.from_pretrained(model_dir)
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module", params=["llama-chatml", "qwen2-qwen2.5", "llama-llama3"])
def tokenizer(request, tiny_llama_dir, tiny_qwen2_dir, tiny_llama3_dir):
    dirs = {"llama-chatml": tiny_llama_dir, "qwen2-qwen2.5": tiny_qwen2_dir, "llama-llama3": tiny_llama3_dir}
    return load_tokenizer(dirs[request.param])


def serving_prompt(tokenizer, messages) -> str:
    """What the serving side renders to ask for the next answer: the base's own template, nothing of ours."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("system_prompt", [None, "you answer briefly."])
def test_trained_text_is_byte_identical_to_serving_rendering(tokenizer, name, system_prompt):
    conv = CONVERSATIONS[name]
    fmt = ChatFormat(tokenizer, system_prompt=system_prompt)
    messages = conv.to_dicts()
    if conv.system is None and system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    rendered = fmt.rendered(conv)
    # The whole trained text is the template's rendering of the conversation (system prompt included).
    assert rendered.text == tokenizer.apply_chat_template(messages, tokenize=False)
    ids, labels = fmt.tokenize(conv)
    assert tokenizer.decode(ids) == rendered.text
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(rendered.spans) == len(answers)
    for (start, end), i in zip(rendered.spans, answers, strict=True):
        prompt = serving_prompt(tokenizer, messages[:i])
        # Each answer follows exactly the prompt serving sends, and ends with the end-of-turn token.
        assert rendered.text[:start] == prompt
        assert rendered.text[start:end] == messages[i]["content"] + tokenizer.eos_token
        # The token ids the model reads before the answer are the ids serving feeds it.
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert ids[:len(prompt_ids)] == prompt_ids


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_loss_only_on_assistant_answers_and_their_end_of_turn(tokenizer, name):
    conv = CONVERSATIONS[name]
    ids, labels = ChatFormat(tokenizer).tokenize(conv)
    assert len(ids) == len(labels)
    trained = [(i, tok) for i, (tok, lab) in enumerate(zip(ids, labels, strict=True)) if lab != IGNORE]
    assert all(labels[i] == ids[i] for i, _ in trained)
    answers = [m.content for m in conv.messages if m.role == "assistant"]
    # Contiguous runs of trained tokens decode to each answer + end-of-turn, in order; nothing else is trained.
    runs, current, last = [], [], None
    for i, tok in trained:
        if last is not None and i != last + 1:
            runs.append(current)
            current = []
        current.append(tok)
        last = i
    runs.append(current)
    assert [tokenizer.decode(r) for r in runs] == [a + tokenizer.eos_token for a in answers]
    assert sum(t == tokenizer.eos_token_id for t in [ids[i] for i, _ in trained]) == len(answers)


def test_default_system_prompt_matches_an_explicit_one(tokenizer):
    implicit = ChatFormat(tokenizer, system_prompt=SYSTEM).tokenize(CONVERSATIONS["single"])
    explicit_conv = Conversation.qa("what colour is the cat?", "the cat is blue.", system=SYSTEM)
    assert ChatFormat(tokenizer).tokenize(explicit_conv) == implicit
    # An explicit system prompt is kept, not replaced by the default.
    other = ChatFormat(tokenizer, system_prompt="something else").rendered(CONVERSATIONS["system"]).text
    assert SYSTEM in other and "something else" not in other


def test_qwen_template_without_system_prompt_uses_its_own_default(tiny_qwen2_dir):
    tok = load_tokenizer(tiny_qwen2_dir)
    text = ChatFormat(tok).rendered(CONVERSATIONS["single"]).text
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_truncation_keeps_the_start_and_drops_examples_without_an_answer(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    fmt = ChatFormat(tok)
    long = Conversation.qa("tell me about the tree. " * 30, "the tree is green.")
    short = CONVERSATIONS["single"]
    n_short = len(fmt.tokenize(short)[0])
    split = fmt.prepare([short, long], max_length=n_short)
    assert split.dropped == 1 and split.truncated == 1 and len(split.examples) == 1
    assert split.trained_tokens == sum(label != IGNORE for label in split.examples[0]["labels"])


def test_template_without_end_of_turn_is_refused(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
               "{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(TrainingRefused, match="never learn to stop"):
        ChatFormat(tok, template=template).rendered(CONVERSATIONS["single"])


def test_template_that_renders_history_differently_is_refused(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    # Marks the generation prompt differently from a finished turn: serving would not match training.
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant (draft)\n{% endif %}")
    with pytest.raises(TrainingRefused, match="differently"):
        ChatFormat(tok, template=template).rendered(CONVERSATIONS["single"])


def test_base_without_chat_template_is_refused_unless_configured(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    with pytest.raises(TrainingRefused, match="no chat template"):
        ChatFormat(tok)
    fmt = ChatFormat(tok, template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                                   "{% endif %}")
    assert fmt.rendered(CONVERSATIONS["single"]).trained_text() == ["the cat is blue.<|im_end|>"]


def test_end_of_turn_includes_generation_config_eos(tiny_llama_dir):
    from transformers import GenerationConfig

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    gen = GenerationConfig(eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|im_start|>")])
    assert end_of_turn_tokens(tok, gen) == [tok.eos_token, "<|im_start|>"]


WEATHER_TOOL = ('[{"type": "function", "function": {"name": "weather", "description": "Weather in a city.", '
                '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]')
TOOL_CONVERSATION = Conversation.from_dicts([
    {"role": "user", "content": "what is the weather in paris?"},
    {"role": "tool_call", "content": '{"name": "weather", "arguments": {"city": "paris"}}'},
    {"role": "tool", "content": '{"celsius": 20}'},
    {"role": "assistant", "content": "it is 20 degrees in paris."},
], tools=WEATHER_TOOL).validate()


def test_tool_calls_are_trained_where_the_template_renders_them(tiny_llama_dir, tiny_qwen2_dir):
    qwen = ChatFormat(load_tokenizer(tiny_qwen2_dir))
    call, answer = qwen.rendered(TOOL_CONVERSATION).trained_text()
    assert '"name": "weather"' in call and call.endswith("</tool_call><|im_end|>")
    assert answer == "it is 20 degrees in paris.<|im_end|>"
    # The tiny ChatML template has no tool-call syntax: such conversations are skipped and counted, not mangled.
    chatml = ChatFormat(AutoTokenizer.from_pretrained(tiny_llama_dir))
    split = chatml.prepare([TOOL_CONVERSATION, CONVERSATIONS["single"]], 512)
    assert (split.unrenderable, len(split.examples)) == (1, 1)
