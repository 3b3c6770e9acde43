"""A tiny random-initialised chat model for tests and demos, built offline in seconds.

Two kinds of vocabulary:

- ``spm`` (the default): a 400-token SentencePiece BPE trained here on generated text (``tokenizer.model`` kept
  in the directory so llama.cpp's converter can read it), chat markers as special tokens, and a chat template:
  plain ChatML, or the real Qwen2.5 / Llama 3 templates that ship with TRL. A few hundred KB.
- ``qwen2`` / ``llama3``: the families' *real* byte-level BPE vocabularies (151,936 and 128,256 tokens) with
  their special tokens, BOS/EOS conventions and real chat templates, on the matching architecture (qwen2,
  llama) with a tiny hidden size. The vocabularies come from llama.cpp's vocab-only GGUF files inside the
  llama-cpp-python source archive the project caches; converting one takes 15–20 s, so the converted
  ``tokenizer.json`` is cached once per machine (``~/.cache/loraloop/tokenizers/``). Embeddings are tied (as in
  Qwen2.5-0.5B and Llama 3.2-1B): ~10M parameters, ~40 MB.

Known limit of ``spm``: transformers 5 loads every ``qwen2`` model with its byte-level ``Qwen2Tokenizer``
whatever ``tokenizer_config.json`` says, which drops this SentencePiece vocabulary's spaces on the HF side;
llama.cpp tokenises the qwen2 model correctly. Tests that need HF and llama.cpp to tokenise alike use the llama
architecture (which can carry any of the templates), or the real ``qwen2`` vocabulary.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.errors import LoraloopError
from trainer.cache import built_once

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ARCHS = ("llama", "qwen2")
TEMPLATES = ("chatml", "qwen2.5", "llama3")
LLAMA_CPP_SDIST_DIR = Path.home() / ".cache" / "loraloop" / "wheels"  # where `make install` keeps the sdist
TOKENIZER_CACHE = Path.home() / ".cache" / "loraloop" / "tokenizers"


@dataclass(frozen=True, slots=True)
class RealVocab:
    """A family's real tokenizer as its Instruct checkpoints ship it on the Hub (the files we write mirror those)."""

    gguf: str  # llama.cpp's vocab-only file under vendor/llama.cpp/models/ in the llama-cpp-python sdist
    arch: str
    template: str
    vocab_size: int  # the model's embedding rows (Qwen2.5 pads its 151,665 tokens to 151,936)
    bos: str | None
    eos: str  # the Instruct model's end of turn
    pad: str | None
    generation_eos: tuple[str, ...]  # generation_config.json's eos_token_id list
    config_bos: str  # config.json's bos_token_id (Qwen2.5 names <|endoftext|> there though its tokenizer has none)
    tokenizer_class: str
    ignore_merges: bool  # Llama 3 takes a whole pre-token that is in the vocabulary as is (so does llama.cpp)
    added_tokens: tuple[tuple[int, str, bool], ...] = ()  # (id, text, special) the GGUF lacks
    extra_config: tuple[tuple[str, object], ...] = ()


# llama.cpp's qwen2 vocabulary is Qwen1.5's: same BPE, but Qwen2.5 added these tokens where Qwen1.5 has padding.
_QWEN25_ADDED = tuple((151_646 + i, t, i < 11) for i, t in enumerate((
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
    "<|file_sep|>")))

REAL_VOCABS = {
    "qwen2": RealVocab(
        gguf="ggml-vocab-qwen2.gguf", arch="qwen2", template="qwen2.5", vocab_size=151_936, bos=None,
        eos="<|im_end|>", pad="<|endoftext|>", generation_eos=("<|im_end|>", "<|endoftext|>"),
        config_bos="<|endoftext|>", tokenizer_class="Qwen2Tokenizer", ignore_merges=False, added_tokens=_QWEN25_ADDED,
        extra_config=(("add_prefix_space", False), ("errors", "replace"), ("split_special_tokens", False),
                      ("clean_up_tokenization_spaces", False), ("model_max_length", 131072)),
    ),
    "llama3": RealVocab(
        gguf="ggml-vocab-llama-bpe.gguf", arch="llama", template="llama3", vocab_size=128_256,
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, generation_eos=("<|end_of_text|>", "<|eot_id|>"),
        config_bos="<|begin_of_text|>", tokenizer_class="PreTrainedTokenizerFast", ignore_merges=True,
        # Meta ships clean_up_tokenization_spaces=True, which transformers 5 ignores for BPE (warning on every load).
        extra_config=(("clean_up_tokenization_spaces", False), ("model_max_length", 8192)),
    ),
}
TOKENIZERS = ("spm", *REAL_VOCABS)
_CACHE_FORMAT = "v4"  # bump when _convert_vocab's output changes, so stale caches are not reused
_SPECIAL_IDS = "special_ids.json"
_GGUF_PADDING = re.compile(r"\[PAD\d+\]")  # what llama.cpp writes for ids the tokenizer does not use

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


