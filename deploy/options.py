"""Ollama's model options as one typed model, and the options users get: the one place both are defined.

Ollama checks option types on every chat (``Options.FromMap`` on the model's stored parameters merged with the
request's options) but not at ``/api/create``, so a badly typed PARAMETER creates fine and then breaks every chat:
options are checked here, before anything is created or sent. This module imports pydantic only: the bot's settings
and chat path read it without the gate or an HTTP client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

# The rule is Ollama's decoding, not Python's: ollama/ollama api/types.go (v0.13.0, the version docker-compose.yml
# pins; unchanged through v0.33.0) Options.FromMap. Request JSON decodes every number to float64, and an int field
# takes int64 or float64 (truncated by int64(t)), a float32 field float64 only, a bool field (or *bool) a bool, the
# []string field an array of strings; null is skipped; any other value is a 500 on every chat,
# `option "temperature" must be of type float32`. So 1024.0 is an integer to Ollama and True is not.
# One rule is stricter than Ollama's: a fractional value for an integer option (num_ctx 4096.5), which Ollama
# silently cuts (to 4096), is refused; so is a non-finite number, which JSON cannot carry.


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("ollama_integer", "must be of type integer")
    if not math.isfinite(value):
        raise PydanticCustomError("ollama_not_finite", "must be a finite number (JSON cannot carry {value})",
                                  {"value": value})
    if isinstance(value, float) and not value.is_integer():
        raise PydanticCustomError("ollama_fraction", "must be of type integer (Ollama would cut {value} to {cut})",
                                  {"value": value, "cut": int(value)})
    return int(value)


def _float32(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("ollama_float32", "must be of type float32")
    if not math.isfinite(value):
        raise PydanticCustomError("ollama_not_finite", "must be a finite number (JSON cannot carry {value})",
                                  {"value": value})
    return float(value)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise PydanticCustomError("ollama_boolean", "must be of type boolean")
    return value


def _strings(value: object) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PydanticCustomError("ollama_strings", "must be an array of strings")
    return list(value)


Integer = Annotated[int, PlainValidator(_integer, json_schema_input_type=int)]
Float32 = Annotated[float, PlainValidator(_float32, json_schema_input_type=float)]
Boolean = Annotated[bool, PlainValidator(_boolean, json_schema_input_type=bool)]
Strings = Annotated[list[str], PlainValidator(_strings, json_schema_input_type=list[str])]


class OllamaOptions(BaseModel):
    """api.Options of Ollama (v0.13.0): every key it reads, typed as it decodes them. Keys it does not know are
    refused here (Ollama ignores them with a log line: a typo would change nothing, silently); ollama-python's
    ``Options`` also lists keys Ollama dropped long ago (numa, low_vram, f16_kv, mirostat, tfs_z, …)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Runner: set when the model is loaded.
    num_ctx: Integer | None = None
    num_batch: Integer | None = None
    num_gpu: Integer | None = None
    main_gpu: Integer | None = None
    use_mmap: Boolean | None = None
    num_thread: Integer | None = None
    # Predict: used at run time.
    num_keep: Integer | None = None
    seed: Integer | None = None
    num_predict: Integer | None = None
    top_k: Integer | None = None
    top_p: Float32 | None = None
    min_p: Float32 | None = None
    typical_p: Float32 | None = None
    repeat_last_n: Integer | None = None
    temperature: Float32 | None = None
    repeat_penalty: Float32 | None = None
    presence_penalty: Float32 | None = None
    frequency_penalty: Float32 | None = None
    stop: Strings | None = None


OPTION_NAMES = tuple(OllamaOptions.model_fields)
# What a settings reader is told a value must be, by the kind of option.
_EXPECTED = {"ollama_integer": "an integer", "ollama_fraction": "a whole number", "ollama_float32": "a number",
             "ollama_not_finite": "a finite number", "ollama_boolean": "true or false",
             "ollama_strings": "a list of strings"}


def _first_error(options: Mapping[str, Any], *, known_only: bool) -> tuple[str, dict[str, Any]] | None:
    """The key and pydantic error of the first option (in the mapping's order) the model refuses."""
    values = {k: v for k, v in options.items() if k in OllamaOptions.model_fields} if known_only else dict(options)
    try:
        OllamaOptions.model_validate(values)
    except ValidationError as exc:
        order = list(values)
        errors = [(str(e["loc"][0]), dict(e)) for e in exc.errors() if e["loc"]]
        return min(errors, key=lambda e: order.index(e[0]) if e[0] in order else len(order))
    return None


def option_type_error(options: Mapping[str, Any]) -> str | None:
    """Ollama's message for the first option whose value it would refuse on every chat, or None; unknown keys
    pass, as Ollama ignores them."""
    found = _first_error(options, known_only=True)
    return f'option "{found[0]}" {found[1]["msg"]}' if found else None


def check_options(options: Mapping[str, Any], what: str) -> None:
    """Raise ValueError naming the first option Ollama would ignore (unknown key), refuse or cut; ``stop`` is
    refused too: the stop tokens come from the chat template."""
    if "stop" in options:
        raise ValueError(f"{what}: 'stop' is not a sampling option loraloop passes to Ollama (stop tokens come from "
                         "the chat template)")
    found = _first_error(options, known_only=False)
    if found is None:
        return
    key, error = found
    if error["type"] == "extra_forbidden":
        known = ", ".join(k for k in OPTION_NAMES if k != "stop")
        raise ValueError(f"{what}: {key!r} is not an option Ollama knows; it would ignore it (known: {known})")
    raise ValueError(f"{what}: {key} must be {_EXPECTED.get(error['type'], 'valid')}, not {options[key]!r}")


# Ollama's own defaults would do for most of these; they are written out so that /model status can show exactly
# what users get, and so that a base tag with other parameters cannot change it.
SERVE_OPTIONS: dict[str, Any] = {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "repeat_penalty": 1.1,
                                 "num_ctx": 4096, "num_predict": 1024}


class ServeSettings(Protocol):
    """The settings the served options come from (bot/settings.py Settings has them)."""

    @property
    def serve_options(self) -> Mapping[str, Any]: ...
    @property
    def chat_max_tokens(self) -> int: ...


def serve_options_from(settings: ServeSettings) -> dict[str, Any]:
    """The served options from settings: ``serve_options`` over the defaults; num_predict is chat_max_tokens
    unless serve_options sets it (one limit for the bot's answers and the model's own)."""
    options = {**SERVE_OPTIONS, **settings.serve_options}
    if "num_predict" not in settings.serve_options:
        options["num_predict"] = int(settings.chat_max_tokens)
    return options
