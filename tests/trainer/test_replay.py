"""Replay (trainer/replay.py): the base's own answers to general prompts train beside the taught pairs."""

from __future__ import annotations

import json

from data.general_prompts import REPLAY_FILE, load_general_prompts
from trainer.config import TrainConfig
from trainer.replay import conversations, replay_count, replay_prompt_set


def test_the_replay_set_is_disjoint_from_the_retention_set() -> None:
    replay, retention = load_general_prompts(REPLAY_FILE), load_general_prompts()
    assert replay.label == "replay-v1" and len(replay.prompts) >= 50
    assert not set(replay.prompts) & set(retention.prompts)  # what the gate measures is never what trains


def test_how_many_are_replayed() -> None:
    assert replay_prompt_set(TrainConfig(replay_ratio=0)) is None
    assert replay_count(TrainConfig(replay_ratio=1.0), 30, 58) == 30
    assert replay_count(TrainConfig(replay_ratio=0.5), 31, 58) == 16
    assert replay_count(TrainConfig(replay_ratio=2.0), 300, 58) == 58  # never more than the set holds


class _Words:
    """A tokenizer that counts words."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text.split())))}


def test_only_finished_answers_are_replayed() -> None:
    replayed = {"prompts": ["a?", "b?", "c?"], "answers": ["short answer.", "one two three four five", "  "],
                "max_new_tokens": 5}
    kept = conversations(replayed, _Words())
    # "one two three four five" hit max_new_tokens: cut mid-sentence, it would teach stopping there.
    assert [c.messages[0].content for c in kept] == ["a?"]


def test_a_run_replays_the_bases_answers(trained_run) -> None:
    out, metrics, _ = trained_run
    replayed = json.loads((out / "replay.json").read_text())
    assert replayed["set"] == "replay-v1" and len(replayed["prompts"]) == len(replayed["answers"])
    assert len(replayed["prompts"]) == min(58, metrics["examples"]["train"])
    assert metrics["replay"]["set"] == "replay-v1" and metrics["replay"]["ratio"] == 1.0
    assert 0 <= metrics["replay"]["examples"] <= len(replayed["prompts"]) and metrics["replay"]["tokens"] >= 0
