"""Ctrl-C during ``loraloop train`` saves a checkpoint and prints the command that continues it; ``--resume`` says
which checkpoint it continues from, and refuses when there is none."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def test_resume_without_a_run_or_a_checkpoint_is_refused(tmp_path, snapshot_dir, tiny_llama_dir):
    out = tmp_path / "out"
    common = ["--snapshot", str(snapshot_dir), "--base", str(tiny_llama_dir), "--out", str(out), "--resume"]
    result = run_cli(*common)
    assert result.exit_code == 2 and f"--resume: {out} holds no run to resume" in result.stderr, result.output
    assert not out.exists()
    out.mkdir()
    (out / "config.yaml").write_text("lora_r: 4\n")
    (out / "checkpoints" / "checkpoint-3").mkdir(parents=True)  # cut short: no trainer_state.json
    result = run_cli(*common)
    assert result.exit_code == 2, result.output
    assert f"--resume: the run in {out} saved no checkpoint" in result.stderr and "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml"]


def test_resume_command_is_the_command_line_with_resume(tmp_path):
    from trainer.__main__ import resume_command

    main = str(ROOT / "bot" / "cli" / "__main__.py")
    args = ["train", "--data", "my pairs.json", "--out", "run"]
    assert resume_command([main, *args], [".venv/bin/python", "-m", "bot.cli", *args]) == (
        ".venv/bin/python -m bot.cli train --data 'my pairs.json' --out run --resume")
    assert resume_command(["/nowhere/bin/loraloop", *args, "--resume"], ["python", "/nowhere/bin/loraloop", *args,
                                                                         "--resume"]) == (
        "/nowhere/bin/loraloop train --data 'my pairs.json' --out run --resume")  # not on PATH: its path


@pytest.mark.slow  # two real training processes, the first interrupted with SIGINT
def test_ctrl_c_saves_a_checkpoint_and_the_printed_command_resumes_it(tmp_path, snapshot_dir, tiny_llama_dir):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    # One epoch of 89 examples in batches of 2: the epoch's own checkpoint comes at step 45, after the interrupt.
    config.write_text(yaml.safe_dump({
        "epochs": 1, "batch_size": 2, "learning_rate": 5e-3, "cpu_threads": 1, "eval_generate": 0, "probes": [],
        "probe_eval_samples": 0, "replay_ratio": 0.0, "retention_prompts": 0, "max_new_tokens": 4}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "bot.cli", "train", "--snapshot", str(snapshot_dir), "--base",
               str(tiny_llama_dir), "--out", str(out), "--config", str(config), "--json-progress"]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout is not None
    for line in first.stdout:
        event = json.loads(line)
        if event["event"] == "step" and event["step"] >= 3:
            first.send_signal(signal.SIGINT)  # as Ctrl-C in a terminal
            total = event["total"]
            break
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-3000:]
    stopped = [json.loads(line) for line in stdout.splitlines() if '"step"' in line]
    step = stopped[-1]["step"] if stopped else event["step"]
    assert step < total, "the run finished before the interrupt reached it"
    checkpoint = out / "checkpoints" / f"checkpoint-{step}"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (out / "metrics.json").exists()
    assert f"interrupted: at step {step} of {total}: checkpoint saved in {checkpoint}" in stderr, stderr[-2000:]
    printed = [line.removeprefix("continue with: ") for line in stderr.splitlines()
               if line.startswith("continue with: ")]
    assert printed == [shlex.join([sys.executable, "-m", "bot.cli", *command[3:], "--resume"])]

    # The printed command continues the run from that step, and says so.
    second = subprocess.run(shlex.split(printed[0]), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {checkpoint} (step {step})" in second.stderr
    events = [json.loads(line) for line in second.stdout.splitlines()]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps[0] == step + 1 and steps[-1] == total
    assert json.loads((out / "metrics.json").read_text())["steps"] == total
