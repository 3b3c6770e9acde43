"""``loraloop deploy convert``: the base defaults to the recorded one; a mismatched base or a folder as --out is a
clear refusal (a llama adapter used to convert silently against a qwen2 base). Beside the GGUF adapter it writes a
Modelfile ``ollama create -f`` takes, which prompts the model as training did."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from bot.cli import app
from deploy.gguf import ConversionError, convert_adapter, recorded_base
from deploy.go_template import ollama_prompt
from deploy.modelfile import SAMPLE_CHATS, render_hf
from trainer.tiny import CHATML

SYSTEM_PROMPT = "You answer in one short line."


def peft_adapter(base_dir, out):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


def convert(*args: str):
    return CliRunner().invoke(app, ["deploy", "convert", *args])


def read_adapter(path):
    """What llama.cpp reads from a GGUF LoRA: its header and its tensors (name → (type, values))."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    header = {key: reader.fields[key].contents() for key in
              ("general.type", "general.architecture", "adapter.type", "adapter.lora.alpha")}
    return header, {t.name: (t.tensor_type.name, np.array(t.data)) for t in reader.tensors}


def check_adapter(path, adapter_dir, tensor_type="F16"):
    """``path`` is the GGUF LoRA of ``adapter_dir``: a llama adapter with its alpha, and a lora_a/lora_b pair of
    ``tensor_type`` for each module the PEFT adapter trained, holding its weights."""
    from safetensors.numpy import load_file

    header, tensors = read_adapter(path)
    alpha = json.loads((adapter_dir / "adapter_config.json").read_text())["lora_alpha"]
    assert header == {"general.type": "adapter", "general.architecture": "llama", "adapter.type": "lora",
                      "adapter.lora.alpha": alpha}
    peft = load_file(adapter_dir / "adapter_model.safetensors")
    assert len(tensors) == len(peft) and {kind for kind, _ in tensors.values()} == {tensor_type}
    # v_proj's rows are not permuted (only Q and K are): its lora_A is the trained one, as written.
    lora_a = next(v for k, v in peft.items() if "layers.0.self_attn.v_proj.lora_A" in k)
    assert np.allclose(tensors["blk.0.attn_v.weight.lora_a"][1], lora_a, atol=1e-3)
    return tensors


@pytest.fixture(scope="module")
def llama_adapter(tmp_path_factory, tiny_llama_dir):
    out = peft_adapter(tiny_llama_dir, tmp_path_factory.mktemp("adapter") / "run")
    # What `loraloop train` records next to the adapter.
    (out / "run.json").write_text(json.dumps({"base": str(tiny_llama_dir), "base_dir": str(tiny_llama_dir),
                                              "chat_template": CHATML, "system_prompt": SYSTEM_PROMPT}))
    return out


def test_writes_a_gguf_adapter_and_a_modelfile_that_prompts_as_training_did(llama_adapter, tmp_path):
    out = tmp_path / "deploy" / "run.gguf"
    out.parent.mkdir()
    result = convert("--adapter", str(llama_adapter), "--out", str(out), "--tag", "mine:v1",
                     "--base-tag", "llama3.2:1b")
    assert result.exit_code == 0, result.output

    names = list(check_adapter(out, llama_adapter))
    assert names and all(re.search(r"\.lora_[ab]$", n) for n in names), names[:4]
    assert {n.removesuffix("_a") for n in names if n.endswith("_a")} == \
        {n.removesuffix("_b") for n in names if n.endswith("_b")}  # each A with its B
    assert any(n.startswith("blk.0.attn_q.") for n in names)

    modelfile = out.parent / "Modelfile"
    text = modelfile.read_text()
    assert f"ollama create mine:v1 -f {modelfile}" in result.output
    assert text.startswith("FROM llama3.2:1b\nADAPTER ./run.gguf\n")
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M).group(1)
    assert system == SYSTEM_PROMPT
    stops = re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)
    assert stops == ["<|im_start|>", "<|im_end|>"]
    assert re.search(r"^PARAMETER num_predict \d+$", text, re.M)
    for chat in SAMPLE_CHATS:
        trained = chat if chat[0]["role"] == "system" else [{"role": "system", "content": SYSTEM_PROMPT}, *chat]
        assert ollama_prompt(template, system, chat) == render_hf(CHATML, trained)


def test_base_defaults_to_the_recorded_one(llama_adapter, tiny_llama_dir, tmp_path):
    assert recorded_base(llama_adapter) == tiny_llama_dir
    result = convert("--adapter", str(llama_adapter), "--out", str(tmp_path / "a.gguf"), "--outtype", "f32")
    assert result.exit_code == 0, result.output
    check_adapter(tmp_path / "a.gguf", llama_adapter, tensor_type="F32")


def test_a_base_of_another_architecture_is_refused(llama_adapter, tiny_qwen2_dir, tmp_path):
    result = convert("--adapter", str(llama_adapter), "--base", str(tiny_qwen2_dir), "--out", str(tmp_path / "q.gguf"))
    assert result.exit_code == 1
    assert "is not the base this adapter was trained on" in result.output
    assert "LlamaForCausalLM" in result.output and "Qwen2ForCausalLM" in result.output
    assert not (tmp_path / "q.gguf").exists()


def test_a_copy_of_the_same_base_is_accepted(llama_adapter, tiny_llama_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    result = convert("--adapter", str(llama_adapter), "--base", str(copy), "--out", str(tmp_path / "c.gguf"))
    assert result.exit_code == 0, result.output
    from_copy = check_adapter(tmp_path / "c.gguf", llama_adapter)
    assert convert("--adapter", str(llama_adapter), "--out", str(tmp_path / "r.gguf")).exit_code == 0
    from_recorded = read_adapter(tmp_path / "r.gguf")[1]
    assert from_copy.keys() == from_recorded.keys()
    assert all(np.array_equal(from_copy[k][1], from_recorded[k][1]) for k in from_copy)  # the same adapter


def test_shape_mismatch_is_refused_without_any_record(llama_adapter, tiny_llama_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(llama_adapter, bare)
    (bare / "run.json").unlink()
    config = json.loads((bare / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some/hub-id"  # nothing local to compare with
    (bare / "adapter_config.json").write_text(json.dumps(config))
    wider = tmp_path / "wider"
    shutil.copytree(tiny_llama_dir, wider)
    base = json.loads((wider / "config.json").read_text())
    base["intermediate_size"] = base["intermediate_size"] * 2
    (wider / "config.json").write_text(json.dumps(base))
    with pytest.raises(ConversionError, match="is not the base it was trained on"):
        convert_adapter(bare, wider, tmp_path / "w.gguf")
    result = convert("--adapter", str(bare), "--out", str(tmp_path / "x.gguf"))
    assert result.exit_code == 1 and "pass --base DIR" in result.output


def test_existing_folder_as_out_is_a_clear_error(llama_adapter, tmp_path):
    (tmp_path / "folder").mkdir()
    result = convert("--adapter", str(llama_adapter), "--out", str(tmp_path / "folder"))
    assert result.exit_code == 1
    assert "is an existing folder: --out names the GGUF file to write" in result.output
    assert (tmp_path / "folder").is_dir()
