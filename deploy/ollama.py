"""The one client loraloop uses to talk to Ollama, over HTTP only (the daemon may live on another host).

Every request goes through one ``httpx.AsyncClient`` (the transport the official ``ollama`` client uses too), with
its timeouts per request: ``/api/create`` may stay silent far longer than anything else. Answers are read into the
official client's response types; what the official client lacks is done here: blob existence checks
(``HEAD /api/blobs/…``), streamed blob uploads with progress, and streamed lines read with a cap on their length
(:data:`MAX_STREAM_LINE`: a server that never ends a line would fill the memory).
Every failure surfaces as an :class:`OllamaError` subclass whose message can be shown to a user as is.

Reasoning models: Ollama turns ``think`` on by default for a model whose capabilities (``/api/show``) include
``thinking`` and hands the reasoning apart, in ``message.thinking`` (api/types.go ``Message.Thinking``); asking a
model without that capability to think is a 400 ("… does not support thinking"). So ``think`` is only ever sent to a
model that can think (:meth:`OllamaClient.capabilities`, read once per tag), and :meth:`OllamaClient.chat` returns
the answer alone: never the thinking, nor a leading ``<think>`` block of a template that leaves it in the content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import re
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama

from data.conversation import split_think
from data.errors import LoraloopError

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20
# The longest line of a streamed reply: one line is one JSON object carrying a piece of text (bytes to kilobytes).
MAX_STREAM_LINE = 16 << 20


class OllamaError(LoraloopError):
    """Ollama answered with an error (``status`` is the HTTP status, or ``None`` for an error mid-stream)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


class OllamaUnavailable(OllamaError):
    """Ollama could not be reached (connection refused, timed out, or dropped)."""


class ModelNotFound(OllamaError):
    """The named model is not present on the Ollama host."""

    def __init__(self, model: str, message: str | None = None) -> None:
        super().__init__(message or f"model {model!r} is not available in Ollama (not created or pulled there)", 404)
        self.model = model


class DigestMismatch(OllamaError):
    """The bytes Ollama received do not hash to the digest they were sent under."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One entry of ``/api/tags``."""

    name: str
    digest: str
    size: int
    modified_at: str


@dataclass(frozen=True, slots=True)
class ChatPart:
    """One line of a streamed ``/api/chat``: a piece of the answer, of the reasoning, or both (either may be "");
    ``done_reason`` on the last line ("stop", "length", …)."""

    content: str = ""
    thinking: str = ""
    done_reason: str | None = None


THINKING = "thinking"  # the /api/show capability of a model Ollama lets think


