"""A small interpreter for Go's text/template, enough for Ollama chat templates, and Ollama's chat rendering.

Used before registering a model to check that the TEMPLATE we hand Ollama renders what the trainer trained on,
and by the Ollama-API test server to render prompts.

Covers: text with ``{{- … -}}`` trimming, comments, ``if``/``else if``/``else``, ``range`` (with ``$i, $x :=``
and ``else``), ``with``, variable declaration and assignment, field chains on ``.``/``$``/``$var``/``(…)``,
string/number/bool literals, pipelines with ``|``, and the builtins ``and or not eq ne lt le gt ge len index
slice print printf``. Semantics follow Go's (truthiness, short-circuit ``and``/``or``, per-block variable
scope); anything outside this subset raises :class:`TemplateError` instead of rendering something else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from data.errors import LoraloopError


class TemplateError(LoraloopError):
    """The template uses a construct this interpreter does not know, or fails at run time."""


# --- lexing -------------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _split(source: str) -> list[tuple[str, str]]:
    """Text and action pieces, with Go's trim markers applied."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            pieces.append(("text", text))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            pieces.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = source[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if text:
        pieces.append(("text", text))
    return pieces


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<decl>:=)
    | (?P<assign>=)
    | (?P<punct>[()|,])
    | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"cannot parse {text[pos:]!r} in action {text!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


# --- parsing ------------------------------------------------------------------------------------


@dataclass
class _Node:
    kind: str  # text | output | if | range | with | set
    text: str = ""
    expr: Any = None
    decl: list[str] = field(default_factory=list)
    declare: bool = True
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


class _Parser:
    def __init__(self, source: str) -> None:
        self.pieces = _split(source)
        self.pos = 0

    def parse(self) -> list[_Node]:
        nodes, stop = self._block()
        if stop is not None:
            raise TemplateError(f"unexpected {{{{{stop}}}}}")
        return nodes

    def _block(self) -> tuple[list[_Node], str | None]:
        nodes: list[_Node] = []
        while self.pos < len(self.pieces):
            kind, text = self.pieces[self.pos]
            self.pos += 1
            if kind == "text":
                nodes.append(_Node("text", text=text))
                continue
            word = text.split(None, 1)[0] if text else ""
            if word in ("end", "else"):
                return nodes, text
            if word in ("if", "with"):
                nodes.append(self._conditional(word, text[len(word) :]))
            elif word == "range":
                nodes.append(self._range(text[len("range") :]))
            elif word in ("define", "template", "block", "break", "continue"):
                raise TemplateError(f"{{{{{word}}}}} is not supported")
            else:
                nodes.append(self._action(text))
        return nodes, None

    def _conditional(self, kind: str, rest: str) -> _Node:
        node = _Node(kind, expr=_parse_pipeline(_tokens(rest)))
        node.body, stop = self._block()
        if stop is None:
            raise TemplateError(f"unterminated {{{{{kind}}}}}")
        if stop.startswith("else"):
            tail = stop[len("else") :].strip()
            if tail.startswith("if ") or tail.startswith("with "):
                word = tail.split(None, 1)[0]
                node.orelse = [self._conditional(word, tail[len(word) :])]
                return node
            node.orelse, stop = self._block()
            if stop != "end":
                raise TemplateError(f"expected {{{{end}}}} after {{{{else}}}}, got {stop!r}")
        return node

    def _range(self, rest: str) -> _Node:
        toks = _tokens(rest)
        decl: list[str] = []
        if any(k == "decl" for k, _ in toks):
            i = next(i for i, (k, _) in enumerate(toks) if k == "decl")
            decl = [v for k, v in toks[:i] if k == "var"]
            toks = toks[i + 1 :]
        node = _Node("range", expr=_parse_pipeline(toks), decl=decl)
        node.body, stop = self._block()
        if stop is None:
            raise TemplateError("unterminated {{range}}")
        if stop == "else":
            node.orelse, stop = self._block()
        if stop != "end":
            raise TemplateError(f"expected {{{{end}}}} closing range, got {stop!r}")
        return node

    def _action(self, text: str) -> _Node:
        toks = _tokens(text)
        if len(toks) >= 2 and toks[0][0] == "var" and toks[1][0] in ("decl", "assign"):
            return _Node("set", expr=_parse_pipeline(toks[2:]), decl=[toks[0][1]], declare=toks[1][0] == "decl")
        return _Node("output", expr=_parse_pipeline(toks))