def build_tiny_model(out_dir: Path | str, arch: str = "llama", template: str = "chatml", seed: int = 0,
                     tokenizer: str = "spm", sdist: Path | str | None = None) -> Path:
    """Write a tiny model directory that transformers, PEFT/TRL and llama.cpp's converter all accept.

    ``tokenizer`` ``qwen2``/``llama3`` picks the family's real vocabulary, architecture and chat template
    (``arch``/``template`` are then ignored) and needs llama-cpp-python's source archive (``sdist``, or the one
    in ~/.cache/loraloop/wheels) unless the converted tokenizer is already cached.
    """
    if tokenizer in REAL_VOCABS:
        return build_real_vocab_model(out_dir, tokenizer, seed=seed, sdist=sdist)
    if tokenizer != "spm":
        raise ValueError(f"unknown tokenizer {tokenizer!r} (expected one of {', '.join(TOKENIZERS)})")
    import sentencepiece as spm
    from transformers import LlamaTokenizer

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
        hf_tokenizer = LlamaTokenizer.from_pretrained(tmp, legacy=False, add_prefix_space=False)
    eos = _EOS[template]
    hf_tokenizer.eos_token = eos
    hf_tokenizer.pad_token = "<pad>"  # distinct from the end of turn, so collators never mask the learned EOS
    hf_tokenizer.add_special_tokens({"additional_special_tokens": markers})
    hf_tokenizer.chat_template = _template_text(template)
    hf_tokenizer.save_pretrained(out)
    (out / "tokenizer.model").write_bytes(proto.getvalue())  # transformers 5 does not write it; llama.cpp needs it
    _write_added_tokens(out, hf_tokenizer, markers)

    model = _random_model(
        arch, seed,
        vocab_size=len(hf_tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, initializer_range=0.1, tie_word_embeddings=False,
        max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=hf_tokenizer.bos_token_id,
        eos_token_id=hf_tokenizer.convert_tokens_to_ids(eos), pad_token_id=hf_tokenizer.pad_token_id,
    )
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out)
    return out


