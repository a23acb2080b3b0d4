"""Any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, OpenRouter, Gemini's and GLM's
OpenAI-compatible APIs, and the simulator. One shared :class:`~.http.HttpClient` for all of them.
Errors are mapped and scrubbed of the api key by :mod:`.base` (:func:`~.base.http_error`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from .base import (
    Chunks,
    Completion,
    StreamResult,
    UpstreamError,
    Usage,
    cut_short,
    error_text,
    http_error,
    invalid_chunk,
    transport_error,
)
from .http import Endpoint, HttpClient, HttpClientError, Response, Timeouts

MAX_LINE_BYTES = 4 * 1024 * 1024  # an SSE line longer than this is not a chunk


def _payloads(lines: bytes) -> list[bytes]:
    """The payloads of the ``data:`` lines among complete SSE lines (other fields and comments are
    skipped), blanks around them stripped."""
    out = []
    for raw in lines.split(b"\n"):
        line = raw.strip()
        if line.startswith(b"data:"):
            out.append(line[5:].strip())
    return out


def _sse(chunks: list[dict[str, Any]], raw: list[bytes]) -> Chunks:
    return Chunks(chunks, b"data: " + b"\n\ndata: ".join(raw) + b"\n\n" if raw else b"")


class _BadChunk(Exception):
    """A bad chunk in a read: ``error`` to raise once ``good`` (the chunks before it) are passed on."""

    def __init__(self, good: Chunks, error: UpstreamError) -> None:
        self.good, self.error = good, error


def _usage(u: dict[str, Any] | None) -> Usage:
    if not u:
        return Usage()
    details = u.get("prompt_tokens_details") or {}
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0),
                 int(details.get("cached_tokens") or 0))


class OpenAICompatProvider:
    """Adapter for ``POST {base_url}/chat/completions``.

    ``name`` is the model as the router knows it; ``upstream_model`` the id sent upstream. Responses
    are relabelled with ``name`` so the client sees the model that answered."""

    def __init__(self, client: HttpClient, *, name: str, base_url: str, upstream_model: str | None,
                 api_key: str | None, timeout_s: float = 120.0, connect_timeout_s: float = 10.0,
                 first_byte_timeout_s: float | None = None) -> None:
        self.client = client
        self.name = name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.upstream_model = upstream_model or name
        self._api_key = api_key or ""
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._endpoint = Endpoint.of(self.url, headers)
        # read: the wait for the response headers (first byte), and then between stream chunks
        self._timeouts = Timeouts(total=timeout_s, connect=connect_timeout_s, read=first_byte_timeout_s)

    def _payload(self, body: dict[str, Any], stream: bool) -> bytes:
        out = dict(body)
        out["model"] = self.upstream_model
        out.pop("router", None)
        if stream:
            out["stream"] = True
            out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            out.pop("stream", None)
            out.pop("stream_options", None)
        return orjson.dumps(out)

    async def _error(self, resp: Response) -> UpstreamError:
        text = await error_text(resp)
        try:
            msg = str(orjson.loads(text)["error"]["message"])
        except Exception:  # noqa: BLE001 - any non-OpenAI error body
            msg = text or resp.reason or "no body"
        return http_error(self.name, resp.status, msg, headers=resp.headers, secret=self._api_key)

    def _stream_error(self, err: Any) -> UpstreamError:
        """An ``{"error": ...}`` object sent mid-stream (vLLM, OpenRouter, LiteLLM do) → UpstreamError."""
        err = err if isinstance(err, dict) else {"message": err}
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 500
        return http_error(self.name, status, f"{err.get('message') or 'stream error'} (mid-stream)",
                          secret=self._api_key)

    async def complete(self, body: dict[str, Any]) -> Completion:
        try:
            async with self.client.post(self._endpoint, self._payload(body, False), self._timeouts) as resp:
                if resp.status != 200:
                    raise await self._error(resp)
                data = orjson.loads(await resp.read())
        except HttpClientError as e:
            raise transport_error(self.name, e) from None
        except orjson.JSONDecodeError:
            raise invalid_chunk(self.name, "JSON body") from None
        if not isinstance(data, dict):
            raise invalid_chunk(self.name, "JSON body")
        data["model"] = self.name
        return Completion(data, _usage(data.get("usage")))

    def _check(self, chunk: Any, result: StreamResult, want_usage: bool) -> tuple[dict[str, Any] | None, bool]:
        """A parsed chunk checked and relabelled: (the chunk to pass on or None, whether it changed)."""
        if type(chunk) is not dict:
            raise invalid_chunk(self.name)
        if chunk.get("error"):
            raise self._stream_error(chunk["error"])
        choices = chunk.get("choices")
        if choices:  # what the router reads of a chunk (its text) must be readable
            if type(choices) is not list:
                raise invalid_chunk(self.name)
            for c in choices:
                if type(c) is not dict:
                    raise invalid_chunk(self.name)
                delta = c.get("delta")
                if delta:
                    if type(delta) is not dict:
                        raise invalid_chunk(self.name)
                    content = delta.get("content")
                    if content is not None and type(content) is not str:
                        raise invalid_chunk(self.name)
        changed = chunk.get("model") != self.name
        if changed:
            chunk["model"] = self.name
        if chunk.get("usage"):
            result.usage = _usage(chunk["usage"])
            if not want_usage:
                if not choices:
                    return None, True
                del chunk["usage"]
                changed = True
        return chunk, changed

    def _batch(self, payloads: list[bytes], result: StreamResult, want_usage: bool) -> Chunks:
        """The ``data:`` payloads of one read as chunks, with their SSE bytes: each passed on as the
        upstream sent it unless it had to change (relabelled, usage removed), so most are never
        serialized again. A bad chunk raises :class:`_BadChunk` carrying the good ones before it."""
        chunks: list[dict[str, Any]] = []
        raw: list[bytes] = []
        for p in payloads:
            try:
                try:
                    chunk = orjson.loads(p)
                except orjson.JSONDecodeError:
                    raise invalid_chunk(self.name) from None
                out, changed = self._check(chunk, result, want_usage)
            except UpstreamError as e:
                raise _BadChunk(_sse(chunks, raw), e) from None
            if out is not None:
                chunks.append(out)
                raw.append(orjson.dumps(out) if changed else p)
        return _sse(chunks, raw)

    async def stream(self, body: dict[str, Any], result: StreamResult) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield the chunks of each network read, as one :class:`Chunks` with its SSE bytes; the usage
        chunk is consumed into ``result`` (and passed on only if the client asked for it with
        ``stream_options.include_usage``). ``result.finished`` only after ``data: [DONE]`` (set as the
        chunks that came with it are yielded); a stream
        closed before it, a chunk that is not a JSON object or an error object in the stream raise
        :class:`UpstreamError` (after the chunks before it)."""
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        try:
            async with self.client.post(self._endpoint, self._payload(body, True), self._timeouts,
                                        stream=True) as resp:
                if resp.status != 200:
                    raise await self._error(resp)
                pending = b""
                done = False
                # whatever arrived in one read: its complete lines in one pass, its chunks in one batch
                async for data in resp.iter_any():
                    pending += data
                    cut = pending.rfind(b"\n") + 1
                    if not cut:
                        if len(pending) > MAX_LINE_BYTES:
                            raise invalid_chunk(self.name)
                        continue
                    payloads = _payloads(pending[:cut])
                    pending = pending[cut:]
                    if len(pending) > MAX_LINE_BYTES:
                        raise invalid_chunk(self.name)
                    if b"[DONE]" in payloads:
                        payloads = payloads[:payloads.index(b"[DONE]")]
                        done = True
                    if payloads:
                        try:
                            batch = self._batch(payloads, result, want_usage)
                        except _BadChunk as bad:
                            if bad.good:
                                yield bad.good  # the good ones first
                            raise bad.error from None
                        if batch:
                            result.finished = done  # already with the last chunks: the end can go with them
                            yield batch
                    if done:
                        break
                if not done:
                    raise cut_short(self.name, "data: [DONE]")
        except HttpClientError as e:  # (an over-long SSE line is caught above, as an invalid chunk)
            raise transport_error(self.name, e) from None
        result.finished = True
