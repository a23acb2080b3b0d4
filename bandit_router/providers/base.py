"""The one interface every upstream adapter implements.

A provider takes an OpenAI Chat Completions request body (a dict) and returns an OpenAI
ChatCompletion body, or streams OpenAI ``chat.completion.chunk`` objects, reporting the usage it
was charged for. Adapters translate other wire formats (Anthropic Messages, later) to and from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


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
    """Filled in while a stream runs; complete once the iterator is exhausted."""

    usage: Usage = field(default_factory=Usage)
    finished: bool = False


class UpstreamError(Exception):
    """An upstream call failed. ``status`` is the HTTP status to report (502 when the upstream was
    unreachable); the message never contains credentials."""

    def __init__(self, status: int, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retryable = retryable


class Provider(Protocol):
    name: str

    async def complete(self, body: dict[str, Any]) -> Completion: ...

    def stream(self, body: dict[str, Any], result: StreamResult) -> AsyncIterator[dict[str, Any]]: ...
