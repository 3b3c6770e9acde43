"""metrics.json is one typed record (trainer/metrics.py): the recipe's file validates, a malformed one is refused
with its path named, and an older or newer run's file (keys missing or unknown) still reads."""

from __future__ import annotations

import json

import pytest

from trainer.metrics import METRICS_FILE, TrainMetrics, read_metrics


def test_the_recipes_metrics_file_validates(trained_run):
    out, metrics, _ = trained_run
    read = read_metrics(out)
    assert read is not None
    assert read.to_dict() == json.loads((out / METRICS_FILE).read_text()) == json.loads(json.dumps(metrics))
    assert read.examples.train == metrics["examples"]["train"] and read.steps == metrics["steps"]
    assert [p.step for p in read.train_loss_curve] == [p["step"] for p in metrics["train_loss_curve"]]
    assert read.model_extra == {}  # the recipe writes no key the record does not name


def test_no_metrics_file_is_none(tmp_path):
    assert read_metrics(tmp_path) is None


@pytest.mark.parametrize(("content", "problem"), [
    ('{"steps": "many"}', "steps:"),
    ('{"train_loss_curve": [{"step": 1}]}', "train_loss_curve.0.loss:"),
    ('[1, 2]', "metrics:"),
    ('{"steps": 3,', "not JSON"),
])
def test_a_malformed_file_is_refused_with_its_path(tmp_path, content, problem):
    (tmp_path / METRICS_FILE).write_text(content)
    with pytest.raises(ValueError) as refused:
        read_metrics(tmp_path)
    message = str(refused.value)
    assert str(tmp_path / METRICS_FILE) in message and problem in message


def test_older_and_newer_files_read_and_keep_what_they_hold(tmp_path):
    # An older run: no train_dtype, retention or unrenderable count; a newer one: keys this version does not know.
    older = {"base": "org/model", "examples": {"train": 3, "eval": 1, "truncated": 0, "dropped": 0}, "steps": 4,
             "eval_loss_before": 2.5, "eval_loss_after": 1.5, "some_future_key": {"x": 1}}
    (tmp_path / METRICS_FILE).write_text(json.dumps(older))
    read = read_metrics(tmp_path)
    assert read is not None
    assert read.steps == 4 and read.examples.unrenderable == 0 and read.train_dtype is None and read.retention is None
    assert read.to_dict()["some_future_key"] == {"x": 1}
    read.write(tmp_path)
    assert json.loads((tmp_path / METRICS_FILE).read_text())["some_future_key"] == {"x": 1}


def test_stages_that_did_not_run_are_left_out_of_the_file(tmp_path):
    TrainMetrics(steps=1).write(tmp_path)
    written = json.loads((tmp_path / METRICS_FILE).read_text())
    assert written["steps"] == 1 and written["eval_loss_before"] is None
    assert not {"replay", "dpo", "retention"} & written.keys()
