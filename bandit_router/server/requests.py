"""What a /v1 request says: its body's schemas (pydantic), the JSON reader with its limits, and the
routing hints from the body's ``router`` field and the ``X-Router-*`` headers (headers win)."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ..config import LOCALITY_PATTERN
from ..service import Hints
from .auth import tenant_of

__all__ = ["CATEGORY_PATTERN", "MAX_DEPTH", "MAX_WEIGHT", "ChatMessage", "ChatRequest", "RouteRequest", "RouterHints",
           "apply_headers", "chat_hints", "number_header", "plain_chat", "read_chat", "read_json", "too_deep"]

CATEGORY_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
MAX_WEIGHT = 1e9  # cost and latency weights: beyond any real trade-off, and far from float overflow


class RouterHints(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str | None = Field(None, pattern=CATEGORY_PATTERN)
    cost_weight: float | None = Field(None, ge=0.0, le=MAX_WEIGHT, allow_inf_nan=False)
    max_cost_usd: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    reference: dict[str, Any] | None = None  # for automated graders: e.g. {"answer": "B"} or {"tests": [...]}
    locality: str | None = Field(None, pattern=LOCALITY_PATTERN)  # e.g. "local": only models tagged so
    latency_weight: float | None = Field(None, ge=0.0, le=MAX_WEIGHT, allow_inf_nan=False)  # quality points per second
    max_latency_ms: float | None = Field(None, gt=0.0, allow_inf_nan=False)  # a deadline


_NO_HINTS = RouterHints()  # a request without router hints (read only)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None  # {"include_usage": true}
    router: RouterHints | None = None


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[ChatMessage] = Field(min_length=1)
    category: str | None = Field(None, pattern=CATEGORY_PATTERN)
    cost_weight: float | None = Field(None, ge=0.0, le=MAX_WEIGHT, allow_inf_nan=False)
    locality: str | None = Field(None, pattern=LOCALITY_PATTERN)
    latency_weight: float | None = Field(None, ge=0.0, le=MAX_WEIGHT, allow_inf_nan=False)
    max_latency_ms: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    stream: bool = False  # the caller will stream: time to first token is the latency that counts


MAX_DEPTH = 128  # JSON nesting: far beyond any real request, and below orjson's limit for writing (254)


async def _body(request: web.Request) -> bytes:
    """The request's body. Usually all of it has arrived with the headers: then it is taken as it is,
    without aiohttp's read loop (two awaits and two copies); the size limit holds either way."""
    content = request.content
    if content.is_eof():
        raw = content.read_nowait()
        if request.client_max_size and len(raw) > request.client_max_size:  # (0: no limit, as aiohttp reads it)
            raise web.HTTPRequestEntityTooLarge(max_size=request.client_max_size, actual_size=len(raw))
        return raw
    return await request.read()


async def read_json(request: web.Request) -> Any:
    raw = await _body(request)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise web.HTTPBadRequest(reason=f"invalid JSON: {e}") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(body):  # (counting is cheap; walking is not)
        raise web.HTTPBadRequest(reason=f"invalid JSON: nested more than {MAX_DEPTH} levels deep")
    return body


def too_deep(value: Any) -> bool:
    """Whether containers nest more than MAX_DEPTH levels (a walk level by level, containers only)."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(MAX_DEPTH):
        nested = []
        for v in level:
            for c in v.values() if isinstance(v, dict) else v:
                if isinstance(c, dict | list):
                    nested.append(c)
        if not nested:
            return False
        level = nested
    return True


def number_header(request: web.Request, name: str, *, positive: bool = False,
                   maximum: float | None = None) -> float | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name}: {raw!r} must be a finite number {'> 0' if positive else '>= 0'}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: {raw!r} must be at most {maximum:g}")
    return value


_ROLES = frozenset(get_args(ChatMessage.model_fields["role"].annotation))


def plain_chat(body: dict[str, Any]) -> bool:
    """Whether ``body`` is already what :class:`ChatRequest` makes of it, so no model need be built:
    ``model`` a non-empty string, ``messages`` a non-empty list of objects with a known ``role`` and a
    string or null ``content``, ``stream`` (if given) true or false, ``stream_options`` (if given) an
    object or null, and no ``router`` field.

    A strict subset of what ChatRequest accepts (exact JSON types: nothing to coerce), so the answer
    is the same; every other body, right or wrong, goes to ChatRequest, which coerces it or explains
    what is wrong (``tests/test_requests.py`` holds the two together). Building the models costs more
    than anything else before the decision: about 20 µs of a request at one connection."""
    model = body.get("model")
    messages = body.get("messages")
    if type(model) is not str or not model or type(messages) is not list or not messages:
        return False
    for m in messages:
        if type(m) is not dict:
            return False
        role = m.get("role")
        content = m.get("content")
        if type(role) is not str or role not in _ROLES or (content is not None and type(content) is not str):
            return False
    options = body.get("stream_options")
    return (type(body.get("stream", False)) is bool and (options is None or type(options) is dict)
            and body.get("router") is None)


def read_chat(request: web.Request, body: dict[str, Any]) -> tuple[str, Hints]:
    """A chat request's ``model`` and hints, validated as :class:`ChatRequest` (raises pydantic's
    ``ValidationError``, or ``ValueError`` for a bad hint header)."""
    if plain_chat(body):
        return body["model"], chat_hints(request, body, None, body.get("stream", False))
    req = ChatRequest.model_validate(body)
    return req.model, chat_hints(request, body, req.router, req.stream)


def chat_hints(request: web.Request, body: dict[str, Any], router: RouterHints | None, stream: bool) -> Hints:
    """A chat request's hints: its ``router`` field, its output cap and stream flag, then the headers."""
    b = router or _NO_HINTS
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    h = Hints(category=b.category, cost_weight=b.cost_weight, max_cost_usd=b.max_cost_usd,
              max_output_tokens=asked if isinstance(asked, int) else None, reference=b.reference,
              locality=b.locality, tenant=tenant_of(request), latency_weight=b.latency_weight,
              max_latency_s=None if b.max_latency_ms is None else b.max_latency_ms / 1000.0, stream=stream)
    return apply_headers(request, h)


# text headers validate as RouterHints fields; number headers: header -> (Hints attribute,
# number_header's limits, divisor to the attribute's unit)
_TEXT_HEADERS = {"X-Router-Locality": "locality", "X-Router-Category": "category"}
_NUMBER_HEADERS: dict[str, tuple[str, dict[str, Any], float]] = {
    "X-Router-Cost-Weight": ("cost_weight", {"maximum": MAX_WEIGHT}, 1.0),
    "X-Router-Max-Cost-Usd": ("max_cost_usd", {"positive": True}, 1.0),
    "X-Router-Latency-Weight": ("latency_weight", {"maximum": MAX_WEIGHT}, 1.0),
    "X-Router-Max-Latency-Ms": ("max_latency_s", {"positive": True}, 1000.0),
}


def apply_headers(request: web.Request, h: Hints) -> Hints:
    """The X-Router-* hint headers, over what the body says (both endpoints read the same headers)."""
    for name, attr in _TEXT_HEADERS.items():
        if (raw := request.headers.get(name)) is not None:
            RouterHints(**{attr: raw})  # validates
            setattr(h, attr, raw)
    for name, (attr, limits, divisor) in _NUMBER_HEADERS.items():
        if (value := number_header(request, name, **limits)) is not None:
            setattr(h, attr, value / divisor)
    return h