def _parse_pipeline(toks: list[tuple[str, str]]) -> list[list[Any]]:
    """A pipeline is a list of commands; a command is a list of operands (the first may be a function)."""
    commands: list[list[Any]] = [[]]
    i = 0
    while i < len(toks):
        kind, value = toks[i]
        if kind == "punct" and value == "|":
            commands.append([])
        elif kind == "punct" and value == "(":
            depth, j = 1, i + 1
            while depth:
                if j >= len(toks):
                    raise TemplateError("unbalanced parenthesis")
                if toks[j] == ("punct", "("):
                    depth += 1
                elif toks[j] == ("punct", ")"):
                    depth -= 1
                j += 1
            commands[-1].append(("paren", _parse_pipeline(toks[i + 1 : j - 1])))
            i = j
            continue
        elif kind == "punct":
            raise TemplateError(f"unexpected {value!r}")
        elif kind == "str":
            commands[-1].append(("lit", json.loads(value)))
        elif kind == "raw":
            commands[-1].append(("lit", value[1:-1]))
        elif kind == "num":
            commands[-1].append(("lit", float(value) if "." in value else int(value)))
        elif kind == "ident" and value in ("true", "false", "nil"):
            commands[-1].append(("lit", {"true": True, "false": False, "nil": None}[value]))
        elif kind in ("ident", "var", "field"):
            commands[-1].append((kind, value))
        else:
            raise TemplateError(f"unexpected {value!r}")
        i += 1
    if any(not c for c in commands):
        raise TemplateError("empty command in pipeline")
    return commands


# --- evaluation ---------------------------------------------------------------------------------


def truth(value: Any) -> bool:
    """Go template truthiness: false, 0, nil and empty strings/collections are false."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, str | bytes | Sequence | Mapping):
        return len(value) > 0
    return True


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        if name not in value:
            return None  # Go prints "<no value>" for a missing map key; callers here never print it
        return value[name]
    if hasattr(value, name):
        return getattr(value, name)
    raise TemplateError(f"can't evaluate field {name} in type {type(value).__name__}")


def _fmt(value: Any) -> str:
    if value is None:
        return "<no value>"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _slice(x: Any, *idx: int) -> Any:
    if len(idx) == 0:
        return x
    if len(idx) == 1:
        return x[idx[0] :]
    return x[idx[0] : idx[1]]


def _index(x: Any, *keys: Any) -> Any:
    for k in keys:
        try:
            x = x[k]
        except (KeyError, IndexError, TypeError) as exc:
            raise TemplateError(f"index of {k!r}: {exc}") from exc
    return x


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("missing argument for comparison")
    return any(a == b for b in others)


def _printf(fmt: str, *args: Any) -> str:
    fmt = re.sub(r"%[vsdq]", lambda m: {"%q": "%r"}.get(m.group(0), "%s"), fmt)
    return fmt % tuple(_fmt(a) if not isinstance(a, int | float) else a for a in args)


_FUNCS: dict[str, Any] = {
    "not": lambda x: not truth(x),
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "len": len,
    "slice": _slice,
    "index": _index,
    "print": lambda *a: "".join(_fmt(x) for x in a),
    "printf": _printf,
}


class _Scope:
    def __init__(self, parent: _Scope | None = None) -> None:
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def lookup(self, name: str) -> Any:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.vars:
                return scope.vars[name]
            scope = scope.parent
        raise TemplateError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.vars:
                scope.vars[name] = value
                return
            scope = scope.parent
        raise TemplateError(f"undefined variable {name}")


class Template:
    """A parsed template; :meth:`render` executes it against ``data`` (the top-level dot)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = _Parser(source).parse()

    def render(self, data: Any) -> str:
        out: list[str] = []
        scope = _Scope()
        scope.vars["$"] = data
        self._run(self.nodes, data, scope, out)
        return "".join(out)

    def variables(self) -> set[str]:
        """Lower-cased top-level field names used (Ollama checks for "messages" to choose chat mode)."""
        return {m.lower() for m in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)", self.source)}

    def _run(self, nodes: list[_Node], dot: Any, scope: _Scope, out: list[str]) -> None:
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "output":
                out.append(_fmt(self._pipeline(node.expr, dot, scope)))
            elif node.kind == "set":
                value = self._pipeline(node.expr, dot, scope)
                if node.declare:
                    scope.vars[node.decl[0]] = value
                else:
                    scope.assign(node.decl[0], value)
            elif node.kind in ("if", "with"):
                value = self._pipeline(node.expr, dot, scope)
                if truth(value):
                    self._run(node.body, value if node.kind == "with" else dot, _Scope(scope), out)
                else:
                    self._run(node.orelse, dot, _Scope(scope), out)
            elif node.kind == "range":
                value = self._pipeline(node.expr, dot, scope)
                items: list[tuple[Any, Any]]
                if isinstance(value, Mapping):
                    items = [(k, value[k]) for k in sorted(value)]
                elif value is None:
                    items = []
                elif isinstance(value, Sequence) and not isinstance(value, str):
                    items = list(enumerate(value))
                elif isinstance(value, int):
                    items = [(i, i) for i in range(value)]
                else:
                    raise TemplateError(f"range can't iterate over {value!r}")
                if not items:
                    self._run(node.orelse, dot, _Scope(scope), out)
                for key, element in items:
                    inner = _Scope(scope)
                    if len(node.decl) == 1:
                        inner.vars[node.decl[0]] = element
                    elif len(node.decl) == 2:
                        inner.vars[node.decl[0]], inner.vars[node.decl[1]] = key, element
                    self._run(node.body, element, inner, out)

    def _pipeline(self, commands: list[list[Any]], dot: Any, scope: _Scope) -> Any:
        value: Any = None
        for i, command in enumerate(commands):
            extra = [value] if i > 0 else []
            value = self._command(command, dot, scope, extra)
        return value

    def _command(self, command: list[Any], dot: Any, scope: _Scope, extra: list[Any]) -> Any:
        head = command[0]
        if head[0] == "ident":
            name = head[1]
            if name in ("and", "or"):
                args = command[1:]
                value: Any = None
                for arg in args:
                    value = self._operand(arg, dot, scope)
                    if truth(value) != (name == "and"):
                        return value
                for v in extra:
                    value = v
                return value
            if name not in _FUNCS:
                raise TemplateError(f'function "{name}" not defined')
            args = [self._operand(a, dot, scope) for a in command[1:]] + extra
            try:
                return _FUNCS[name](*args)
            except TemplateError:
                raise
            except Exception as exc:
                raise TemplateError(f"error calling {name}: {exc}") from exc
        if len(command) > 1 or extra:
            raise TemplateError(f"can't give argument to non-function {head!r}")
        return self._operand(head, dot, scope)

    def _operand(self, op: Any, dot: Any, scope: _Scope) -> Any:
        kind = op[0]
        if kind == "lit":
            return op[1]
        if kind == "field":
            value = dot
            for name in [p for p in op[1].split(".") if p]:
                value = _field(value, name)
            return value
        if kind == "var":
            name, *path = op[1].split(".")
            value = scope.lookup(name)
            for p in path:
                value = _field(value, p)
            return value
        if kind == "paren":
            return self._pipeline(op[1], dot, scope)
        if kind == "ident":
            return self._command([op], dot, scope, [])
        raise TemplateError(f"bad operand {op!r}")


