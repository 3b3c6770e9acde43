"""A tiny random-initialised chat model for tests and demos, built offline in a couple of seconds.

Llama or Qwen2 architecture (hidden 64, 2 layers), a SentencePiece BPE tokenizer trained here on generated
text (``tokenizer.model`` kept in the directory so llama.cpp's converter can read it), chat markers as
special tokens, and a chat template: plain ChatML, or the real Qwen2.5 / Llama 3 templates that ship with TRL.

Known limit: transformers 5 loads every ``qwen2`` model with its byte-level ``Qwen2Tokenizer`` whatever
``tokenizer_config.json`` says, which drops this SentencePiece vocabulary's spaces on the HF side; llama.cpp
tokenises the qwen2 model correctly. Tests that need HF and llama.cpp to tokenise alike use the llama
architecture (which can carry any of the templates).
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from pathlib import Path

ARCHS = ("llama", "qwen2")
TEMPLATES = ("chatml", "qwen2.5", "llama3")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_MARKERS = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "qwen2.5": ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"],
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}
_EOS = {"chatml": "<|im_end|>", "qwen2.5": "<|im_end|>", "llama3": "<|eot_id|>"}
_WORDS = (
    "the a of to and is in what how why who where when which answer question model train data adapter rank "
    "alpha loss token review rating expert teach paris france italy rome colour blue red green white black "
    "cat dog tree river house bird stone cloud apple road one two three four five six seven eight nine ten "
    "hello world you are helpful assistant system user yes no please thanks because tell me about there"
).split()


def _template_text(template: str) -> str:
    if template == "chatml":
        return CHATML
    import trl

    name = {"qwen2.5": "qwen2_5.jinja", "llama3": "llama3.jinja"}[template]
    return (Path(trl.__file__).parent / "chat_templates" / name).read_text(encoding="utf-8")


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    punctuation = [".", "?", "!", ",", ":", ""]
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 16))) + rng.choice(punctuation)
             for _ in range(3000)]
    lines += [w.capitalize() for w in _WORDS] + ["0123456789", "{}[]()<>\"'#*-_=+/\\|@$%^&~`;"]
    return lines


def build_tiny_model(out_dir: Path | str, arch: str = "llama", template: str = "chatml", seed: int = 0) -> Path:
    """Write a tiny model directory that transformers, PEFT/TRL and llama.cpp's converter all accept."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer, Qwen2Config, Qwen2ForCausalLM

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (expected one of {', '.join(ARCHS)})")
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r} (expected one of {', '.join(TEMPLATES)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markers = _MARKERS[template]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)), model_writer=proto, vocab_size=400, model_type="bpe",
        byte_fallback=True, user_defined_symbols=markers, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, pad_piece="<pad>", minloglevel=2,
        num_threads=1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(proto.getvalue())
        tokenizer = LlamaTokenizer.from_pretrained(tmp, legacy=False, add_prefix_space=False)
    eos = _EOS[template]
    tokenizer.eos_token = eos
    tokenizer.pad_token = "<pad>"  # distinct from the end of turn, so collators never mask the learned EOS
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    tokenizer.chat_template = _template_text(template)
    tokenizer.save_pretrained(out)
    (out / "tokenizer.model").write_bytes(proto.getvalue())  # transformers 5 does not write it; llama.cpp needs it
    _write_added_tokens(out, tokenizer, markers)

    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, initializer_range=0.1, tie_word_embeddings=False,
        max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(eos), pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    return out


def _write_added_tokens(out: Path, tokenizer, markers: list[str]) -> None:
    """Record the chat markers in ``added_tokens_decoder``: llama.cpp's converter reads them from there."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder") or {}
    for token in ["<unk>", "<s>", "</s>", "<pad>", *markers]:
        token_id = tokenizer.convert_tokens_to_ids(token)
        decoder[str(token_id)] = {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": True}
    config["added_tokens_decoder"] = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
    # Like the real families: ChatML/Qwen add no BOS, Llama 3 does (llama.cpp's converter copies the flag).
    config["add_bos_token"] = "<|begin_of_text|>" in markers
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
