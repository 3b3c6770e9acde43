"""Where the base model comes from, and the real reason when it cannot be had."""

from __future__ import annotations

import pytest

from trainer.recipe import TrainingRefused, resolve_base


def test_no_network_is_named_as_the_cause_not_an_unset_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the Hub is unreachable
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(TrainingRefused, match=r"the Hub could not be reached \(no network\?\)") as refused:
        resolve_base("someorg/somemodel")
    assert "HF_HUB_OFFLINE" not in str(refused.value)


def test_offline_by_choice_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrainingRefused, match="HF_HUB_OFFLINE=1 forbids downloading it"):
        resolve_base("someorg/somemodel")
