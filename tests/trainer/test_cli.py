"""``loraloop train`` as a user and the orchestrator see it: refusals, JSON progress, kill and --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["train", *args], env=env)


@pytest.mark.parametrize(
    ("settings", "flags", "reason"),
    [
        ({"use_dora": True}, [], "DoRA is refused"),
        ({"use_rslora": True}, [], "rsLoRA is refused"),
        ({"modules_to_save": ["lm_head"]}, [], "modules_to_save (lm_head) is refused"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, [], "target_modules embed_tokens refused"),
        ({"target_modules": ["lm_head"]}, [], "target_modules lm_head refused"),
        ({}, ["--lora-alpha", "16.5"], "lora_alpha 16.5 is refused"),
        ({"lora_alpha": 12.25}, [], "lora_alpha 12.25 is refused"),
        ({"learning_rte": 1e-4}, [], "unknown setting 'learning_rte'"),
        ({"lora_r": 0}, [], "setting lora_r"),
    ],
)
def test_refused_settings_one_clear_line_nothing_written(tmp_path, snapshot_dir, tiny_llama_dir, settings, flags,
                                                         reason):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "out"
    result = run_cli("--snapshot", str(snapshot_dir), "--base", str(tiny_llama_dir), "--out", str(out),
                     "--config", str(config), *flags)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and reason in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_several_refusals_are_each_reported_on_their_own_line(tmp_path, snapshot_dir, tiny_llama_dir):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"use_dora": True, "use_rslora": True, "lora_alpha": 7.5}))
    result = run_cli("--snapshot", str(snapshot_dir), "--base", str(tiny_llama_dir), "--out", str(tmp_path / "o"),
                     "--config", str(config))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="QLoRA is allowed where CUDA exists")
def test_qlora_without_cuda_is_refused(tmp_path, snapshot_dir, tiny_llama_dir):
    result = run_cli("--snapshot", str(snapshot_dir), "--base", str(tiny_llama_dir), "--out", str(tmp_path / "o"),
                     "--qlora")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: QLoRA needs a CUDA GPU (bitsandbytes 4-bit); none is available here, "
                                     "train plain LoRA on this machine")
    assert not (tmp_path / "o").exists()


def test_missing_or_unusable_inputs_are_clear_errors(tmp_path, snapshot_dir, tiny_llama_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    out = tmp_path / "out"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cases = [
        (["--base", str(tmp_path / "nowhere")], "is neither a model directory nor a Hugging Face id"),
        (["--base", "someone/missing-model"], "not in the Hugging Face cache and HF_HUB_OFFLINE=1"),
        (["--base", str(tmp_path)], "has no config.json"),
        (["--base", str(tiny_llama_dir), "--snapshot", str(tmp_path / "no-snapshot")], "is not a snapshot"),
    ]
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_llama_dir, no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    tok_config = json.loads((no_template / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(tok_config))
    cases.append((["--base", str(no_template)], "has no chat template"))
    for args, reason in cases:
        if "--snapshot" not in args:
            args = ["--snapshot", str(snapshot_dir), *args]
        result = run_cli(*args, "--out", str(out), env=env)
        assert result.exit_code == 2, (args, result.output)
        assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.output
        assert not out.exists()


def test_existing_run_is_not_overwritten_without_resume(tmp_path, snapshot_dir, tiny_llama_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    result = run_cli("--snapshot", str(snapshot_dir), "--base", str(tiny_llama_dir), "--out", str(out))
    assert result.exit_code == 2 and "already holds a run" in result.stderr and "--resume" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def _readable(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _train_cmd(snapshot_dir: Path, base: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bot.cli", "train", "--snapshot", str(snapshot_dir), "--base", str(base),
            "--out", str(out), "--json-progress", *extra]


@pytest.mark.slow  # two real training processes, one killed mid-run
def test_killed_run_resumes_from_its_checkpoint_and_finishes(tmp_path, snapshot_dir, tiny_llama_dir):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "epochs": 2, "batch_size": 4, "eval_steps": 5, "learning_rate": 5e-3, "max_new_tokens": 4, "cpu_threads": 1,
        "eval_generate": 2, "probes": [], "probe_eval_samples": 0, "replay_ratio": 0.0,
    }))
    total = 2 * 23  # 89 training examples in batches of 4 (no replayed answers beside them)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # A real crash: the first run is a separate process, killed with SIGKILL once a checkpoint exists.
    first = subprocess.Popen(_train_cmd(snapshot_dir, tiny_llama_dir, out, "--config", str(config)), cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoints" / "checkpoint-5" / "trainer_state.json"
    deadline = time.monotonic() + 180
    while not _readable(checkpoint) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    stdout, stderr = first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{stderr[-2000:]}"
    assert not (out / "metrics.json").exists()
    events = [json.loads(line) for line in stdout.splitlines()]  # stdout holds JSON lines only
    assert {"phase", "step"} <= {e["event"] for e in events}
    step_events = [e for e in events if e["event"] == "step"]
    assert all({"step", "total", "loss", "eta_s", "epoch"} <= set(e) for e in step_events)
    assert step_events[0]["total"] == total

    # The same command with --resume (in this process: the crash already happened) continues and finishes.
    resumed = run_cli("--snapshot", str(snapshot_dir), "--base", str(tiny_llama_dir), "--out", str(out),
                      "--json-progress", "--resume")
    assert resumed.exit_code == 0, resumed.output[-3000:]
    events = [json.loads(line) for line in resumed.stdout.splitlines()]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps[0] > 5 and steps[-1] == total, steps[:3]
    assert events[-1]["event"] == "done"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == total and metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert "resuming from" in (out / "train.log").read_text()
    # With no --system-prompt, training uses the one the bot serves with (the deploy gate insists on it).
    from bot.settings import Settings

    assert json.loads((out / "run.json").read_text())["system_prompt"] == Settings().system_prompt


def test_hugging_face_id_resolves_from_the_cache_offline(tmp_path, tiny_llama_dir, monkeypatch):
    import huggingface_hub.constants

    from trainer.recipe import resolve_base

    # The cache layout huggingface_hub itself writes: models--org--name/{refs/main, snapshots/<revision>/...}.
    cache = tmp_path / "hf-cache"
    repo = cache / "models--loraloop--tiny-chat"
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_base("loraloop/tiny-chat") == repo / "snapshots" / "0123abcd"
