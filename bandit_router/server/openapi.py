"""The OpenAPI 3.1 description of the router's HTTP API, served at ``GET /openapi.json``.

    app = make_app(config)
    add_openapi(app)          # before the app starts: the router is frozen once it runs

Request bodies come from the handlers' pydantic models (``model_json_schema()``, with ``$defs`` moved
to ``components/schemas``); responses are hand-written to match what the handlers send, and every
documented error status carries the OpenAI-style error object of :mod:`.errors`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from .. import __version__
from ..config import LOCALITY_PATTERN, RouterConfig
from .keys import CONFIG
from .requests import CATEGORY_PATTERN, ChatRequest, RouteRequest

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"

_STATUS_TEXT = {
    400: "Invalid JSON (the message names the parse problem), or not a JSON object.",
    401: "Missing or wrong bearer token.",
    403: "Not allowed (e.g. no admin token is configured on this router).",
    404: "Not found (the message names what).",
    409: "The model named is disabled on this router.",
    410: "The decision is past the feedback window.",
    413: "The request body is larger than server.max_body_bytes.",
    422: "The body or a header fails validation (the message and param name the field).",
    502: "The upstream failed or was unreachable (after retries and fallbacks).",
    503: "No eligible model, or the storage queue is full; retry shortly.",
    504: "The upstream timed out.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _errors(*statuses: int | str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in statuses:
        text = _STATUS_TEXT[s] if isinstance(s, int) else "A client error from the upstream, passed through."
        out[str(s)] = _json(_ref("Error"), text)
    return out


def _pydantic(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """``model``'s JSON schema into ``components`` (nested models as their own entries); returns its $ref."""
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components[model.__name__] = schema
    return _ref(model.__name__)