def _random_model(arch: str, seed: int, **config: Any) -> PreTrainedModel:
    """A randomly initialised ``qwen2`` (else Llama) causal LM of ``config``'s shape; ``seed`` fixes its weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch == "qwen2":
        qwen2 = Qwen2Config(**config)
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(qwen2)
    llama = LlamaConfig(**config)
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama)


def _write_added_tokens(out: Path, tokenizer: PreTrainedTokenizerBase, markers: list[str]) -> None:
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


# ---- the real Qwen2 / Llama 3 vocabularies ----------------------------------------------------------------
class VocabUnavailable(LoraloopError, RuntimeError):
    """The real vocabulary is neither cached nor extractable (no llama-cpp-python source archive)."""


def find_llama_cpp_sdist(sdist: Path | str | None = None) -> Path | None:
    """The llama-cpp-python source archive: the one given, else the newest in ~/.cache/loraloop/wheels."""
    if sdist is not None:
        return Path(sdist) if Path(sdist).is_file() else None
    found = sorted(LLAMA_CPP_SDIST_DIR.glob("llama_cpp_python-*.tar.gz"))
    return found[-1] if found else None


def real_vocab_tokenizer(name: str, sdist: Path | str | None = None, cache: Path | None = None) -> Path:
    """A directory holding the family's ``tokenizer.json``, converted from llama.cpp's GGUF once per machine.

    The cache key is the sdist's file name (its llama.cpp version) when an sdist is known, so a newer llama.cpp
    converts again; without one, any cached conversion is used.
    """
    vocab = REAL_VOCABS[name]
    root = cache or TOKENIZER_CACHE
    archive = find_llama_cpp_sdist(sdist)
    if archive is not None:
        target = root / f"{name}-{archive.name.removesuffix('.tar.gz')}-{_CACHE_FORMAT}"
    else:
        cached = sorted(root.glob(f"{name}-*-{_CACHE_FORMAT}/{_SPECIAL_IDS}"))
        if cached:
            return cached[-1].parent
        raise VocabUnavailable(
            f"the real {name} vocabulary needs llama-cpp-python's source archive (llama.cpp's {vocab.gguf} is in "
            f"it): run `make install` (it caches it in {LLAMA_CPP_SDIST_DIR}) or pass its path"
        )
    return built_once(target, _SPECIAL_IDS, lambda work: _convert_vocab(vocab, archive, work))  # ids written last


def _convert_vocab(vocab: RealVocab, archive: Path, out: Path) -> None:
    """llama.cpp's vocab-only GGUF → ``tokenizer.json`` as the family ships it (the slow step: 15–20 s)."""
    from transformers import AutoTokenizer

    member = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/models/{vocab.gguf}"
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
        try:
            info = tar.getmember(member)
        except KeyError:
            raise VocabUnavailable(f"{archive} has no {member}") from None
        info.name = vocab.gguf
        tar.extract(info, tmp, filter="data")
        AutoTokenizer.from_pretrained(tmp, gguf_file=vocab.gguf).save_pretrained(out)
    path = out / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    # As the Hub's files: the BPE vocabulary holds ordinary tokens only, added tokens are listed once. Dropped:
    # the GGUF's padding names, and the "<|endoftext|>" transformers' GGUF loader appends to Llama 3 (id 128256,
    # past the embeddings).
    added = [t for t in data["added_tokens"]
             if t["id"] < vocab.vocab_size and not _GGUF_PADDING.fullmatch(t["content"])]
    added += [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
               "normalized": False, "special": special} for i, text, special in vocab.added_tokens]
    data["added_tokens"] = sorted(added, key=lambda t: t["id"])
    special_ids = {t["id"] for t in data["added_tokens"]}
    data["model"]["vocab"] = {k: i for k, i in data["model"]["vocab"].items()
                              if i not in special_ids and not _GGUF_PADDING.fullmatch(k)}
    # The GGUF has no flag for it; without it " Việt" splits into 3 tokens where Llama 3 (and llama.cpp) use one.
    data["model"]["ignore_merges"] = vocab.ignore_merges
    if vocab.tokenizer_class == "Qwen2Tokenizer":
        data["normalizer"] = {"type": "NFC"}  # as Qwen2.5's tokenizer.json (and transformers' Qwen2Tokenizer)
    if vocab.bos:  # Llama 3's tokenizer adds BOS through its post-processor; the GGUF loader drops that
        bos_id = next(t["id"] for t in data["added_tokens"] if t["content"] == vocab.bos)
        bos = {"SpecialToken": {"id": vocab.bos, "type_id": 0}}
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": vocab.bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {vocab.bos: {"id": vocab.bos, "ids": [bos_id], "tokens": [vocab.bos]}},
        }
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for extra in out.iterdir():
        if extra.name != "tokenizer.json":
            extra.unlink()  # the GGUF's own config and (Qwen1.5) template: ours are written per model
    # The special tokens' ids, so building a model needs no (seconds-long) tokenizer load.
    special = {t["content"]: t["id"] for t in data["added_tokens"]}
    (out / _SPECIAL_IDS).write_text(json.dumps(special, ensure_ascii=False), encoding="utf-8")


def build_real_vocab_model(out_dir: Path | str, name: str, seed: int = 0, sdist: Path | str | None = None,
                           cache: Path | None = None) -> Path:
    """A tiny random model of the family's architecture with its real vocabulary, special tokens and template."""
    from transformers import GenerationConfig

    if name not in REAL_VOCABS:
        raise ValueError(f"unknown tokenizer {name!r} (expected one of {', '.join(REAL_VOCABS)})")
    vocab = REAL_VOCABS[name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = real_vocab_tokenizer(name, sdist, cache)
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    config = {"tokenizer_class": vocab.tokenizer_class, "bos_token": vocab.bos, "eos_token": vocab.eos,
              "pad_token": vocab.pad, "unk_token": None, "add_bos_token": vocab.bos is not None,
              "model_input_names": ["input_ids", "attention_mask"], **dict(vocab.extra_config)}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "chat_template.jinja").write_text(_template_text(vocab.template), encoding="utf-8")
    ids = json.loads((source / _SPECIAL_IDS).read_text(encoding="utf-8"))

    model = _random_model(
        vocab.arch, seed,
        vocab_size=vocab.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, initializer_range=0.1, tie_word_embeddings=True,
        max_position_embeddings=4096, rms_norm_eps=1e-6,
        bos_token_id=ids[vocab.config_bos], eos_token_id=ids[vocab.eos],
    )
    model.save_pretrained(out)
    GenerationConfig(  # type: ignore[no-untyped-call]  # transformers leaves GenerationConfig(**kwargs) unannotated
        bos_token_id=model.config.bos_token_id, eos_token_id=[ids[t] for t in vocab.generation_eos],
        pad_token_id=ids.get(vocab.pad or ""),
    ).save_pretrained(out)
    return out
