"""Who imports whom between loraloop's top-level packages, from the module-level imports in the source.

    python -m tools.import_graph

Prints each package's imports of the others (with the modules behind each edge), then fails (exit 1) on an import
cycle between modules or between packages, or when a GPU-side module (worker, trainer, deploy) reaches discord,
apscheduler or sqlalchemy through module-level imports — the GPU host does not install them. Imports inside
functions and under ``if TYPE_CHECKING:`` are not module-level: that is how a module uses such a package only where
the bot calls it.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "data", "deploy", "trainer", "worker")
GPU_SIDE = ("worker", "trainer", "deploy")
BOT_ONLY = ("discord", "apscheduler", "sqlalchemy")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """What ``name`` imports when it is imported: project modules by name, anything else by its top-level name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and _type_checking(node):
                visit(node.orelse)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []) or [])
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                out.update(_resolve(alias.name, known) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package this module is in
                    anchor = name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    out.add(sub if sub in known else _resolve(base, known))

    visit(tree.body)
    out.discard(name)
    return out


def _resolve(dotted: str, known: set[str]) -> str:
    """A project module (its longest known prefix; importing it runs its packages' __init__ too) or a top name."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return parts[0]


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → what its source imports at module level."""
    found = modules(root)
    known = set(found)
    return {name: module_imports(name, path, known) for name, path in found.items()}


def with_parents(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same, plus what Python runs first: importing a.b.c runs a/__init__ and a/b/__init__. Not cycles (a
    package's __init__ importing its own modules is ordinary), but what a module loads."""
    out = {name: set(targets) for name, targets in edges.items()}
    for name in edges:
        parts = name.split(".")
        out[name].update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in edges)
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of project modules with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def forbidden(edges: dict[str, set[str]]) -> list[str]:
    """GPU-side modules whose module-level imports reach a bot-only package, with the path that gets there."""
    problems = []
    edges = with_parents(edges)
    for start in sorted(m for m in edges if m.split(".")[0] in GPU_SIDE):
        seen = {start: [start]}
        todo = [start]
        while todo:
            current = todo.pop(0)
            for target in sorted(edges.get(current, ())):
                if target in seen:
                    continue
                seen[target] = [*seen[current], target]
                if target in BOT_ONLY:
                    problems.append(f"{start} imports {target}: {' → '.join(seen[target])}")
                elif target in edges:
                    todo.append(target)
    return problems


def package_edges(edges: dict[str, set[str]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for source, targets in edges.items():
        for target in targets:
            a, b = source.split(".")[0], target.split(".")[0]
            if a != b and b in PACKAGES:
                out[a, b].add(f"{source} → {target}")
    return out


def main() -> int:
    edges = graph()
    by_package = package_edges(edges)
    print("module-level imports between packages:")
    for package in PACKAGES:
        targets = sorted(b for a, b in by_package if a == package)
        print(f"  {package:<8} → {', '.join(targets) or '(none)'}")
        for target in targets:
            via = sorted(by_package[package, target])
            print(f"             {target}: {len(via)} imports, e.g. {'; '.join(via[:2])}")
    bad = False
    for group in cycles(edges):
        bad = True
        print(f"CYCLE: {' ↔ '.join(group)}")
    packages = {p: {b for a, b in by_package if a == p} for p in PACKAGES}
    for group in cycles(packages):
        bad = True
        print(f"PACKAGE CYCLE: {' ↔ '.join(group)}")
    for problem in forbidden(edges):
        bad = True
        print(f"GPU SIDE: {problem}")
    if not bad:
        print(f"no cycles between modules or packages; no {', '.join(GPU_SIDE)} module imports "
              f"{', '.join(BOT_ONLY)} at module level")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
