"""Any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, OpenRouter, Gemini's and GLM's
OpenAI-compatible APIs, and the simulator. One shared :class:`~.http.HttpClient` for all of them.
Errors are mapped and scrubbed of the api key by :mod:`.base` (:func:`~.base.http_error`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from .base import (
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

    def _chunk(self, payload: bytes, result: StreamResult, want_usage: bool) -> dict[str, Any] | None:
        """One ``data:`` payload as a chunk to pass on (None: the usage chunk the client did not ask for)."""
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise invalid_chunk(self.name) from None
        if not isinstance(chunk, dict):
            raise invalid_chunk(self.name)
        if chunk.get("error"):
            raise self._stream_error(chunk["error"])
        choices = chunk.get("choices")
        if choices and (type(choices) is not list or not all(
                type(c) is dict and type(c.get("delta") or {}) is dict for c in choices)):
            raise invalid_chunk(self.name)  # what the router reads of a chunk (its text) must be readable
        chunk["model"] = self.name
        if chunk.get("usage"):
            result.usage = _usage(chunk["usage"])
            if not chunk.get("choices") and not want_usage:
                return None
            if not want_usage:
                chunk.pop("usage", None)
        return chunk

    async def stream(self, body: dict[str, Any], result: StreamResult) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield the chunk objects of each network read, as one list; the usage chunk is consumed into
        ``result`` (and passed on only if the client asked for it with ``stream_options.include_usage``).
        ``result.finished`` only after ``data: [DONE]``; a stream closed before it, a chunk that is
        not a JSON object or an error object in the stream raise :class:`UpstreamError` (after the
        chunks before it)."""
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        try:
            async with self.client.post(self._endpoint, self._payload(body, True), self._timeouts,
                                        stream=True) as resp:
                if resp.status != 200:
                    raise await self._error(resp)
                pending = b""
                done = False
                # whatever arrived in one read, split into SSE lines here: one pass per read, not per line
                async for data in resp.iter_any():
                    pending += data
                    lines = pending.split(b"\n")
                    pending = lines.pop()
                    if len(pending) > MAX_LINE_BYTES:
                        raise invalid_chunk(self.name)
                    batch: list[dict[str, Any]] = []
                    for raw in lines:
                        line = raw.strip()
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            break
                        try:
                            chunk = self._chunk(payload, result, want_usage)
                        except UpstreamError:
                            if batch:
                                yield batch  # the good ones first
                            raise
                        if chunk is not None:
                            batch.append(chunk)
                    if batch:
                        yield batch
                    if done:
                        break
                if not done:
                    raise cut_short(self.name, "data: [DONE]")
        except HttpClientError as e:  # (an over-long SSE line is caught above, as an invalid chunk)
            raise transport_error(self.name, e) from None
        result.finished = True
