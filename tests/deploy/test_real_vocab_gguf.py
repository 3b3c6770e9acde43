"""llama.cpp on the real Qwen2.5 / Llama 3 vocabularies: its converter recognises the pre-tokenizer, the GGUF
tokenises as transformers does, and a PEFT adapter converted by deploy/gguf.py gives PEFT's logits in llama.cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy.gguf import convert_adapter
from tests.harness.models import ConvertedBase, hf_tokenizer
from tests.harness.parity import CHAT, llama_logits, peft_adapter

llama_cpp = pytest.importorskip("llama_cpp")

EXPECTED = {  # what llama.cpp must read from the GGUF: pre-tokenizer, end of turn, whether it adds BOS
    "qwen2": {"tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.eos_token_id": "151645",
              "tokenizer.ggml.add_bos_token": "false"},
    "llama3": {"tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.eos_token_id": "128009",
               "tokenizer.ggml.bos_token_id": "128000", "tokenizer.ggml.add_bos_token": "true"},
}
VECTORS = {"qwen2": "ggml-vocab-qwen2.gguf", "llama3": "ggml-vocab-llama-bpe.gguf"}
MIXED = [
    "Hello, world! How are you today?", "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "emoji 🙂👍🏽 👨‍👩‍👧 🇫🇷 and ✅", "naïve café — “quotes” ‘single’ …", "Ünïcödé: Ωμέγα, Привет, مرحبا, שלום",
    "x_1 = 42  # code\n    return f(x) if x else None\n\tindent", "  leading and trailing  \n\n\n",
    "3.14159 2026-12-01 1,000,000",
    "<|im_start|>user\nwhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi 👋<|eot_id|><|start_header_id|>assistant"
    "<|end_header_id|>\n\n", "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "ﬁ ligature ① ² ㎏ full-width ＡＢＣ",
]


@pytest.fixture(params=["qwen2", "llama3"])
def family(request, real_vocab_ggufs: dict[str, ConvertedBase]) -> tuple[str, Path, ConvertedBase]:
    return request.param, request.getfixturevalue(f"real_{request.param}_dir"), real_vocab_ggufs[request.param]


def vocab_only(gguf: Path):
    return llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)


def test_converter_recognises_the_pre_tokenizer(family) -> None:
    name, _, base = family
    # An unknown pre-tokenizer hash makes the converter print its chkhsh and stop (or, in older versions, fall
    # back to the default pre-tokenizer and tokenise differently than the model was trained).
    assert "pre-tokenizer was not recognized" not in base.log and "chkhsh" not in base.log, base.log[-2000:]
    metadata = vocab_only(base.path).metadata
    assert {k: metadata.get(k) for k in EXPECTED[name]} == EXPECTED[name]


def test_gguf_tokenises_as_transformers(family, llama_cpp_sources: Path) -> None:
    name, model_dir, base = family
    hf = hf_tokenizer(model_dir)
    llm = vocab_only(base.path)
    corpus = Path(f"{llama_cpp_sources / 'models' / VECTORS[name]}.inp").read_text(encoding="utf-8")
    texts = [*corpus.split("\n__ggml_vocab_test__\n"), *MIXED]
    for text in texts:
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert hf(text, add_special_tokens=False)["input_ids"] == theirs, repr(text)
    # Plain text as a prompt: BOS exactly where the family's tokenizer puts one (Llama 3), none for Qwen2.5.
    for text in MIXED[:3]:
        assert hf(text)["input_ids"] == llm.tokenize(text.encode(), add_bos=True, special=True)


def test_parity_with_peft(family, tmp_path: Path, capsys) -> None:
    """As test_gguf.test_parity_with_peft on the SentencePiece models, with the real vocabularies."""
    import torch

    name, model_dir, base = family
    peft_model = peft_adapter(model_dir, tmp_path / "adapter")
    adapter_gguf = convert_adapter(tmp_path / "adapter", model_dir, tmp_path / "adapter.gguf", outtype="f32")
    prompt = hf_tokenizer(model_dir).apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = vocab_only(base.path).tokenize(prompt.encode(), add_bos=False, special=True)  # Llama 3: BOS in the text
    with torch.no_grad():
        ours = peft_model(torch.tensor([ids])).logits[0].numpy()
    theirs = llama_logits(base.path, ids, adapter_gguf)
    effect = float(np.abs(theirs - llama_logits(base.path, ids)).max())
    diff = float(np.abs(ours - theirs).max())
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    with capsys.disabled():
        print(f"\n[real {name}] PEFT vs llama.cpp+LoRA over {len(ids)} tokens: max|Δ|={diff:.2e}, argmax agreement "
              f"{agree:.0%}; LoRA effect max|Δ|={effect:.2f}")
    assert diff <= 1e-2 and agree == 1.0
    assert effect > 0.5  # the adapter really moves the logits, so the check above can fail
