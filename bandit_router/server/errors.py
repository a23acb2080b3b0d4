"""OpenAI-style error objects: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import orjson
from aiohttp import web
from pydantic import ValidationError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          409: "conflict_error", 410: "expired_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 502: "upstream_error", 503: "unavailable_error", 504: "upstream_timeout_error"}


def error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "api_error"), "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def validation_error(e: ValidationError) -> web.Response:
    parts = []
    first = None
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        first = first or loc
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return error(422, "; ".join(parts), param=first)


def http_error(request: web.Request, e: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no such route, wrong method, body too large) as error objects."""
    msg = {404: f"no route {request.method} {request.path}", 405: f"method {request.method} not allowed",
           413: "request body too large"}.get(e.status, e.reason)
    return error(e.status, msg)
