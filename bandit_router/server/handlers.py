"""/v1 handlers: route-and-complete, route only, feedback, models."""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from feedback import SignalError, parse_feedback

from ..cache import replay_chunks
from ..calls import DONE
from ..fallback import Attempt
from ..locality import LocalityError
from ..policy import NoEligibleModel
from ..providers import UpstreamError
from ..router import Decision, TooManyCategories
from ..service import ExpiredEvent, Hints, Service, UnknownEvent
from ..storage.base import StoreOverloaded
from .auth import tenant_of
from .errors import error, validation_error
from .keys import SERVICE
from .requests import ChatMessage, RouteRequest, apply_headers, read_chat, read_json

log = logging.getLogger("bandit_router")

CACHE_BYPASS = ("bypass", "no-cache", "refresh")  # X-Router-Cache values that skip the lookup


def _fell_back(d: Decision, failed: list[Attempt] | None) -> bool:
    return bool(failed) and any(a.model != d.model for a in failed)  # type: ignore[union-attr]


def _headers(d: Decision, failed: list[Attempt] | None = None, hints: Hints | None = None) -> dict[str, str]:
    out = {"X-Router-Event-Id": d.event_id or "", "X-Router-Model": d.model, "X-Router-Category": d.category}
    if hints is not None and hints.locality is not None:
        out["X-Router-Locality"] = hints.locality
    if d.deadline_met is not None:  # a deadline was asked: did any eligible model meet it?
        out["X-Router-Deadline"] = "met" if d.deadline_met else "missed"
    if _fell_back(d, failed):  # the models that failed this request before d.model answered, in order
        out["X-Router-Fallback"] = ",".join(dict.fromkeys(a.model for a in failed if a.model != d.model))
    return out


def _messages(msgs: list[ChatMessage]) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in msgs]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    try:
        body = await read_json(request)
    except web.HTTPBadRequest as e:
        return error(400, e.reason)
    if not isinstance(body, dict):
        return error(400, "the body must be a JSON object (an OpenAI Chat Completions request)")
    try:
        model, hints = read_chat(request, body)
    except ValidationError as e:
        return validation_error(e)
    except ValueError as e:
        return error(422, str(e))
    if model != "auto" and model not in service.router.index:
        return error(404, f"model: {model!r} is not configured; use 'auto' or one of "
                     f"{', '.join(service.router.models)}", param="model", code="model_not_found")
    if model != "auto" and not service.router.enabled[service.router.index[model]]:
        return error(409, f"model: {model!r} is disabled (deprecated) on this router; use 'auto'",
                     param="model", code="model_disabled")
    messages = body["messages"]  # validated above; forwarded as the client sent them
    try:
        detected = service.restrict(body, hints)  # the whole request: tool calls and tools too
        d = service.decide(messages, hints, model=None if model == "auto" else model, record=False)
    except NoEligibleModel as e:
        return error(503, str(e), code="no_eligible_model")
    except TooManyCategories as e:
        return error(422, str(e), param="router.category", code="too_many_categories")
    except LocalityError as e:
        return error(e.status, str(e), param="router.locality", code=e.code)
    try:
        return await _answer(request, service, d, body, hints, detected)
    except BaseException:
        service.abandon(d)  # an error of ours (or the client left) before the call ended: not left in flight
        raise


