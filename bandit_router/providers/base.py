"""The one interface every upstream adapter implements, and the error handling they share.

A provider takes an OpenAI Chat Completions request body (a dict) and returns an OpenAI
ChatCompletion body, or streams OpenAI ``chat.completion.chunk`` objects (in lists: what arrived
together), reporting the usage it was charged for. Adapters translate other wire formats
(Anthropic Messages) to and from it.

Upstream failures become :class:`UpstreamError` with the status the *router* should answer (see
:func:`http_error`): an upstream's 401 means the router's key is wrong, not the client's, so it is
never passed through as a 401. Every message is scrubbed of the configured api key
(:func:`redact`), whatever the upstream echoes back.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .http import HttpClientError, Response

log = logging.getLogger("bandit_router.providers")

REDACTED = "[redacted]"
#: upstream statuses worth retrying (elsewhere, or later): besides these, every 5xx
RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: the upstream rejected what the client asked for: the client's request is at fault (400)
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})
MAX_ERROR_BODY = 64 * 1024  # bytes of an error body read (scrubbed before it is cut to MAX_DETAIL)
MAX_DETAIL = 500


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class Completion:
    body: dict[str, Any]
    usage: Usage


@dataclass
class StreamResult:
    """Filled in while a stream runs; ``finished`` only once the upstream ended it properly (OpenAI's
    ``data: [DONE]``, Anthropic's ``message_stop``). A stream cut short raises :class:`UpstreamError`.

    The contract with the router: a provider may set ``finished`` at the earliest just before it
    yields the batch that came with the end (so the end goes out in the same write as those last
    chunks), or after its last yield; never earlier. The router appends ``data: [DONE]`` to that
    batch, and the handler knows the last piece by ``line.endswith(DONE)``; the stream counts as
    completed only if the client took that last piece (the handler asked for more after it)."""

    usage: Usage = field(default_factory=Usage)
    finished: bool = False


class Chunks(list[dict[str, Any]]):
    """A batch of streamed chunks (a list) that may carry ``sse``: the same chunks as the bytes the
    client should receive (``data: {...}\n\n`` each), when the provider has them already (the
    upstream's own bytes, passed on unchanged), so they are not serialized again. None: serialize."""

    __slots__ = ("sse",)

    def __init__(self, chunks: list[dict[str, Any]], sse: bytes | None = None) -> None:
        super().__init__(chunks)
        self.sse = sse


class UpstreamError(Exception):
    """An upstream call failed. ``status`` is the HTTP status the router reports (see
    :func:`http_error`); ``upstream_status`` the upstream's own, when it answered one; ``retryable``
    says whether another attempt (later, or with another model) may succeed: 408, 409, 429, 5xx,
    connection errors, timeouts and streams cut short; ``retry_after`` the seconds the upstream's
    Retry-After asked for, if it sent one. The message never contains credentials."""

    def __init__(self, status: int, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.upstream_status = upstream_status


class Provider(Protocol):
    name: str

    async def complete(self, body: dict[str, Any]) -> Completion: ...

    def stream(self, body: dict[str, Any], result: StreamResult) -> AsyncIterator[list[dict[str, Any]]]:
        """The answer's chunks, a list at a time (what one network read brought, or what one
        Anthropic event became: passed on in one write, with one step through each layer, instead
        of one per chunk); a list may be :class:`Chunks` with its SSE bytes ready."""
        ...


# -- shared error handling ----------------------------------------------------------------------
def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each (non-empty) secret replaced by ``[redacted]``."""
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    return text


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (delta-seconds or an HTTP date);
    None when absent or unparseable, never negative."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            v = float(ms) / 1000
            if 0 <= v < float("inf"):
                return v
        except ValueError:
            pass
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return None
    try:
        v = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return v if 0 <= v < float("inf") else None


def http_error(name: str, status: int, detail: str, *, headers: Mapping[str, str] | None = None,
               secret: str | None = None) -> UpstreamError:
    """An upstream's non-200 answer → the router's error (``detail`` is the upstream's message):

    * 400, 413, 422 → 400 with the upstream's message: the client's request was rejected upstream;
    * 429 → 429 (``retry_after`` from the upstream's Retry-After, when sent);
    * 408 → 504: the upstream timed out;
    * 401, 403 → 502 without the upstream's message (it is about the router's credentials, and
      often quotes part of the key); it is logged for the operator instead;
    * 404 and other 4xx → 502 "rejected the router's request" (a wrong model id or base_url):
      the client's key and request are fine;
    * 5xx (and anything else) → 502.
    """
    detail = redact(detail, secret)[:MAX_DETAIL]
    retry_after = parse_retry_after(headers)
    kw: dict[str, Any] = {"retryable": retryable_status(status), "retry_after": retry_after, "upstream_status": status}
    if status in CLIENT_FAULT_STATUSES:
        return UpstreamError(400, f"upstream {name} rejected the request (status {status}): {detail}", **kw)
    if status == 429:
        wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return UpstreamError(429, f"upstream {name} is rate limiting the router (status 429){wait}: {detail}", **kw)
    if status == 408:
        return UpstreamError(504, f"upstream {name} timed out (status 408): {detail}", **kw)
    if 400 <= status < 500:
        log.warning("upstream %s rejected the router's request (status %d): %s", name, status, detail)
        msg = f"upstream {name} rejected the router's request (status {status})"
        if status in (401, 403):
            return UpstreamError(502, msg + "; check the router's credentials for it", **kw)
        return UpstreamError(502, f"{msg}: {detail}", **kw)
    return UpstreamError(502, f"upstream {name} failed (status {status}): {detail}", **kw)


def transport_error(name: str, e: BaseException) -> UpstreamError:
    """A timeout (504) or a connection failure (502), both retryable. Only the exception's type is
    reported: its text may carry request details."""
    if isinstance(e, TimeoutError):
        return UpstreamError(504, f"upstream {name} timed out", retryable=True)
    return UpstreamError(502, f"upstream {name} unreachable: {type(e).__name__}", retryable=True)


def invalid_chunk(name: str, what: str = "stream chunk") -> UpstreamError:
    return UpstreamError(502, f"upstream {name} sent an invalid {what}")


def cut_short(name: str, marker: str) -> UpstreamError:
    return UpstreamError(502, f"upstream {name} ended the stream before {marker} (connection closed early)",
                         retryable=True)


async def error_text(resp: Response) -> str:
    """An error response's body as text (at most :data:`MAX_ERROR_BODY` bytes); scrub it before use."""
    try:
        raw = await resp.read(MAX_ERROR_BODY)
    except HttpClientError:
        raw = b""
    try:
        return raw.decode(resp.charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return raw.decode("utf-8", errors="replace")
