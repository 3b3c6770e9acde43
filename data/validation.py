"""One way to say what a pydantic model refused, for every boundary that reads settings, manifests or records."""

from __future__ import annotations

from pydantic import ValidationError


def describe(exc: ValidationError, *, root: str = "", prefix: str = "", limit: int | None = None,
             unknown: str = "not a known setting", show_input: bool = False) -> str:
    """``exc``'s problems as one line: ``field.path: message`` joined by "; ".

    ``root`` names a problem of the whole object (no field path); ``prefix`` goes before every path (a settings
    key's name); ``limit``: at most that many problems (a hostile file can hold thousands); ``unknown``: what an
    unexpected key is called; ``show_input``: the refused value is quoted after the message.
    """
    problems = []
    for error in exc.errors()[:limit]:
        path = prefix + ".".join(str(part) for part in error["loc"]) or root
        if error["type"] == "extra_forbidden":
            problems.append(f"{path}: {unknown}")
        else:
            problems.append(f"{path}: {error['msg']}" + (f" (got {error['input']!r})" if show_input else ""))
    return "; ".join(problems)