@dataclass(frozen=True, slots=True)
class CreateProgress:
    """One progress line of ``/api/create``."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@dataclass(frozen=True, slots=True)
class BlobUpload:
    """What :meth:`OllamaClient.ensure_blob` did for one file."""

    digest: str
    size: int
    uploaded: bool  # False when Ollama already had it

    @property
    def bytes_sent(self) -> int:
        return self.size if self.uploaded else 0


ProgressCallback = Callable[[CreateProgress], Awaitable[None] | None]
# (bytes of this file sent so far, the file's size): called as an upload goes, at most every _PROGRESS_EVERY bytes.
UploadCallback = Callable[[int, int], Awaitable[None] | None]
_PROGRESS_EVERY = 16 << 20
# Creating from safetensors: Ollama sends one "converting model" line, then nothing until the conversion (and any
# quantization) is done, which for a 7B model takes minutes; the read timeout must outlast that silence.
CREATE_TIMEOUT_S = 2 * 3600.0


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in chunks (blocking: call it in a thread for big files)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    # NFC, as the trainer renders it: some tokenizers normalise (Qwen2's), llama.cpp never does, so a decomposed
    # "é" would otherwise be served as other tokens than it was trained as.
    return [{"role": str(m["role"]), "content": unicodedata.normalize("NFC", str(m.get("content") or ""))}
            for m in messages]


class OllamaClient:
    """One object per Ollama host. ``timeout`` bounds connecting, each read and write, and the wait for a pooled
    connection, in seconds (None: no limit);
    ``create_timeout`` is the read limit of ``/api/create`` alone (model conversion is silent and long);
    ``max_line`` the longest line, in bytes, of a streamed chat."""

    def __init__(self, host: str, timeout: float | None = 300.0, create_timeout: float | None = CREATE_TIMEOUT_S,
                 max_line: int = MAX_STREAM_LINE) -> None:
        host = host.strip().rstrip("/")
        if "://" not in host:
            host = "http://" + host
        self.host = host
        self.timeout = timeout
        self.create_timeout = create_timeout
        self.max_line = max_line
        self._timeout = httpx.Timeout(timeout)  # connecting, and each read, write and wait for a connection
        self._create_timeout = httpx.Timeout(timeout, read=create_timeout)
        self._client: httpx.AsyncClient | None = None
        self._capabilities: dict[str, frozenset[str]] = {}  # tag -> /api/show capabilities, until recreated

    async def __aenter__(self) -> OllamaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- error translation -------------------------------------------------------------------------

    def _unavailable(self, why: str) -> OllamaUnavailable:
        return OllamaUnavailable(f"Ollama is not reachable at {self.host} ({why})")

    def _translate(self, exc: httpx.TransportError) -> OllamaUnavailable:
        if isinstance(exc, httpx.TimeoutException):
            return self._unavailable(f"no answer within {self.timeout:g} s" if self.timeout else "timed out")
        if isinstance(exc, httpx.ConnectError):
            return self._unavailable("connection refused")
        return self._unavailable(f"connection lost: {exc.__class__.__name__}")

    @staticmethod
    def _refused(status: int, text: str, model: str | None = None) -> OllamaError:
        """The error for an answer other than 200: ModelNotFound when it says ``model`` is not there."""
        message = _error_text(text)
        if model is not None and (status == 404 or (status == 400 and "not found" in message)):
            return ModelNotFound(model, f"model {model!r} is not available in Ollama: {message}")
        return OllamaError(f"Ollama error: {message}", status)

    # -- model queries -----------------------------------------------------------------------------

    async def version(self) -> str:
        """The server's version string (``GET /api/version``); the cheapest liveness check."""
        return str((await self._json("GET", "/api/version")).get("version", ""))

    async def list_models(self) -> list[ModelInfo]:
        """All models on the host (``/api/tags``)."""
        resp = ollama.ListResponse.model_validate(await self._json("GET", "/api/tags"))
        return [
            ModelInfo(
                name=m.model or "",
                digest=m.digest or "",
                size=int(m.size or 0),
                modified_at=m.modified_at.isoformat() if m.modified_at else "",
            )
            for m in resp.models
        ]

    async def has_model(self, model: str) -> bool:
        """Whether ``model`` exists (``latest`` is implied when no tag is given, as Ollama does)."""
        wanted = model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"
        return any(m.name == wanted for m in await self.list_models())

    async def show(self, model: str) -> dict[str, Any]:
        """``/api/show`` as a plain dict (template, system, parameters, details, …)."""
        return await self._json("POST", "/api/show", {"model": model}, model=model)

    async def capabilities(self, model: str) -> frozenset[str]:
        """The model's capabilities (``/api/show``: completion, thinking, tools, …), read once per tag; empty from
        a daemon that does not report them (it cannot think on request either)."""
        cached = self._capabilities.get(model)
        if cached is None:
            reported = (await self.show(model)).get("capabilities")
            cached = frozenset(map(str, reported)) if isinstance(reported, list) else frozenset()
            self._capabilities[model] = cached
        return cached

    async def _think_field(self, model: str, think: bool | None) -> dict[str, bool]:
        """``{"think": think}`` for a model that can think; nothing otherwise (``think: true`` is a 400 there)."""
        if think is None:
            return {}
        try:
            can_think = THINKING in await self.capabilities(model)
        except OllamaError as exc:
            if isinstance(exc, ModelNotFound | OllamaUnavailable):
                raise
            return {}  # /api/show failed but the chat may not: without think it can still be answered
        return {"think": think} if can_think else {}

    async def running(self) -> list[str]:
        """Names of the models loaded in memory right now (``/api/ps``)."""
        resp = ollama.ProcessResponse.model_validate(await self._json("GET", "/api/ps"))
        return [m.model or m.name or "" for m in resp.models]

    async def delete(self, model: str) -> None:
        """Delete a model tag; raises :class:`ModelNotFound` when it is not there."""
        self._capabilities.pop(model, None)
        resp = await self._request("DELETE", "/api/delete", json={"model": model})  # a 200 has no body
        if resp.status_code != 200:
            raise self._refused(resp.status_code, resp.text, model)

    # -- chat --------------------------------------------------------------------------------------

    async def chat_stream(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
    ) -> AsyncIterator[str]:
        """Yield the answer's text pieces as Ollama streams them (a reasoning model's thinking left out)."""
        parts = self.chat_parts(model, messages, options, keep_alive)
        try:
            async for part in parts:
                if part.content:
                    yield part.content
        finally:
            await parts.aclose()

    async def chat_parts(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        think: bool | None = None,
    ) -> AsyncGenerator[ChatPart, None]:
        """Yield the streamed reply line by line: answer and reasoning pieces, then the line that ends it.

        ``think`` is sent only to a model that can think (None: never; Ollama then thinks by default where it can).
        Raises OllamaError when a line of the stream outgrows :data:`MAX_STREAM_LINE` bytes (the line is never
        held whole past that)."""
        payload: dict[str, Any] = {"model": model, "messages": _messages(messages), "stream": True,
                                   **await self._think_field(model, think)}
        if options:
            payload["options"] = dict(options)
        if keep_alive is not None:
            payload["keep_alive"] = keep_alive
        async with contextlib.aclosing(self._stream_lines("/api/chat", payload, self._timeout, model)) as lines:
            async for line in lines:
                message_part = line.get("message")
                message_part = message_part if isinstance(message_part, dict) else {}
                part = ChatPart(str(message_part.get("content") or ""), str(message_part.get("thinking") or ""),
                                str(line["done_reason"]) if line.get("done") and line.get("done_reason") else None)
                if part.content or part.thinking or part.done_reason:
                    yield part

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        think: bool | None = None,
    ) -> str:
        """The answer alone (non-streaming request): a reasoning model's thinking, whether Ollama hands it apart
        or the template leaves a leading ``<think>`` block in the content, is not part of it (the gate scores
        answers). ``think`` as for :meth:`chat_parts`."""
        payload: dict[str, Any] = {"model": model, "messages": _messages(messages), "stream": False,
                                   **await self._think_field(model, think)}
        if options:
            payload["options"] = dict(options)
        if keep_alive is not None:
            payload["keep_alive"] = keep_alive
        resp = ollama.ChatResponse.model_validate(await self._json("POST", "/api/chat", payload, model=model))
        return split_think(resp.message.content or "")[1]

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """One embedding per text, in order (``/api/embed``)."""
        if not texts:
            return []
        body = await self._json("POST", "/api/embed", {"model": model, "input": list(texts)}, model=model)
        resp = ollama.EmbedResponse.model_validate(body)
        vectors = [list(map(float, v)) for v in resp.embeddings or []]
        if len(vectors) != len(texts):
            raise OllamaError(f"Ollama returned {len(vectors)} embeddings for {len(texts)} texts from {model!r}")
        return vectors

    async def render_prompt(self, model: str, messages: Sequence[Mapping[str, Any]]) -> str | None:
        """The exact prompt Ollama would feed ``model`` for this chat (``_debug_render_only``, 0.13.0 and later;
        nothing is generated). None when the daemon ignored the flag (an older one answers the chat instead)."""
        payload = {"model": model, "messages": _messages(messages), "stream": False, "_debug_render_only": True,
                   "options": {"num_predict": 1}}  # bounds the reply of a daemon that does not know the flag
        body = await self._json("POST", "/api/chat", payload, model=model)
        info = body.get("_debug_info")
        rendered = info.get("rendered_template") if isinstance(info, dict) else None
        return rendered if isinstance(rendered, str) else None

    # -- blobs and create --------------------------------------------------------------------------

    async def has_blob(self, digest: str) -> bool:
        """``HEAD /api/blobs/<digest>``: True on 200, False on 404."""
        _check_digest(digest)
        resp = await self._request("HEAD", f"/api/blobs/{digest}")
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise OllamaError(f"Ollama error checking blob {digest}: {resp.text or resp.status_code}", resp.status_code)

    async def push_blob(self, path: Path, digest: str | None = None, on_progress: UploadCallback | None = None
                        ) -> str:
        """Upload a file as a blob (streamed) under its digest; Ollama verifies the digest and so do we."""
        path = Path(path)
        if digest is None:
            digest = await asyncio.to_thread(file_digest, path)
        _check_digest(digest)
        sent = hashlib.sha256()
        size = path.stat().st_size

        async def body() -> AsyncIterator[bytes]:
            f = await asyncio.to_thread(path.open, "rb")
            done = reported = 0
            try:
                while chunk := await asyncio.to_thread(f.read, _CHUNK):
                    sent.update(chunk)
                    yield chunk
                    done += len(chunk)
                    if on_progress is not None and (done - reported >= _PROGRESS_EVERY or done == size):
                        reported = done
                        result = on_progress(done, size)
                        if inspect.isawaitable(result):
                            await result
            finally:
                f.close()

        resp = await self._request("POST", f"/api/blobs/{digest}", content=body())
        status, text = resp.status_code, resp.text
        if status == 400 and "digest mismatch" in text:
            raise DigestMismatch(f"Ollama rejected {path.name}: {_error_text(text)}", status)
        if status not in (200, 201):
            raise OllamaError(f"Ollama error uploading {path.name}: {_error_text(text)}", status)
        if status == 201 and "sha256:" + sent.hexdigest() != digest:
            # The file changed between hashing and sending, yet Ollama accepted it: never trust that blob.
            raise DigestMismatch(f"{path.name} changed while it was uploaded; upload it again", None)
        return digest

    async def ensure_blob(self, path: Path, on_progress: UploadCallback | None = None) -> BlobUpload:
        """Make sure Ollama has this file as a blob: HEAD first, upload only when missing."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        digest = await asyncio.to_thread(file_digest, path)
        size = path.stat().st_size
        if await self.has_blob(digest):
            return BlobUpload(digest, size, uploaded=False)
        await self.push_blob(path, digest, on_progress)
        if not await self.has_blob(digest):
            raise OllamaError(f"Ollama accepted {path.name} but does not list blob {digest}", None)
        return BlobUpload(digest, size, uploaded=True)

    async def create(
        self,
        model: str,
        *,
        from_: str | None = None,
        files: Mapping[str, str] | None = None,
        adapters: Mapping[str, str] | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        quantize: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """``POST /api/create`` (streamed); each progress line goes to ``on_progress``; errors raise.

        Reads wait up to ``create_timeout``: after "converting model" Ollama is silent until it is done, and a
        client that gives up then usually stops the create (the tag never appears)."""
        self._capabilities.pop(model, None)  # a tag created anew may get another template
        request = {"model": model, "from": from_, "files": dict(files) if files else None,
                   "adapters": dict(adapters) if adapters else None, "template": template, "system": system,
                   "parameters": dict(parameters) if parameters else None, "quantize": quantize, "stream": True}
        payload = {k: v for k, v in request.items() if v is not None}
        succeeded = False
        try:
            async with contextlib.aclosing(self._stream_lines("/api/create", payload, self._create_timeout)) as lines:
                async for line in lines:
                    part = ollama.ProgressResponse.model_validate(line)
                    progress = CreateProgress(part.status or "", part.digest, part.total, part.completed)
                    succeeded = progress.status == "success"
                    if on_progress is not None:
                        result = on_progress(progress)
                        if inspect.isawaitable(result):
                            await result
        except OllamaUnavailable as exc:
            if isinstance(exc.__cause__, httpx.ReadTimeout) and self.create_timeout:  # silent past create_timeout
                raise OllamaUnavailable(f"creating {model}: Ollama sent nothing for {self.create_timeout:g} s "
                                        "(converting a large model? raise the create timeout)") from exc.__cause__
            raise
        except OllamaError as exc:
            raise OllamaError(f"creating {model} failed: {exc.message}", exc.status) from exc
        if not succeeded:
            raise OllamaError(f"creating {model} failed: Ollama ended the stream without success", None)

    # -- HTTP ------------------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            # Redirects followed as the official client does; timeouts are given with each request.
            self._client = httpx.AsyncClient(base_url=self.host, timeout=self._timeout, follow_redirects=True)
        return self._client

    async def _request(self, method: str, path: str, *, json: Any = None, content: Any = None) -> httpx.Response:
        """One request, its whole answer read; OllamaUnavailable when the host cannot be reached or stops."""
        try:
            return await self._http().request(method, path, json=json, content=content, timeout=self._timeout)
        except httpx.TransportError as exc:
            raise self._translate(exc) from exc

    async def _json(self, method: str, path: str, payload: Any = None, *, model: str | None = None
                    ) -> dict[str, Any]:
        """The JSON object of a 200 answer; the answer's error otherwise (ModelNotFound when it is about
        ``model``)."""
        resp = await self._request(method, path, json=payload)
        if resp.status_code != 200:
            raise self._refused(resp.status_code, resp.text, model)
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise OllamaError(f"Ollama sent an answer that is not a JSON object: {resp.text[:200]!r}", None)
        return body

    async def _stream_lines(self, path: str, payload: Any, limits: httpx.Timeout, model: str | None = None
                            ) -> AsyncGenerator[dict[str, Any], None]:
        """The JSON lines of a streamed answer as they come. An error before the first line is the answer's
        status; one after is an ``{"error": …}`` line, raised with status None (as the official client does)."""
        try:
            async with self._http().stream("POST", path, json=payload, timeout=limits) as resp:
                if resp.status_code != 200:
                    raise self._refused(resp.status_code, (await resp.aread()).decode(errors="replace"), model)
                async for line in _json_lines(resp.aiter_bytes(), self.max_line):
                    if error := line.get("error"):
                        raise OllamaError(f"Ollama error: {error}", None)
                    yield line
        except httpx.TransportError as exc:
            raise self._translate(exc) from exc


async def _json_lines(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a streamed body, one a line; OllamaError once a line holds more than ``limit`` bytes
    (at most one network read past it is ever held) or is not a JSON object."""
    line = bytearray()
    async for chunk in body:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            line += chunk[start:end]
            start = end + 1
            _check_line(line, limit)
            if line.strip():
                yield _json_object(bytes(line))
            line.clear()
        line += chunk[start:]
        _check_line(line, limit)
    if line.strip():
        yield _json_object(bytes(line))


def _check_line(line: bytearray, limit: int) -> None:
    if len(line) > limit:
        size = f"{limit / (1 << 20):g} MB" if limit >= 1 << 20 else f"{limit} bytes"
        raise OllamaError(f"a line of Ollama's stream exceeded {size}: not an Ollama reply (or a broken one)", None)


def _json_object(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise OllamaError(f"Ollama sent a line that is not a JSON object: {line[:200]!r}", None)
    return value


def _check_digest(digest: str) -> None:
    if not _DIGEST.match(digest):
        raise ValueError(f"not a blob digest (want sha256:<64 hex>): {digest!r}")


def _error_text(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip() or "no details"
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)
