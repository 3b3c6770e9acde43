"""Reading the deployment kit's files the way Docker does, closely enough to check them without a Docker engine:
compose files (YAML plus ``${VAR}`` interpolation), Dockerfiles (instructions, stages) and .dockerignore."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt} (compose-spec "Interpolation"); $$ escapes.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}")


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def interpolated_names(text: str) -> set[str]:
    """Every variable a text interpolates, defaults' own variables included."""
    names: set[str] = set()
    for m in INTERPOLATION.finditer(text):
        names |= {m.group(1)} | interpolated_names(m.group(3) or "")
    return names


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """What compose makes of a value with ``env`` as the environment (defaults apply to what is missing)."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        present = name in env and (env[name] != "" or not op.startswith(":"))
        if op.endswith("-"):
            return env[name] if present else interpolate(arg, env)
        if op.endswith("+"):
            return interpolate(arg, env) if present else ""
        if op.endswith("?") and not present:
            raise KeyError(f"{name}: {arg}")
        return env.get(name, "")

    return INTERPOLATION.sub(one, value).replace("$$", "$")


def documented_names(path: Path = ENV_EXAMPLE) -> set[str]:
    """Names set (or shown commented out) in .env.example."""
    pattern = re.compile(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=")
    return {m.group(1) for line in path.read_text(encoding="utf-8").splitlines() if (m := pattern.match(line))}


def setting_names() -> set[str]:
    """Every loraloop setting by the name the docs give it: a field (``model_name``) or a group's (``deploy.mode``)."""
    names = set(Settings.model_fields)
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            names |= {f"{name}.{field}" for field in info.annotation.model_fields}
    return names


def setting_of(variable: str) -> str:
    """The setting a ``LORALOOP_`` variable sets: LORALOOP_DEPLOY__MODE → deploy.mode."""
    return variable.removeprefix("LORALOOP_").lower().replace("__", ".")


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", "NAME"]
        return dict((item.split("=", 1) + [None])[:2] for item in env)
    return dict(env)


def volume_sources(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, kind) per mount: kind is "volume" for a named volume, "bind" for a host path."""
    out = []
    for mount in service.get("volumes") or []:
        if isinstance(mount, dict):
            source, kind = mount.get("source", ""), mount.get("type", "volume")
        else:
            source = mount.split(":", 1)[0] if ":" in mount else ""
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        if source:
            out.append((source, kind))
    return out


def image_tag(image: str) -> str | None:
    """The tag (or digest) of an image reference, or None when it has neither."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


# ---- Dockerfiles ---------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def flags(self) -> dict[str, str]:
        return dict(re.findall(r"--([a-z-]+)=(\S+)", self.args))

    def words(self) -> list[str]:
        """Arguments without leading --flags; JSON (exec) form decoded."""
        text = re.sub(r"^(?:--[a-z-]+=\S+\s+)*", "", self.args)
        if text.startswith("["):
            import json

            return json.loads(text)
        return shlex.split(text)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    def run_commands(self) -> list[str]:
        """Each shell command of every RUN, split at && ; and ||."""
        out = []
        for stage in self.stages:
            for run in stage.all("RUN"):
                out += [c.strip() for c in re.split(r"&&|\|\||;", run.args) if c.strip()]
        return out


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[tuple[str, int]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(((pending + stripped).strip(), start))
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for text, number in logical:
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, rest, number))
    return Dockerfile(path, args, stages)


def dockerignore_patterns(root: Path = ROOT) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``relative`` (or a parent directory of it) out of the build context."""
    parts = Path(relative).parts
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        pattern = pattern[3:] if pattern.startswith("**/") else pattern
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(parts[i - 1], pattern):
                result = not negate
                break
    return result
