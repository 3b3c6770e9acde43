"""``loraloop train --data FILE``: LLaMA-Factory's one-step habit, through an ephemeral snapshot; the run records the
file's hash, writes a real model card and a titled loss plot, and prints progress lines when stderr is a log."""

from __future__ import annotations

import hashlib
import io
import json
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from bot.cli import app
from trainer.progress import ProgressReporter


def run_cli(*args: str):
    return CliRunner().invoke(app, ["train", *args])


@pytest.fixture(scope="module")
def data_run(tmp_path_factory, tiny_llama_dir):
    """One real CPU run of the tiny Llama straight from an alpaca file, configured in LLaMA-Factory's names."""
    tmp = tmp_path_factory.mktemp("from-file")
    rows = [{"instruction": f"what colour is thing {i}?", "input": "", "output": f"thing {i} is blue."}
            for i in range(24)]
    rows.append(dict(rows[0]))  # an exact duplicate: trained once
    data = tmp / "pairs.json"
    data.write_text(json.dumps(rows))
    config = tmp / "lf.yaml"
    config.write_text(yaml.safe_dump({"num_train_epochs": 1.0, "per_device_train_batch_size": 8, "lora_rank": 4,
                                      "learning_rate": 5e-3, "cpu_threads": 1, "max_new_tokens": 4,
                                      "eval_generate": 2, "probes": ["hi"], "probe_eval_samples": 0,
                                      "template": "qwen"}))
    out = tmp / "run"
    result = run_cli("--data", str(data), "--base", str(tiny_llama_dir), "--out", str(out), "--config", str(config))
    return SimpleNamespace(result=result, out=out, data=data)


def test_trains_from_a_file_and_records_its_hash(data_run):
    assert data_run.result.exit_code == 0, data_run.result.output
    run = json.loads((data_run.out / "run.json").read_text())
    assert run["data_sha256"] == hashlib.sha256(data_run.data.read_bytes()).hexdigest()
    assert run["data_file"] == str(data_run.data.resolve()) and run["snapshot"] is None
    assert (data_run.out / "adapter_model.safetensors").is_file()
    metrics = json.loads((data_run.out / "metrics.json").read_text())
    assert metrics["examples"]["train"] + metrics["examples"]["eval"] == 24  # the duplicate once


def test_llama_factory_keys_are_noted_on_stderr(data_run):
    stderr = data_run.result.stderr
    assert "note: num_train_epochs in" in stderr and "read as epochs" in stderr
    assert "ignored in" in stderr and "template (" in stderr


def test_progress_lines_when_stderr_is_not_a_terminal(data_run):
    lines = [line for line in data_run.result.stderr.splitlines() if line.startswith("step ")]
    assert lines, data_run.result.stderr
    last = lines[-1].split()
    done, total = last[1].split("/")
    assert done == total and "loss" in last and "eta" in last


def test_model_card_says_what_the_run_was(data_run, tiny_llama_dir):
    card = (data_run.out / "README.md").read_text()
    sha = hashlib.sha256(data_run.data.read_bytes()).hexdigest()
    assert f"base_model: {tiny_llama_dir}" in card
    assert sha in card and "pairs.json" in card
    assert "| lora_r | 4 |" in card and "| learning_rate | 0.005 |" in card
    assert "| eval loss |" in card and "| metric | base | adapter |" in card
    assert "[More Information Needed]" not in card  # PEFT's empty template is gone


def test_loss_plot_has_the_run_name_as_title(data_run, tmp_path):
    from trainer.recipe import _plot_loss

    assert (data_run.out / "loss.png").stat().st_size > 0
    curve = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]
    _plot_loss(curve, [], tmp_path / "titled.png", title="run-7: loss")
    _plot_loss(curve, [], tmp_path / "plain.png")
    assert (tmp_path / "titled.png").read_bytes() != (tmp_path / "plain.png").read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    ([], "--snapshot DIR, or --data FILE"),
    (["--snapshot", "x", "--data", "y"], "not both"),
])
def test_exactly_one_data_source(tmp_path, tiny_llama_dir, args, message):
    result = run_cli(*args, "--base", str(tiny_llama_dir), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and message in result.stderr


def test_unusable_data_file_is_one_line(tmp_path, tiny_llama_dir):
    pref = tmp_path / "dpo.jsonl"
    pref.write_text(json.dumps({"instruction": "q", "chosen": "a", "rejected": "b"}) + "\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "no answer"}]))
    for path, message in ((pref, "preference data"), (bad, "1 invalid records (first, record 1: missing")):
        result = run_cli("--data", str(path), "--base", str(tiny_llama_dir), "--out", str(tmp_path / "o"))
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_progress_reporter_prints_a_line_per_interval():
    now = [1000.0]
    out = io.StringIO()
    reporter = ProgressReporter(json_lines=False, console=Console(file=out, force_terminal=False, width=200),
                                line_interval_s=10, clock=lambda: now[0])
    state = SimpleNamespace(global_step=0, max_steps=100, epoch=0.0, num_input_tokens_seen=0)
    reporter.on_train_begin(None, state, None)
    for step in range(1, 101):
        now[0] += 1.0  # one second a step: a line every 10 steps
        state.global_step = step
        reporter.on_log(None, state, None, logs={"loss": 1.0 / step})
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 1/100 (1%) loss 1.0000 eta 0:01:39"
    assert len(lines) == 11 and lines[-1].startswith("step 100/100 (100%) loss 0.0100 eta 0:00:00")
