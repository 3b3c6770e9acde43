"""A retrain job run again in the same directory (a redelivered job) resumes only from a saved checkpoint: the
trainer's --resume refuses a run without one, so a run stopped before its first starts over."""

from __future__ import annotations


def test_a_run_without_a_checkpoint_starts_over(tmp_path):
    from worker.job import _resume_or_start_over

    out = tmp_path / "run"
    assert _resume_or_start_over(out) is False and not out.exists()
    (out / "checkpoints").mkdir(parents=True)  # the trainer makes it before its first evaluation
    (out / "config.yaml").write_text("lora_r: 4\n")
    (out / "before.json").write_text("{}")
    assert _resume_or_start_over(out) is False and not out.exists()


def test_a_run_with_a_checkpoint_resumes(tmp_path):
    from worker.job import _resume_or_start_over

    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 5}')
    assert _resume_or_start_over(tmp_path / "run") is True and checkpoint.is_dir()
