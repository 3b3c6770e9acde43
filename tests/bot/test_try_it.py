"""The README's "Try the whole loop" walk-through, run as written: its commands are read from the README section
itself and run one by one as subprocesses in an empty folder, against `loraloop dev ollama --tiny` started as a
subprocess on a free port; after each, the one-line outcome the README shows under it (``# → …``, where "…"
stands for anything) must be in what the command printed. So the README cannot drift from the product."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.harness.stacks import FAULTHANDLER, abort_with_stacks

DEFAULT_PORT = "11434"  # Ollama's, and loraloop dev ollama's
SECTION = "Try the whole loop in 10 minutes on a laptop (no Discord, no GPU)"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass
class Step:
    command: str
    expected: str = ""  # the README's one-line outcome, "…" for anything
    output: str = ""
    returncode: int | None = None

    def shows_expected(self) -> bool:
        pattern = ".*?".join(re.escape(part) for part in self.expected.split("…"))
        return re.search(pattern, self.output) is not None


def readme_steps() -> list[Step]:
    """The commands of the README section's ``sh`` blocks, each with the ``# → `` line under it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {SECTION}\n")
    end = text.find("\n## ", start + 1)
    steps: list[Step] = []
    for block in re.findall(r"```sh\n(.*?)```", text[start:end], re.S):
        for line in block.splitlines():
            if line.startswith("# → "):
                steps[-1].expected = line.removeprefix("# → ").strip()
            elif line.strip() and not line.startswith("#"):
                # The test's PATH leads to .venv/bin, from wherever it runs.
                command = re.sub(r"\s+#\s.*$", "", line).strip().removeprefix(".venv/bin/")
                steps.append(Step(command))
    return steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dev_ollama(step: Step, cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """The README's `loraloop dev ollama` on a free port (the README's 11434 read as that port); returns it and the
    variables it said to export."""
    port = str(free_port())
    command = re.sub(r"--port \d+", "", step.command) + f" --port {port}"
    step.expected = step.expected.replace(DEFAULT_PORT, port)
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env={**env, **FAULTHANDLER},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    exports: dict[str, str] = {}
    deadline = time.monotonic() + 300  # builds the tiny model and its GGUF once per machine
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            break
        step.output += line
        found = re.match(r"\s*export (\w+)=(\S+)", line)
        if found:
            exports[found.group(1)] = found.group(2)
        if "train on the same model" in line:
            return server, exports
    server.kill()
    raise AssertionError(f"loraloop dev ollama did not get ready: {step.output}")


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> list[Step]:
    """Every step of the section, run in order; then the server stopped with Ctrl-C (SIGINT), a last step "Ctrl-C"
    holding what it printed then."""
    work = tmp_path_factory.mktemp("try-it")
    (work / "examples").symlink_to(REPO / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           # The database's default home, the per-user data folder: this walk-through's own.
           "XDG_DATA_HOME": str(work / "xdg")}
    steps = readme_steps()
    server = None
    try:
        for step in steps:
            if step.command.startswith("loraloop dev ollama"):
                server, exports = start_dev_ollama(step, work, env)
                env.update(exports)
            elif step.command.startswith("source "):
                step.returncode = 0  # the test's PATH already leads to .venv/bin
            elif step.command.startswith("export "):  # what the README pastes is what the server printed
                port = exports["OLLAMA_HOST"].rsplit(":", 1)[1]
                named = {k: v.replace(DEFAULT_PORT, port) for k, v in re.findall(r"(\w+)=(\S+)", step.command)}
                assert named == exports, (step.command, exports)
                step.returncode = 0
            else:
                t0 = time.monotonic()
                run = subprocess.run(["bash", "-c", step.command], cwd=work, env=env, capture_output=True, text=True,
                                     timeout=400)
                step.output = run.stdout + run.stderr
                step.returncode = run.returncode
                print(f"{time.monotonic() - t0:6.1f}s  {step.command}")
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            try:
                rest, _ = server.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                rest = f"(did not stop within 60 s of Ctrl-C; its threads then:)\n{abort_with_stacks(server)}"
            steps.append(Step("Ctrl-C", output=rest, returncode=server.returncode))
    return steps


def test_the_readme_walkthrough_runs_as_written(walkthrough: list[Step]) -> None:
    steps = [s for s in walkthrough if s.command != "Ctrl-C" and not s.command.startswith("loraloop models rollback")]
    assert [s.command.split()[1] for s in steps if s.command.startswith("loraloop")] == [
        "dev", "dataset", "review", "chat", "snapshot", "train", "deploy", "chat"]
    for step in steps:
        assert step.expected or not step.command.startswith("loraloop"), f"no outcome shown for {step.command}"
        if not step.command.startswith("loraloop dev ollama"):
            assert step.returncode == 0, (step.command, step.output)
        assert step.shows_expected(), (step.command, step.expected, step.output)


def test_ctrl_c_stops_the_server_in_one_line(walkthrough: list[Step]) -> None:
    stop = walkthrough[-1]
    assert stop.returncode == 0 and len(stop.output.strip().splitlines()) == 1, stop.output
    assert stop.output.startswith("stopped the Ollama API on http://127.0.0.1:")


def test_the_walkthrough_ends_rolled_back_to_the_base(walkthrough: list[Step]) -> None:
    (step,) = [s for s in walkthrough if s.command.startswith("loraloop models rollback")]
    assert step.returncode == 0 and step.shows_expected(), step.output
