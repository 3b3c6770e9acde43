"""``loraloop train config.yaml`` as ``llamafactory-cli train config.yaml``: the YAML names the base, the run
directory and the datasets (through dataset_info.json), LLaMA-Factory's LoRA defaults apply to its files, and the
command line's options still win."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app
from trainer.config import read_config


def run_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["train", *args], env=env)


def write_yaml(path, values: dict):
    path.write_text(yaml.safe_dump(values))
    return path


def pairs(prefix: str, n: int) -> list[dict]:
    return [{"instruction": f"what colour is {prefix} {i}?", "input": "", "output": f"{prefix} {i} is blue."}
            for i in range(n)]


def test_the_yaml_names_base_out_and_datasets(tmp_path):
    loaded = read_config(write_yaml(tmp_path / "lf.yaml", {
        "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "output_dir": "saves/qwen/lora",
        "dataset": "identity, alpaca_en_demo", "dataset_dir": "lf-data", "lora_rank": 8}))
    inputs = loaded.inputs
    assert inputs.base == "Qwen/Qwen2.5-0.5B-Instruct"
    assert str(inputs.out) == "saves/qwen/lora"
    assert inputs.datasets == ("identity", "alpaca_en_demo")
    assert str(inputs.dataset_info) == "lf-data/dataset_info.json"
    assert not any("ignored" in n and "model_name_or_path" in n for n in loaded.notices)
    # LLaMA-Factory's default dataset_dir, relative to the working directory as there.
    assert str(read_config(write_yaml(tmp_path / "d.yaml", {"dataset": ["a"]})).inputs.dataset_info) == (
        "data/dataset_info.json")


def test_a_llama_factory_file_trains_with_its_lora_defaults_and_says_so(tmp_path):
    loaded = read_config(write_yaml(tmp_path / "lf.yaml", {"lora_rank": 8, "finetuning_type": "lora"}))
    assert (loaded.config.lora_r, loaded.config.lora_alpha, loaded.config.lora_dropout) == (8, 16, 0.0)
    taken = [n for n in loaded.notices if "defaults taken" in n]
    assert len(taken) == 1
    assert "lora_alpha 16 (2 × lora_rank 8)" in taken[0] and "lora_dropout 0" in taken[0]
    assert "lora_rank" in taken[0] and str(tmp_path / "lf.yaml") in taken[0]


def test_only_the_defaults_left_out_are_taken(tmp_path):
    path = write_yaml(tmp_path / "lf.yaml", {"lora_rank": 8, "lora_alpha": 32})
    loaded = read_config(path)
    assert (loaded.config.lora_alpha, loaded.config.lora_dropout) == (32, 0.0)
    (taken,) = [n for n in loaded.notices if "defaults taken" in n]
    assert "lora_dropout 0" in taken and "lora_alpha" not in taken.split("taken")[1]
    # The command line's settings are not defaults either; its rank is the one doubled.
    loaded = read_config(path, {"lora_dropout": 0.1})
    assert loaded.config.lora_dropout == 0.1 and not any("defaults taken" in n for n in loaded.notices)
    loaded = read_config(write_yaml(tmp_path / "r.yaml", {"finetuning_type": "lora"}), {"lora_r": 4})
    assert (loaded.config.lora_r, loaded.config.lora_alpha) == (4, 8)


def test_our_own_files_keep_our_defaults(tmp_path):
    loaded = read_config(write_yaml(tmp_path / "ours.yaml", {"lora_r": 8, "learning_rate": 1e-4}))
    assert (loaded.config.lora_alpha, loaded.config.lora_dropout) == (32, 0.05)
    assert loaded.notices == []
    assert read_config(None, {"lora_r": 8}).config.lora_alpha == 32


@pytest.mark.parametrize(("values", "message"), [
    ({"dataset": 3}, "dataset in .* must name datasets"),
    ({"dataset": ""}, "dataset in .* must name datasets"),
    ({"model_name_or_path": ["a"]}, "model_name_or_path in .* must be a non-empty string"),
])
def test_bad_run_keys_are_refused(tmp_path, values, message):
    from trainer.config import TrainingRefused

    with pytest.raises(TrainingRefused, match=message):
        read_config(write_yaml(tmp_path / "bad.yaml", values))


@pytest.fixture
def lf_dir(tmp_path):
    """A LLaMA-Factory data directory: two alpaca datasets, one with template placeholders, and a ranking one."""
    data = tmp_path / "lfdata"
    data.mkdir()
    (data / "a.json").write_text(json.dumps(pairs("thing", 12)))
    (data / "b.json").write_text(json.dumps(pairs("stone", 12)))
    (data / "who.json").write_text(json.dumps([
        {"instruction": "hi", "input": "", "output": "I am a helper."},
        {"instruction": "who are you?", "input": "", "output": "I am {{name}}, made by {{author}}."}]))
    (data / "pref.json").write_text(json.dumps([{"instruction": "q", "chosen": "a", "rejected": "b"}]))
    (data / "dataset_info.json").write_text(json.dumps({
        "things": {"file_name": "a.json"}, "stones": {"file_name": "b.json"}, "identity": {"file_name": "who.json"},
        "prefs": {"file_name": "pref.json", "ranking": True,
                  "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}}))
    return data


def test_missing_base_names_the_yaml_key(tmp_path, lf_dir):
    config = write_yaml(tmp_path / "lf.yaml", {"dataset": "things", "dataset_dir": str(lf_dir),
                                               "output_dir": str(tmp_path / "out")})
    result = run_cli(str(config))
    assert result.exit_code == 2, result.output
    assert "name the base model: --base MODEL, or model_name_or_path in the YAML" in result.stderr
    assert not (tmp_path / "out").exists()


def test_command_line_options_override_the_yaml(tmp_path, lf_dir, tiny_llama_dir):
    config = write_yaml(tmp_path / "lf.yaml", {"model_name_or_path": str(tiny_llama_dir), "dataset": "things",
                                               "dataset_dir": str(lf_dir), "output_dir": str(tmp_path / "out")})
    result = run_cli(str(config), "--base", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and f"{tmp_path / 'nowhere'}" in result.stderr, result.stderr
    assert "neither a model directory" in result.stderr and not (tmp_path / "out").exists()
    result = run_cli(str(config), "--config", str(config))
    assert result.exit_code == 2 and "name the YAML once" in result.stderr


@pytest.mark.parametrize(("names", "message"), [
    ("things,nothing", "dataset nothing: .* has no dataset 'nothing'"),
    ("prefs", "dataset 'prefs' is ranking \\(preference\\) data"),
    ("things,identity", "who.json: record 1 holds the template placeholder {{name}}: fill it with --set name=VALUE, "
                        "or pass --allow-placeholders"),
])
def test_unusable_datasets_are_one_clear_line(tmp_path, lf_dir, tiny_llama_dir, names, message):
    config = write_yaml(tmp_path / "lf.yaml", {"model_name_or_path": str(tiny_llama_dir), "dataset": names,
                                               "dataset_dir": str(lf_dir), "output_dir": str(tmp_path / "out")})
    result = run_cli(str(config))
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert re.search(message, line), line
    assert not (tmp_path / "out").exists()


def test_set_fills_placeholders_and_the_first_one_left_is_named(tmp_path, lf_dir, tiny_llama_dir):
    data = lf_dir / "who.json"
    common = ["--data", str(data), "--base", str(tiny_llama_dir), "--out", str(tmp_path / "out")]
    result = run_cli(*common, "--set", "name=Ada")
    assert result.exit_code == 2 and "record 1 holds the template placeholder {{author}}" in result.stderr
    assert "--set author=VALUE" in result.stderr and not (tmp_path / "out").exists()
    result = run_cli(*common, "--set", "nonsense")
    assert result.exit_code == 2 and "--set 'nonsense' must be NAME=VALUE" in result.stderr


def test_set_and_allow_placeholders_reach_the_snapshot(tmp_path, lf_dir):
    from data.snapshot import read_snapshot
    from trainer.__main__ import DataFile, snapshot_from_files

    files = [DataFile(lf_dir / "who.json")]
    filled = read_snapshot(snapshot_from_files(files, tmp_path / "filled", 0.0, {"name": "Ada", "author": "Lab"}))
    answers = [c.messages[-1].content for c in filled.train]
    assert "I am Ada, made by Lab." in answers
    kept = read_snapshot(snapshot_from_files(files, tmp_path / "kept", 0.0, allow_placeholders=True))
    assert "I am {{name}}, made by {{author}}." in [c.messages[-1].content for c in kept.train]


@pytest.fixture(scope="module")
def yaml_run(tmp_path_factory, tiny_llama_dir):
    """One real CPU run from a LLaMA-Factory YAML alone: `loraloop train lf.yaml`."""
    tmp = tmp_path_factory.mktemp("lf-yaml")
    data = tmp / "lfdata"
    data.mkdir()
    (data / "a.json").write_text(json.dumps(pairs("thing", 14)))
    # Cut at cutoff_len 100: these keep part of their answer, the last two (their question alone is longer) none.
    (data / "b.json").write_text(json.dumps(pairs("stone with a much longer name than the others", 10)
                                            + pairs("stone " + "very " * 40 + "long", 2)))
    (data / "dataset_info.json").write_text(json.dumps({"things": {"file_name": "a.json"},
                                                        "stones": {"file_name": "b.json"}}))
    out = tmp / "saves" / "run"
    config = write_yaml(tmp / "lf.yaml", {
        "model_name_or_path": str(tiny_llama_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": 4, "lora_target": "all", "dataset": "things,stones", "dataset_dir": str(data),
        "cutoff_len": 100, "output_dir": str(out), "num_train_epochs": 1.0, "per_device_train_batch_size": 8,
        "learning_rate": 5e-3, "cpu_threads": 1, "max_new_tokens": 4, "eval_generate": 2, "probes": ["hi"],
        "probe_eval_samples": 0, "retention_prompts": 0, "replay_ratio": 0.0,
    })
    result = run_cli(str(config))
    return SimpleNamespace(result=result, out=out, data=data)


def test_a_llama_factory_yaml_alone_trains(yaml_run):
    assert yaml_run.result.exit_code == 0, yaml_run.result.output[-3000:]
    out = yaml_run.out
    assert (out / "adapter_model.safetensors").is_file()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (4, 8, 0.0)  # LLaMA-Factory's scaling
    run = json.loads((out / "run.json").read_text())
    assert run["data_file"] == f"{(yaml_run.data / 'a.json').resolve()},{(yaml_run.data / 'b.json').resolve()}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"]["train"] + metrics["examples"]["eval"] + metrics["examples"]["dropped"] == 26
    notes = [line for line in yaml_run.result.stderr.splitlines() if "defaults taken" in line]
    assert len(notes) == 1 and "lora_alpha 8 (2 × lora_rank 4), lora_dropout 0" in notes[0]


def test_truncation_is_on_the_console_with_the_longest_length(yaml_run):
    metrics = json.loads((yaml_run.out / "metrics.json").read_text())
    truncated, dropped = metrics["examples"]["truncated"], metrics["examples"]["dropped"]
    assert (truncated, dropped) == (12, 2)  # the stones: all cut, two with nothing left to learn
    match = re.search(r"note: (\d+) of (\d+) examples truncated to max_length 100 tokens, (\d+) dropped .*the "
                      r"longest is (\d+) tokens", yaml_run.result.stderr)
    assert match, yaml_run.result.stderr
    assert (int(match[1]), int(match[2]), int(match[3])) == (truncated, 26, dropped)
    assert int(match[4]) > 100


def test_prepared_split_knows_its_longest_example(tiny_llama_dir):
    from transformers import AutoTokenizer

    from data.conversation import Conversation
    from trainer.prepare import ChatFormat

    fmt = ChatFormat(AutoTokenizer.from_pretrained(tiny_llama_dir))
    convs = [Conversation.qa(f"question {i}?", "answer " * (i * 5 + 1)) for i in range(4)]
    lengths = [len(fmt.tokenize(c)[0]) for c in convs]
    split = fmt.prepare(convs, max_length=min(lengths) + 1)
    assert split.longest == max(lengths) and split.truncated == 3
