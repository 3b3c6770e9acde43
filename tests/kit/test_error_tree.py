"""One error tree: every public exception class the project defines is a LoraloopError (data/errors.py), so a
boundary catches ``LoraloopError`` (plus ``OSError``) and shows ``str(exc)`` to the user."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from data.errors import LoraloopError, StoreError

PACKAGES = ("bot", "data", "deploy", "trainer", "worker")
# Modules that import what only a GPU host or a build has; their classes are checked where they can be imported.
SKIP = ("data.migrations.versions", "data.migrations.env")


def project_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.startswith(SKIP) or info.name.endswith("__main__") and package == "bot":
                continue  # bot/cli/__main__ runs the command line when imported
            module = importlib.import_module(info.name)
            for name, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == info.name and issubclass(cls, BaseException) and not name.startswith("_"):
                    found[f"{info.name}.{name}"] = cls
    return found


def test_every_public_exception_is_a_loraloop_error():
    found = project_exceptions()
    assert len(found) >= 30  # the walk really found them
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, LoraloopError))
    assert outside == []


def test_errors_keep_their_builtin_bases_for_old_callers():
    from data.conversation import InvalidConversation
    from data.formats import FormatError

    assert issubclass(StoreError, LoraloopError)
    assert issubclass(FormatError, ValueError) and issubclass(InvalidConversation, ValueError)
