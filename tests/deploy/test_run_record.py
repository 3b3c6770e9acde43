"""A run record deploy cannot read is named, before any version exists (``loraloop deploy run`` prints one line)."""

from __future__ import annotations

import json

import pytest

from deploy.config import DeployConfig
from deploy.errors import DeployFailed
from deploy.ollama import OllamaClient
from deploy.pipeline import deploy


@pytest.mark.parametrize("text", ["{ not json", json.dumps({"base": "x", "snapshot_sha": "typo"})])
async def test_an_unreadable_run_record_fails_before_a_version_is_made(store, tmp_path, text):
    adapter = tmp_path / "run"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}", encoding="utf-8")
    (adapter / "run.json").write_text(text, encoding="utf-8")
    async with OllamaClient("http://127.0.0.1:9") as client:  # never reached
        with pytest.raises(DeployFailed, match=r"run\.json is not a loraloop run record"):
            await deploy(adapter, store=store, client=client,
                         config=DeployConfig(model_name="tiny", ollama_base="tiny:latest", paraphrases=0,
                                             consistency_n=0))
    assert await store.list_model_versions() == []
