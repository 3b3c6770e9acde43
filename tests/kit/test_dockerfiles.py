"""docker/Dockerfile.bot and docker/Dockerfile.worker linted without a Docker engine: multi-stage, pinned bases,
a non-root final stage, sources that exist in the build context, no torch in the bot image, the CUDA torch and
the ml extra in the worker image, and versions pinned by docker/constraints.lock."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from packaging.requirements import Requirement

from bot.cli.doctor import CHECKS
from tests.harness.compose import ROOT, Dockerfile, dockerignore_patterns, ignored, image_tag, parse_dockerfile

BOT = ROOT / "docker" / "Dockerfile.bot"
WORKER = ROOT / "docker" / "Dockerfile.worker"
LOCK = ROOT / "docker" / "constraints.lock"


@pytest.fixture(scope="module", params=[BOT, WORKER], ids=["bot", "worker"])
def dockerfile(request) -> Dockerfile:
    return parse_dockerfile(request.param)


def pip_installs(df: Dockerfile) -> list[str]:
    return [c for c in df.run_commands() if re.match(r"^(uv )?pip3? install\b|^python3? -m pip install\b", c)]


def constraint_pin(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_multi_stage_with_pinned_bases(dockerfile):
    assert len(dockerfile.stages) >= 2
    for stage in dockerfile.stages:
        assert "$" not in stage.base, f"unresolved ARG in FROM {stage.base}"
        names = {s.name for s in dockerfile.stages if s.name}
        if stage.base in names:
            continue
        tag = image_tag(stage.base)
        assert tag and tag != "latest", f"FROM {stage.base} is not pinned"
        assert re.search(r"\d", tag), f"FROM {stage.base}: pin a version, not a moving tag"


def test_the_final_stage_runs_as_a_non_root_user(dockerfile):
    final = dockerfile.stages[-1]
    users = final.all("USER")
    assert users, "the final stage never switches user"
    assert users[-1].args.split(":")[0] not in ("root", "0")
    assert any("useradd" in r.args for r in final.all("RUN"))


def test_copy_sources_exist_and_reach_the_build_context(dockerfile):
    patterns = dockerignore_patterns()
    stage_names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            source_stage = copy.flags().get("from")
            if source_stage:
                assert source_stage in stage_names or image_tag(source_stage), source_stage
                continue
            *sources, _dest = copy.words()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.path.name}:{copy.line}: COPY {source} does not exist"
                assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"


def test_copied_packages_are_the_ones_pyproject_installs(dockerfile):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {w for stage in dockerfile.stages for c in stage.all("COPY") if not c.flags().get("from")
              for w in c.words()[:-1]}
    assert packages <= copied, f"not copied: {packages - copied}"
    assert {"pyproject.toml", "constraints.txt", "README.md", "docker/constraints.lock"} <= copied


def test_dependencies_are_installed_against_the_lock(dockerfile):
    project = [c for c in pip_installs(dockerfile) if re.search(r"\s'\.\[(bot|worker)\]'(\s|$)", c)]
    assert len(project) == 1, pip_installs(dockerfile)
    assert "-c constraints.txt" in project[0] and "-c docker/constraints.lock" in project[0]


def test_the_bot_image_has_no_torch():
    df = parse_dockerfile(BOT)
    for command in pip_installs(df):
        assert "[ml]" not in command and not re.search(r"\btorch\b", command), command
    assert df.stages[-1].all("CMD")[-1].words() == ["loraloop", "bot"]
    assert "LORALOOP_DISPATCHER=celery" in " ".join(e.args for e in df.stages[-1].all("ENV"))


def test_the_worker_image_has_cuda_torch_and_the_worker_extra():
    df = parse_dockerfile(WORKER)
    installs = pip_installs(df)
    torch = [c for c in installs if re.search(r"\btorch==", c)]
    assert len(torch) == 1
    version = re.search(r"\btorch==([\w.+]+)", torch[0]).group(1)
    assert version.split("+")[0] == constraint_pin("torch"), "the worker's torch differs from constraints.txt"
    assert re.search(r"\+cu\d+$", version) and re.search(r"--index-url \S+/whl/cu\d+", torch[0])
    assert version.split("+")[1] in torch[0].split("--index-url", 1)[1]  # the build matches the index
    assert any("'.[worker]'" in c for c in installs)
    assert df.stages[-1].base.startswith("nvidia/cuda:")
    # The GPU side's own entry point: `loraloop` is the bot's command line (its database layer is not installed).
    assert df.stages[-1].all("CMD")[-1].words() == ["python", "-m", "worker"]


def test_both_images_run_the_same_python():
    bot = re.search(r"python:(\d+\.\d+\.\d+)", parse_dockerfile(BOT).stages[-1].base).group(1)
    worker = re.search(r"uv python install (\d+\.\d+\.\d+)", " ".join(parse_dockerfile(WORKER).run_commands()))
    assert worker and worker.group(1) == bot
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert bot.startswith("3.11") and requires == ">=3.11"


def test_image_healthchecks_run_real_doctor_checks(dockerfile):
    check = dockerfile.stages[-1].all("HEALTHCHECK")[-1].args
    command = json.loads(re.search(r"CMD (\[.*\])", check).group(1))
    if dockerfile.path == WORKER:  # Redis and the GPU, checked by the worker itself (no bot stack there)
        assert command == ["python", "-m", "worker", "--check"]
        return
    assert command[:2] == ["loraloop", "doctor"]
    names = [command[i + 1] for i, w in enumerate(command) if w == "--check"]
    assert names and all(n.replace("-", " ") in CHECKS for n in names)


# ---- docker/constraints.lock ---------------------------------------------------------------------------------


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[a-z0-9-]+==[\w.+!-]+", line), f"not an exact pin: {line!r}"
            name, version = line.split("==")
            pins[name] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_lock_pins_every_dependency_of_the_bot_and_the_ml_extra():
    pins = lock_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    linux = {"platform_system": "Linux", "sys_platform": "linux", "python_version": "3.11", "extra": ""}
    extras = project["optional-dependencies"]
    wanted = [Requirement(r) for r in project["dependencies"] + extras["bot"] + extras["ml"]]
    missing = sorted(canonical(r.name) for r in wanted
                     if (r.marker is None or r.marker.evaluate(linux))
                     and canonical(r.name) != "torch" and canonical(r.name) not in pins)
    assert not missing, f"docker/constraints.lock misses {missing}: run `.venv/bin/python docker/lock.py`"
    assert "torch" not in pins  # constraints.txt pins it; the worker takes the CUDA build of that version
    for r in wanted:  # the locked versions satisfy pyproject's ranges
        if canonical(r.name) in pins:
            assert r.specifier.contains(pins[canonical(r.name)], prereleases=True), (r, pins[canonical(r.name)])


def test_dockerignore_keeps_secrets_and_local_state_out():
    patterns = dockerignore_patterns()
    for path in (".env", ".venv", ".git", "loraloop-data", "tests"):
        assert ignored(path, patterns), path
    for path in ("bot", "pyproject.toml", "docker/constraints.lock"):
        assert not ignored(path, patterns), path