async def _answer(request: web.Request, service: Service, d: Decision, body: dict[str, Any], hints: Hints,
                  detected: list[str]) -> web.StreamResponse:
    """A decided request: from the cache, or streamed, or completed upstream."""
    key = service.cache_key(d, body, hints.tenant)
    cache = None  # what the cache did: "hit", "miss" or "bypass" (None: the request is not cacheable)
    if key is not None:
        cache = "bypass" if request.headers.get("X-Router-Cache", "").lower() in CACHE_BYPASS else "miss"
        if cache == "bypass" and service.cache is not None:
            service.cache.bypasses += 1
    if hints.stream:
        if key is not None and cache == "miss":
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks: list[dict[str, Any]] = []

            def replayable(e: Any) -> bool:
                chunks.extend(replay_chunks(orjson.loads(e.body), include_usage=usage) or ())
                return bool(chunks)
            if service.cache_lookup(d, key, accept=replayable) is not None:
                return await _replay(request, d, hints, chunks)
        return await _stream(request, service, d, body, hints, key, cache)
    if key is not None and cache == "miss" and (hit := service.cache_lookup(d, key)) is not None:
        out = orjson.loads(hit.body)
        out["router"] = {"event_id": d.event_id, "category": d.category, "model": d.model, "cost_usd": 0.0,
                         "cache": "hit"}
        return web.Response(body=orjson.dumps(out), content_type="application/json",
                            headers={**_headers(d, None, hints), "X-Router-Cache": "hit"})
    failed: list[Attempt] = []
    try:
        done, cost = await service.complete(d, body, hints.reference, failed=failed)
    except UpstreamError as e:
        return _upstream_error(e, failed)
    out = done.body
    if key is not None:
        service.cache_store(key, d, orjson.dumps(out), hints.tenant)
    out["router"] = {"event_id": d.event_id, "category": d.category, "model": d.model, "cost_usd": cost}
    if failed:  # retries on the model that answered, or a fallback from others
        out["router"]["retries" if not _fell_back(d, failed) else "fallback"] = _fallback(failed)
    headers = _headers(d, failed, hints)
    if cache is not None:
        out["router"]["cache"] = headers["X-Router-Cache"] = cache
    if hints.locality is not None:
        out["router"]["locality"] = {"required": hints.locality, "detected": detected}
    if (lat := _latency(d, hints)) is not None:
        out["router"]["latency"] = lat
    if (budget := service.budget(hints.tenant)) is not None:
        out["router"]["budget"] = {k: budget[k] for k in ("tenant", "usd_per_day", "spent_today_usd", "exhausted")}
        out["router"]["cost_weight"] = d.cost_weight
    return web.Response(body=orjson.dumps(out), content_type="application/json", headers=headers)


def _latency(d: Decision, hints: Hints) -> dict[str, Any] | None:
    """What the latency hints did: the chosen model's expected latency and whether the deadline held
    (``deadline_met`` false: no eligible model was expected to meet it, so the fastest was used)."""
    if hints.latency_weight is None and hints.max_latency_s is None:
        return None
    out: dict[str, Any] = {"expected_ms": None if d.latency_s is None else round(d.latency_s * 1000, 1),
                           "metric": "ttft" if hints.stream else "total"}
    if hints.max_latency_s is not None:
        out["max_latency_ms"] = hints.max_latency_s * 1000
        out["deadline_met"] = d.deadline_met
    return out


def _fallback(failed: list[Attempt]) -> dict[str, Any]:
    return {"from": [a.model for a in failed], "errors": [{"model": a.model, "status": a.status, "message": a.error}
                                                          for a in failed]}


def _upstream_error(e: UpstreamError, failed: list[Attempt]) -> web.Response:
    tried = sorted({a.model for a in failed})
    msg = e.message + (f" (tried: {', '.join(tried)})" if len(tried) > 1 else "")
    resp = error(e.status, msg, code="upstream_error")
    if e.status == 429 and e.retry_after is not None:
        resp.headers["Retry-After"] = str(math.ceil(e.retry_after))
    return resp


def _sse_error(message: str, type_: str, code: str) -> bytes:
    return b"data: " + orjson.dumps({"error": {"message": message, "type": type_, "param": None,
                                               "code": code}}) + b"\n\n"