_NUM = {"type": "number"}
_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_DECISION_HEADERS = {
    "X-Router-Event-Id": {"description": "The decision's id, for POST /v1/feedback.", "schema": _STR},
    "X-Router-Model": {"description": "The model chosen.", "schema": _STR},
    "X-Router-Category": {"description": "The category the request was routed in.", "schema": _STR},
    "X-Router-Locality": {"description": "Present when the request was restricted to models with this locality "
                                         "(asked for, or personal data was detected).", "schema": _STR},
}
_CHAT_HEADERS = {
    **_DECISION_HEADERS,
    "X-Router-Cache": {"description": "For cacheable (deterministic) requests: hit (answered from the cache at $0, "
                                      "no upstream call), miss or bypass.",
                       "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]}},
    "X-Router-Fallback": {"description": "The models that failed before the one that answered, in order.",
                          "schema": _STR},
    "X-Router-Deadline": {"description": "With a deadline (X-Router-Max-Latency-Ms): met, or missed when no eligible "
                                         "model was expected to meet it and the fastest was used.",
                          "schema": {"type": "string", "enum": ["met", "missed"]}},
}


def _obj(props: dict[str, Any], required: list[str] | None = None, *, extra: bool = True) -> dict[str, Any]:
    """An object with ``props`` (all required unless ``required`` says otherwise). Responses allow more
    fields than they name (new ones may be added; clients ignore unknown ones); requests say ``extra``."""
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": extra}


def _response_schemas() -> dict[str, Any]:
    nullable_num = {"type": ["number", "null"]}
    error = _obj({
        "error": _obj({
            "message": {"type": "string", "minLength": 1, "description": "names the problem (and the field)"},
            "type": {"type": "string", "examples": ["invalid_request_error", "not_found_error"]},
            "param": {"type": ["string", "null"], "description": "the offending field, if any"},
            "code": {"type": ["string", "null"], "description": "a machine-readable code, if any"},
        }, ["message", "type"]),
    })
    router_info = _obj({"event_id": _STR, "category": _STR, "model": _STR, "cost_usd": _NUM,
                        "cache": {"type": "string", "enum": ["hit", "miss", "bypass"]},
                        "locality": _obj({"required": _STR, "detected": {"type": "array", "items": _STR}}),
                        "cost_weight": {**_NUM, "description": "the effective cost weight, when a budget paces it"},
                        "budget": _obj({"tenant": _STR, "usd_per_day": _NUM, "spent_today_usd": _NUM,
                                        "exhausted": _BOOL}),
                        "latency": _obj({"expected_ms": nullable_num, "metric": {"enum": ["ttft", "total"]},
                                         "max_latency_ms": _NUM, "deadline_met": _BOOL},
                                        ["expected_ms", "metric"])},
                       ["event_id", "category", "model", "cost_usd"])
    completion = _obj({"choices": {"type": "array"}, "router": _ref("RouterInfo")}, ["router"])
    completion["description"] = "The upstream's chat.completion, with the router's decision under `router`."
    event = {"type": "object", "required": ["data"], "additionalProperties": True,
             "description": "One Server-Sent Event (the OpenAPI 3.2 reading of an event-stream schema).",
             "properties": {"event": _STR, "id": _STR, "retry": _INT,
                            "data": {"type": "string", "description": "a chat.completion.chunk as JSON, an error "
                                     "object if the upstream fails mid-stream, or [DONE] last"}}}
    candidate = _obj({"model": _STR, "expected_cost_usd": _NUM, "score": nullable_num, "eligible": _BOOL})
    route = _obj({"event_id": _STR, "model": _STR, "category": _STR, "expected_cost_usd": _NUM,
                  "candidates": {"type": "array", "items": _ref("Candidate")}})
    feedback = _obj({"event_id": _STR, "source": _STR, "quality": {"type": "number", "minimum": 0, "maximum": 1},
                     "decision_quality": {"type": "number", "minimum": 0, "maximum": 1},
                     "model": _STR, "category": _STR, "learned": _BOOL})
    model = _obj({"id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR})
    models = _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}})
    arm = _obj({
        "decisions": _INT, "feedback": _INT,
        "feedback_by_source": {"type": "object", "additionalProperties": _INT},
        "observations": _INT, "quality_mean": _NUM, "quality_sd": _NUM, "mean_cost_usd": nullable_num,
        "traffic_share": {"type": "number", "minimum": 0, "maximum": 1}, "enabled": _BOOL, "serves": _BOOL,
        "prior": _obj({"quality": _NUM, "strength": _NUM}), "output_tokens": _NUM,
        "latency": _obj({"ttft_s": _NUM, "total_s": _NUM, "quantile": _NUM, "observations": _INT}),
    })
    arms = _obj({
        "categories": {"type": "object", "description": "category -> model -> statistics",
                       "additionalProperties": {"type": "object", "additionalProperties": _ref("ArmStats")}},
        "graders": {"type": "object", "description": "grader -> outcome counts",
                    "additionalProperties": {"type": "object", "additionalProperties": _INT}},
    })
    timeline = _obj({
        "now": _NUM, "start": {**_NUM, "description": "unix seconds: the first bucket's start"},
        "bucket_s": _INT, "buckets": _INT, "models": {"type": "array", "items": _STR},
        "categories": {"type": "object", "description": "category -> model -> decisions per bucket, oldest "
                       "first (models with none in the window left out)",
                       "additionalProperties": {"type": "object", "additionalProperties": {
                           "type": "array", "items": {"type": "integer", "minimum": 0}}}},
        "events": {"type": "array", "description": "breaker changes and detected quality drift, newest first",
                   "items": _obj({"t": _NUM, "kind": {"type": "string", "enum": ["breaker", "drift"]},
                                  "model": _STR, "category": {"type": ["string", "null"]}, "message": _STR})},
    })
    enabled = _obj({"model": _STR, "enabled": _BOOL})
    health = _obj({"status": {"type": "string", "examples": ["ok"]}, "models": _INT, "queue_depth": _INT})
    return {"Error": error, "RouterInfo": router_info, "ChatCompletion": completion,
            "ChatCompletionEvent": event, "Candidate": candidate,
            "RouteResponse": route, "FeedbackResponse": feedback, "Model": model, "ModelList": models,
            "ArmStats": arm, "ArmsResponse": arms, "ModelEnabled": enabled, "Health": health,
            "Timeline": timeline}


