"""`loraloop dev ollama`'s server: a GGUF model runs with the context it was trained for (so a real snapshot's long
prompts fit, as under Ollama), and a taken port is said at once, in one line."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bot.cli import app
from deploy.ollama_server import OllamaTestServer
from tests.harness.stacks import FAULTHANDLER, abort_with_stacks

pytestmark = pytest.mark.slow  # llama.cpp on the tiny model's GGUF


def generate(server: OllamaTestServer, prompt: str, **options: Any) -> dict[str, Any]:
    body = {"model": "tiny:1", "prompt": prompt, "raw": True, "stream": False, "options": {"num_predict": 1, **options}}
    request = urllib.request.Request(f"{server.url}/api/generate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.mark.parametrize(("own_context", "num_ctx", "served"), [
    (True, 4096, 2048),  # capped at the model's context_length (the tiny model's 2048), as Ollama caps it
    (True, 1024, 1024),  # the request's num_ctx where the model allows it
    (False, 4096, 512),  # the tests' server: random tiny models keep their 512 tokens
])
def test_a_model_runs_with_the_context_it_was_trained_for(tmp_path: Path, tiny_llama_gguf: Path, own_context: bool,
                                                          num_ctx: int, served: int) -> None:
    server = OllamaTestServer(tmp_path / "server", own_context=own_context).start()
    try:
        server.add_base_model("tiny:1", tiny_llama_gguf)
        reply = generate(server, "hello there " * 1500, num_ctx=num_ctx)
        tokens = len(server.prompts[-1]["tokens"])
        assert tokens > 2048
        assert reply["prompt_eval_count"] == served  # a longer prompt is cut to the context, never refused
        short = generate(server, "hello there " * 300, num_ctx=num_ctx)
        assert short["prompt_eval_count"] == min(len(server.prompts[-1]["tokens"]), served)
    finally:
        server.stop()


def test_a_taken_port_is_one_line_before_any_model_is_built(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["dev", "ollama", "--tiny", "--port", str(port), "--models",
                                          str(tmp_path / "models")])
    assert result.exit_code == 1, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "Try --port" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()


def _tgkill(pid: int, tid: int, signum: int) -> None:
    """Send ``signum`` to one thread of process ``pid`` (Linux tgkill(2)), as the kernel may hand a Ctrl-C to it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(234, pid, tid, signum) != 0:  # SYS_tgkill on x86-64
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


@pytest.mark.skipif(platform.machine() != "x86_64" or not Path("/proc/self/task").is_dir(),
                    reason="tgkill by its x86-64 number, threads listed in /proc")
def test_ctrl_c_stops_it_whichever_thread_receives_it(tmp_path: Path) -> None:
    """A Ctrl-C the kernel delivers to another of the server's threads (llama.cpp's, the executor's) stops it too;
    it used to stop it only when the main thread got the signal (the README walk-through hung now and then)."""
    server = subprocess.Popen([sys.executable, "-m", "bot.cli", "dev", "ollama", "--tiny", "--port", "0", "--models",
                               str(tmp_path / "models")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **FAULTHANDLER})
    assert server.stdout is not None
    try:
        output = ""
        while "Ctrl-C stops it" not in output:
            line = server.stdout.readline()
            assert line, output
            output += line
        others = [int(t.name) for t in Path(f"/proc/{server.pid}/task").iterdir() if int(t.name) != server.pid]
        assert others  # the server's own thread at least
        _tgkill(server.pid, others[0], signal.SIGINT)
        try:
            rest, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not stop within 30 s of Ctrl-C; its threads then:\n{abort_with_stacks(server)}")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, rest
    assert rest.strip().splitlines()[-1].startswith("stopped the Ollama API on http://127.0.0.1:"), rest