async def _replay(request: web.Request, d: Decision, hints: Hints, chunks: list[dict[str, Any]]) -> web.StreamResponse:
    """A cache hit for a streamed request: the stored answer as chunks, then [DONE]."""
    resp = web.StreamResponse(headers={**_headers(d, None, hints), "X-Router-Cache": "hit",
                                       "Cache-Control": "no-cache", "Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write_eof(b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + DONE)
    return resp


async def _stream(request: web.Request, service: Service, d: Decision, body: dict[str, Any],
                  hints: Hints, key: str | None = None, cache: str | None = None) -> web.StreamResponse:
    """SSE out. Headers go with the first chunk, so they name the model that answered (after any
    fallback); a failure after that ends the stream with an OpenAI error event, then [DONE]. With a
    cache ``key``, a stream that ended properly with plain text is stored as its ChatCompletion."""
    failed: list[Attempt] = []
    answer: dict[str, Any] | None = {} if key is not None else None
    lines = service.stream(d, body, hints.reference, failed=failed, answer=answer)
    resp: web.StreamResponse | None = None
    try:
        try:
            async for line in lines:
                if resp is None:
                    headers = {**_headers(d, failed, hints), "Cache-Control": "no-cache",
                               "Content-Type": "text/event-stream"}
                    if cache is not None:
                        headers["X-Router-Cache"] = cache
                    resp = web.StreamResponse(headers=headers)
                    await resp.prepare(request)
                if line.endswith(DONE):  # the last piece: with the end of the body, in one write
                    await resp.write_eof(line)
                else:
                    await resp.write(line)
        except UpstreamError as e:
            if resp is None:
                return _upstream_error(e, failed)
            await resp.write_eof(_sse_error(e.message, "upstream_error", "upstream_error") + DONE)
        except ConnectionResetError:
            raise  # the client left: handled below, not an error of ours
        except Exception:
            if resp is None:
                raise
            log.exception("error mid-stream on %s", d.event_id)
            await resp.write_eof(_sse_error("internal error (logged)", "api_error", "internal_error") + DONE)
        assert resp is not None
        await resp.write_eof()
        if key is not None and answer and "completion" in answer:
            service.cache_store(key, d, orjson.dumps(answer["completion"]), hints.tenant)
    except ConnectionResetError:
        pass  # the client went away mid-stream: nobody to answer, and not a server error
    finally:
        await lines.aclose()  # the stream's bookkeeping runs now, not whenever the generator is collected
    return resp if resp is not None else web.Response(status=499)


async def route(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        body = await read_json(request)
    except web.HTTPBadRequest as e:
        return error(400, e.reason)
    try:
        req = RouteRequest.model_validate(body)
        hints = apply_headers(request, Hints(
            category=req.category, cost_weight=req.cost_weight, locality=req.locality, tenant=tenant_of(request),
            latency_weight=req.latency_weight, stream=req.stream,
            max_latency_s=None if req.max_latency_ms is None else req.max_latency_ms / 1000.0))
    except ValidationError as e:
        return validation_error(e)
    except ValueError as e:
        return error(422, str(e))
    messages = _messages(req.messages)
    try:
        service.restrict(messages, hints)
        d = service.decide(messages, hints)
    except NoEligibleModel as e:
        return error(503, str(e), code="no_eligible_model")
    except TooManyCategories as e:
        return error(422, str(e), param="category", code="too_many_categories")
    except LocalityError as e:
        return error(e.status, str(e), param="locality", code=e.code)
    except StoreOverloaded:
        return error(503, "the router's storage queue is full; retry shortly", code="overloaded")
    out = {"event_id": d.event_id, "model": d.model, "category": d.category,
           "expected_cost_usd": d.expected_cost, "candidates": service.candidates(d)}
    if hints.locality is not None:
        out["locality"] = hints.locality
    if (lat := _latency(d, hints)) is not None:
        out["latency"] = lat
    return web.Response(body=orjson.dumps(out), content_type="application/json", headers=_headers(d, None, hints))


async def feedback(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        body = await read_json(request)
    except web.HTTPBadRequest as e:
        return error(400, e.reason)
    if not isinstance(body, dict):
        return error(422, "the body must be a JSON object with event_id and one of score, rating, grader")
    event_id = body.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 100:
        return error(422, "event_id: required, a string as returned in X-Router-Event-Id", param="event_id")
    try:
        signal = parse_feedback(body)
    except SignalError as e:
        return error(422, str(e), param=e.field)
    try:
        out = await service.feedback(event_id, signal, body)
    except UnknownEvent as e:
        return error(404, str(e), param="event_id", code="unknown_event")
    except ExpiredEvent as e:
        return error(410, str(e), param="event_id", code="expired_event")
    except StoreOverloaded:
        return error(503, "the router's storage queue is full; the feedback was not recorded, retry shortly",
                     code="overloaded")
    return web.Response(body=orjson.dumps(out), content_type="application/json")


async def models(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    data = [{"id": "auto", "object": "model", "created": 0, "owned_by": "bandit-router"}]
    data += [{"id": m, "object": "model", "created": 0, "owned_by": "bandit-router"} for m in service.router.models]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")