def _feedback_request() -> dict[str, Any]:
    """POST /v1/feedback (parsed by :func:`feedback.parse_feedback`, which has no pydantic model)."""
    number = {"type": "number"}
    thumbs = {"oneOf": [{"type": "string", "enum": ["up", "down", "thumbs_up", "thumbs_down",
                                                      "\N{THUMBS UP SIGN}", "\N{THUMBS DOWN SIGN}"]},
                        {"type": "boolean"}]}
    rating = {"oneOf": [
        thumbs,
        _obj({"thumbs": thumbs}, extra=False),
        _obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5}}, extra=False),
        _obj({"ten": {**number, "minimum": 0, "maximum": 10}}, extra=False),
        _obj({"scale": {"const": 10}, "value": {**number, "minimum": 0, "maximum": 10}}, extra=False),
    ], "description": "thumbs ('up'/'down'/bool), or one of {thumbs}, {stars: 1..5}, {ten: 0..10}, "
                      "{scale: 10, value: 0..10}"}
    name = {"type": "string", "minLength": 1, "maxLength": 93, "pattern": r"\S"}
    grader = {"oneOf": [
        _obj({"name": name, "passed": _BOOL}, extra=False),
        _obj({"name": name, "score": {**number, "minimum": 0}, "max": {**number, "exclusiveMinimum": 0}},
             extra=False),
    ], "description": "{name, passed} or {name, score, max} with 0 <= score <= max"}
    props = {
        "event_id": {"type": "string", "minLength": 1, "maxLength": 100,
                     "description": "as returned in X-Router-Event-Id"},
        "score": {**number, "minimum": 0, "maximum": 1},
        "rating": rating,
        "grader": grader,
        "source": {"type": ["string", "null"], "minLength": 1, "maxLength": 100, "pattern": r"\S",
                   "description": "default 'user' (or 'grader:<name>'); one signal per source and decision"},
    }
    return {"type": "object", "properties": props, "additionalProperties": False,
            "required": ["event_id"],
            "oneOf": [{"required": ["score"]}, {"required": ["rating"]}, {"required": ["grader"]}],
            "description": "exactly one of score, rating, grader"}


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def openapi_document(config: RouterConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every route :func:`make_app` (and :func:`add_openapi`) registers."""
    names = [m.name for m in config.models]
    schemas: dict[str, Any] = {}
    chat_ref = _pydantic(ChatRequest, schemas)
    route_ref = _pydantic(RouteRequest, schemas)
    schemas["ChatRequest"]["properties"]["model"] = {
        "type": "string", "enum": ["auto", *names],
        "description": "'auto' lets the router choose; a configured model's name passes through (logged, not "
                       "learned). GET /v1/models lists them."}
    schemas["FeedbackRequest"] = _feedback_request()
    schemas.update(_response_schemas())

    open_v1 = [{}, {"clientKey": []}]  # client keys are optional: with none configured /v1/* is open
    admin = [{"adminToken": []}]
    public: list[dict[str, list[str]]] = []
    messages = [{"role": "user", "content": "Write a Python function that reverses a linked list."}]
    hint_headers = [
        _header("X-Router-Category", {"type": "string", "pattern": CATEGORY_PATTERN},
                "route in this category instead of the classified one"),
        _header("X-Router-Cost-Weight", {"type": "number", "minimum": 0, "maximum": 1e9},
                "quality points per dollar for this request"),
        _header("X-Router-Max-Cost-Usd", {"type": "number", "exclusiveMinimum": 0},
                "exclude models expected to cost more than this"),
        _header("X-Router-Latency-Weight", {"type": "number", "minimum": 0, "maximum": 1e9},
                "quality points per second of expected latency (p90; time to first token when streaming)"),
        _header("X-Router-Max-Latency-Ms", {"type": "number", "exclusiveMinimum": 0},
                "a deadline: models expected (p90) to take longer are not eligible; if none meets it, the "
                "fastest is used and X-Router-Deadline says missed"),
        _header("X-Router-Locality", {"type": "string", "pattern": LOCALITY_PATTERN},
                "only models with this locality tag (e.g. local) may receive the request; fails closed"),
        _header("X-Router-Tenant", {"type": "string", "pattern": r"^[A-Za-z0-9_.\-]{1,64}$"},
                "the tenant the cache is scoped by, when no client keys are configured (with keys, the key's "
                "tenant is used and this header is ignored)"),
        _header("X-Router-Cache", {"type": "string", "enum": ["bypass", "no-cache", "refresh"]},
                "do not answer from the response cache (the fresh answer still refreshes it)"),
    ]
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                  "description": "a configured model's name", "example": names[0]}

    def body(ref: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref, "example": example}}}

    paths: dict[str, Any] = {
        "/v1/chat/completions": {"post": {
            "operationId": "chatCompletions", "tags": ["v1"], "security": open_v1,
            "summary": "Route a Chat Completions request and complete it upstream (OpenAI-compatible).",
            "description": "Streams Server-Sent Events with stream: true. Hints: the `router` object in the "
                           "body or the X-Router-* headers (headers win).",
            "parameters": hint_headers,
            "requestBody": body(chat_ref, {"model": "auto", "messages": messages}),
            "responses": {
                "200": {"description": "The completion (or an event stream ending in data: [DONE]).",
                        "headers": _CHAT_HEADERS,
                        "content": {"application/json": {"schema": _ref("ChatCompletion")},
                                    "text/event-stream": {"schema": _ref("ChatCompletionEvent")}}},
                **_errors(400, 401, 404, 409, 413, 422, "4XX", 502, 503, 504),
            },
        }},
        "/v1/route": {"post": {
            "operationId": "route", "tags": ["v1"], "security": open_v1,
            "summary": "Choose a model without calling it; the decision can take feedback.",
            "description": "Hints: the body's fields or the X-Router-* headers (headers win).",
            "parameters": [h for h in hint_headers if h["name"] != "X-Router-Cache"],
            "requestBody": body(route_ref, {"messages": messages}),
            "responses": {
                "200": {**_json(_ref("RouteResponse"), "The decision and every model's score."),
                        "headers": _DECISION_HEADERS},
                **_errors(400, 401, 413, 422, 503),
            },
        }},
        "/v1/feedback": {"post": {
            "operationId": "feedback", "tags": ["v1"], "security": open_v1,
            "summary": "Rate a decision: score in [0, 1], a rating, or a grader outcome.",
            "requestBody": body(_ref("FeedbackRequest"), {"event_id": "0190c0de-example", "score": 1.0}),
            "responses": {
                "200": _json(_ref("FeedbackResponse"), "Recorded (durable) and, for routed decisions, learned."),
                **_errors(400, 401, 404, 410, 413, 422, 503),
            },
        }},
        "/v1/models": {"get": {
            "operationId": "listModels", "tags": ["v1"], "security": open_v1,
            "summary": "'auto' and the configured models (OpenAI list format).",
            "responses": {"200": _json(_ref("ModelList"), "The models."), **_errors(401)},
        }},
        "/admin/arms": {"get": {
            "operationId": "adminArms", "tags": ["admin"], "security": admin,
            "summary": "Per category and model: decisions, feedback, posterior quality, cost, traffic share.",
            "responses": {"200": _json(_ref("ArmsResponse"), "The statistics."), **_errors(401, 403)},
        }},
        "/admin/dashboard": {"get": {
            "operationId": "adminDashboard", "tags": ["admin"], "security": [],
            "summary": "The dashboard page (self-contained HTML; its script polls /admin/arms and /admin/timeline "
                       "with the token given as #token=... or in its form).",
            "responses": {"200": {"description": "The page.", "content": {"text/html": {"schema": _STR}}},
                          **_errors(401, 403)},
        }},
        "/admin/timeline": {"get": {
            "operationId": "adminTimeline", "tags": ["admin"], "security": admin,
            "summary": "Decisions per category, model and time bucket over a window, and recent breaker and "
                       "drift events.",
            "parameters": [
                {"name": "bucket_s", "in": "query", "required": False, "description": "bucket width in seconds",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 86400, "default": 60}},
                {"name": "window_s", "in": "query", "required": False,
                 "description": "window in seconds, ending now; at most 1,440 buckets",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 604800, "default": 3600}},
            ],
            "responses": {"200": _json(_ref("Timeline"), "The timeline."), **_errors(401, 403, 422)},
        }},
        "/healthz": {"get": {
            "operationId": "healthz", "tags": ["ops"], "security": public,
            "summary": "Liveness, the number of models and the storage queue depth.",
            "responses": {"200": _json(_ref("Health"), "Up.")},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "tags": ["ops"], "security": admin,
            "summary": "Prometheus metrics (text exposition format): requests, latency, decisions, traffic share, "
                       "cost, feedback, posterior quality, breakers, storage queue. Needs the admin token.",
            "responses": {"200": {"description": "The metrics.", "content": {"text/plain": {"schema": _STR}}},
                          **_errors(401, 403)},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "tags": ["ops"], "security": public,
            "summary": "This document.",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        }},
    }
    for action, what in (("disable", "Deprecate a model: 'auto' stops choosing it and naming it gets 409."),
                         ("enable", "Restore a disabled model.")):
        paths[f"/admin/models/{{name}}/{action}"] = {"post": {
            "operationId": f"admin{action.title()}Model", "tags": ["admin"], "security": admin,
            "summary": what, "parameters": [name_param],
            "responses": {"200": _json(_ref("ModelEnabled"), "The model's new state."),
                          **_errors(401, 403, 404)},
        }}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "bandit-router", "version": __version__,
                 "description": "An adaptive LLM router: OpenAI-compatible chat completions routed by per-category "
                                "contextual Thompson sampling, with feedback. Errors are OpenAI-style objects: "
                                '{"error": {"message", "type", "param", "code"}}.'},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "admin.token (or BANDIT_ROUTER_ADMIN_TOKEN), for /admin/*"},
                "clientKey": {"type": "http", "scheme": "bearer",
                              "description": "one of auth.api_keys, for /v1/* when any are configured"},
            },
        },
        "tags": [{"name": "v1", "description": "OpenAI-compatible API"},
                 {"name": "admin", "description": "Operators (bearer admin token)"},
                 {"name": "ops", "description": "Health, metrics and this document"}],
    }


def add_openapi(app: web.Application) -> web.Application:
    """Serve :func:`openapi_document` for ``app[CONFIG]`` at ``GET /openapi.json`` (call before the app
    starts; a second call is a no-op). The document is built once, here."""
    if any(r.method == "GET" and r.resource is not None and r.resource.canonical == "/openapi.json"
           for r in app.router.routes()):
        return app
    raw = orjson.dumps(openapi_document(app[CONFIG]))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=raw, content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
    return app

