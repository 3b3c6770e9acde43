"""Each image's package set, from its Dockerfile's pip install lines and pyproject's extras, closed over the
dependencies' own metadata (this venv's): the bot image gets no torch, the worker image no Discord, scheduler or
database stack. And the GPU side's entry points import with that stack absent."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

import pytest
from packaging.requirements import Requirement

from tests.harness.compose import ROOT, parse_dockerfile
from tools import import_graph

BOT_STACK = {"discord-py", "apscheduler", "sqlalchemy", "asyncpg", "aiosqlite", "psycopg", "alembic"}
LINUX = {"platform_system": "Linux", "sys_platform": "linux", "python_version": "3.11"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**LINUX, "extra": e}) for e in (extras or {""}))


def project_requirements(extras: set[str]) -> list[Requirement]:
    """loraloop[extras]'s direct requirements from pyproject.toml (self-references like loraloop[ml] followed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    out = [Requirement(r) for r in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            req = Requirement(text)
            if canonical(req.name) == "loraloop":
                todo.extend(req.extras)
            elif _applies(req, set()):
                out.append(req)
    return out


def closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull, by this venv's installed metadata (uninstalled optional
    dependencies are left out: they are not in the venv the lock was taken from either)."""
    names: set[str] = set()
    todo = [(r.name, set(r.extras)) for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (canonical(name), frozenset(extras)) in seen:
            continue
        seen.add((canonical(name), frozenset(extras)))
        names.add(canonical(name))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if _applies(req, extras):
                todo.append((req.name, set(req.extras)))
    return names


def image_packages(dockerfile: str) -> set[str]:
    """The package set one image's pip install lines ask for."""
    requirements: list[Requirement] = []
    for command in parse_dockerfile(ROOT / "docker" / dockerfile).run_commands():
        for line in re.split(r"&&|;", command):
            words = line.split()
            if words[:2] != ["pip", "install"]:
                continue
            args = iter(words[2:])
            for word in args:
                if word in ("-c", "--index-url", "--extra-index-url", "-f", "--find-links"):
                    next(args)
                    continue
                if word.startswith("-"):
                    continue
                word = word.strip("'\"")
                project = re.fullmatch(r"\.(?:\[([\w,]+)\])?", word)
                if project:
                    requirements += project_requirements(set(filter(None, (project.group(1) or "").split(","))))
                else:
                    requirements.append(Requirement(word.split("+")[0]))  # torch==2.13.0+cu128: the version
    assert requirements, f"{dockerfile} installs nothing"
    return closure(requirements)


def test_the_bot_image_gets_the_bot_stack_and_no_torch():
    packages = image_packages("Dockerfile.bot")
    assert {"discord-py", "sqlalchemy", "apscheduler", "celery", "redis"} <= packages
    assert not {"torch", "transformers", "peft", "trl"} & packages


def test_the_worker_image_gets_torch_and_no_bot_stack():
    packages = image_packages("Dockerfile.worker")
    assert {"torch", "transformers", "peft", "trl", "celery", "redis", "pydantic-settings"} <= packages
    assert not BOT_STACK & packages, sorted(BOT_STACK & packages)


BLOCKER = """
import importlib.abc, sys
BLOCKED = {"discord", "apscheduler", "sqlalchemy", "asyncpg", "aiosqlite", "psycopg", "alembic"}
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the GPU host)")
sys.meta_path.insert(0, Absent())
"""


# (trainer.recipe is left to the import graph: `datasets` probes for sqlalchemy with find_spec, which this
# blocker answers as if it were installed-but-broken.)
@pytest.mark.parametrize("module", ["worker.job", "worker.celery_app", "worker.__main__", "trainer.__main__"])
def test_the_gpu_side_imports_without_the_bot_stack(module):
    code = BLOCKER + textwrap.dedent(f"""
        import {module}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_trainer_command_runs_without_the_bot_stack():
    done = subprocess.run([sys.executable, "-c", BLOCKER + "import runpy; sys.argv = ['trainer', 'train', '--help']; "
                           "runpy.run_module('trainer', run_name='__main__')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--snapshot" in done.stdout and "--eval-fraction" in done.stdout


# ---- tools/import_graph -------------------------------------------------------------------------------------


def test_the_import_graph_finds_a_cycle_and_a_gpu_side_import_of_the_bot_stack(tmp_path):
    for package, files in {
        "data": {"__init__.py": "", "a.py": "from data import b\n", "b.py": "import data.a\n"},
        "worker": {"__init__.py": "", "job.py": "from data import c\n"},
        "trainer": {"__init__.py": "", "ok.py": "def f():\n    import sqlalchemy\n"},
        "deploy": {"__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import discord\n"},
        "bot": {"__init__.py": "import discord\n"},
    }.items():
        (tmp_path / package).mkdir()
        for name, text in files.items():
            (tmp_path / package / name).write_text(text)
    (tmp_path / "data" / "c.py").write_text("from sqlalchemy import select\n")
    edges = import_graph.graph(tmp_path)
    assert import_graph.cycles(edges) == [["data.a", "data.b"]]
    # worker.job reaches sqlalchemy through data.c; trainer's lazy import, deploy's type-only one and the bot's own
    # discord are fine.
    assert import_graph.forbidden(edges) == ["worker.job imports sqlalchemy: worker.job → data.c → sqlalchemy"]


def test_the_worker_and_the_trainer_reach_no_bot_stack_in_the_real_graph():
    problems = import_graph.forbidden(import_graph.graph())
    assert not [p for p in problems if p.startswith(("worker", "trainer"))], problems
    assert not import_graph.cycles(import_graph.graph())
