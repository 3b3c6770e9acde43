"""A merged model is gigabytes: the retrain status message shows its upload as it goes."""

from __future__ import annotations

from bot.cogs.retrain import progress_text
from data.models import RetrainRun


def test_the_status_message_shows_the_upload():
    run = RetrainRun(id=7, state="registering", progress={"stage": "registering", "tag": "loraloop-a:v3",
                                                          "uploaded": 250_000_000, "upload_total": 1_000_000_000})
    text = progress_text(run)
    assert "registering with Ollama" in text and "`loraloop-a:v3`" in text
    assert "uploaded 250.0 of 1,000.0 MB" in text
    assert "█████░░░░░░░░░░░░░░░" in text  # a quarter of the bar


def test_no_upload_line_before_any_upload():
    run = RetrainRun(id=7, state="registering", progress={"stage": "registering"})
    assert "uploaded" not in progress_text(run)
