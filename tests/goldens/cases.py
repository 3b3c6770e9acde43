"""The inputs of the golden prompts: loraloop's Modelfile TEMPLATEs (deploy/modelfile.py), the SYSTEMs they are
served with, and chats. ``python -m tests.goldens.cases`` rewrites cases.json; render.go turns it into prompts/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy.modelfile import CHATML_TEMPLATE, LLAMA3_TEMPLATE, SAMPLE_CHATS, SERVED_CHECK_CHATS

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases.json"
PROMPTS = HERE / "prompts"
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

MODELS = {
    "chatml": {"template": CHATML_TEMPLATE, "system": ""},
    "qwen2.5": {"template": CHATML_TEMPLATE, "system": QWEN25_SYSTEM},  # the stock template's default system
    "llama3": {"template": LLAMA3_TEMPLATE, "system": ""},
    "llama3-system": {"template": LLAMA3_TEMPLATE, "system": "You answer in one short line."},
}

EXTRA_CHATS: dict[str, list[dict[str, str]]] = {
    # Ollama merges consecutive messages of one role and joins system messages with a blank line.
    "consecutive-users": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    "two-systems": [{"role": "system", "content": "first rule"}, {"role": "system", "content": "second rule"},
                    {"role": "user", "content": "go"}],
    "template-syntax-in-content": [{"role": "user", "content": "render {{ .System }} and {{- end }} literally"}],
    "empty-user": [{"role": "user", "content": ""}],
    "ends-with-assistant": [{"role": "user", "content": "start"}, {"role": "assistant", "content": "prefill"}],
    "whitespace": [{"role": "user", "content": "  leading and trailing  \n\n"},
                   {"role": "assistant", "content": "\ttabbed\t"}, {"role": "user", "content": "\r\nCRLF\r\n"}],
}


def cases() -> dict[str, Any]:
    chats = {f"sample-{i}": chat for i, chat in enumerate(SAMPLE_CHATS)}
    chats.update({f"served-{i}": chat for i, chat in enumerate(SERVED_CHECK_CHATS)})
    chats.update(EXTRA_CHATS)
    return {"models": MODELS, "chats": chats}


def write() -> None:
    CASES.write_text(json.dumps(cases(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write()