def render_chat(template: str, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama renders for a chat (after it prepended the model's SYSTEM when the chat has none).

    As Ollama's template.Execute: all system messages joined into ``.System``, runs of the same role merged,
    ``.Messages`` for templates that use it, otherwise the legacy ``.System``/``.Prompt``/``.Response`` form.
    """
    t = Template(template)
    system = "\n\n".join(x["content"] for x in messages if x["role"] == "system")
    collated: list[dict[str, str]] = []
    for x in messages:
        if collated and collated[-1]["role"] == x["role"] and x["role"] != "tool":
            collated[-1] = {**collated[-1], "content": collated[-1]["content"] + "\n\n" + x["content"]}
        else:
            collated.append(dict(x))
    if "messages" in t.variables():
        return t.render({
            "System": system, "Response": "", "Tools": [],
            "Messages": [{"Role": x["role"], "Content": x["content"], "Thinking": "", "ToolCalls": [],
                          "ToolName": "", "Images": []} for x in collated],
        })
    # Legacy templates (.System/.Prompt/.Response) are executed once per user turn, as Ollama does.
    out: list[str] = []
    sys_text, prompt, response = "", "", ""
    for x in collated:
        if x["role"] == "system":
            if prompt or response:
                out.append(t.render({"System": sys_text, "Prompt": prompt, "Response": response}))
                sys_text = prompt = response = ""
            sys_text = x["content"]
        elif x["role"] == "user":
            if response:
                out.append(t.render({"System": sys_text, "Prompt": prompt, "Response": response}))
                sys_text = prompt = response = ""
            prompt = x["content"]
        elif x["role"] == "assistant":
            response = x["content"]
    last = t.render({"System": sys_text, "Prompt": prompt, "Response": response})
    cut = template.find(".Response")
    if cut >= 0 and not response:
        # Ollama drops everything from .Response on for the turn being generated.
        last = Template(template[: template.rfind("{{", 0, cut)]).render(
            {"System": sys_text, "Prompt": prompt, "Response": ""})
    out.append(last)
    return "".join(out)


def ollama_prompt(template: str, system: str, messages: list[dict[str, str]]) -> str:
    """What Ollama's /api/chat renders for ``messages`` on a model with this TEMPLATE and SYSTEM."""
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return render_chat(template, msgs)
