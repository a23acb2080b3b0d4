"""The simulated provider over HTTP: OpenAI's Chat Completions wire format on a real aiohttp server.

Endpoints
---------
``POST /v1/chat/completions``
    OpenAI request and response bodies (``stream`` with ``stream_options.include_usage`` too:
    ``text/event-stream`` of ``data: {chat.completion.chunk}`` lines and ``data: [DONE]``). The
    request's category is the ``X-Sim-Category`` header, else :class:`~bandit_router.categories.CategoryClassifier`
    on the prompt; the answer is right with the model's probability for that category and ends
    with an ``ANSWER:`` line (the grading protocol of :mod:`bandit_router.simulator.protocol`).
    Response headers ``x-request-id``, ``x-sim-category`` and ``x-sim-cost-usd`` (at profile prices).
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /healthz``
``GET /admin/models``
    Live state: effective quality per category, price, fail rate, latency, request counters.
``POST /admin/models/{name}``
    Drift, at once: ``{"quality": {"coding": 0.3}, "quality_scale": 0.5, "price": {"input": 1,
    "output": 4}, "fail_rate": 0.3, "hang_rate": 0.1, "hang_s": 60, "latency_scale": 2, "available": false}``
    (any subset). ``hang_rate``: that share of requests send nothing for ``hang_s``, then a 504.
``POST /admin/settings`` ``{"latency_scale": 0}`` (global) and ``POST /admin/reset``.

Errors are OpenAI error objects ``{"error": {"message", "type", "param", "code"}}``: 400 for a body
that is not JSON or does not validate, 404 for an unknown or unavailable model, 500 at the
model's ``fail_rate``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .engine import AdminUpdate, Outcome, SimError, Simulator
from .profile import Profile, StrictModel, builtin_profile, load_profile

SIMULATOR_KEY = web.AppKey("simulator", Simulator)
CATEGORY_HEADER = "X-Sim-Category"
STREAM_CHUNK_CHARS = 16  # about 4 tokens per streamed delta
FINGERPRINT = "fp_simulator"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The Chat Completions fields the simulator reads; others (top_p, seed, tools...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: int | None = 1
    user: str | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> ChatRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        if self.n not in (None, 1):
            raise ValueError(f"n: only n=1 is supported by the simulator, got {self.n}")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 sequences")
        return self


class Settings(StrictModel):
    latency_scale: float | None = Field(default=None, ge=0.0)


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _invalid(err: ValidationError) -> SimError:
    first = err.errors()[0]
    param = _param(first["loc"]) or None
    msg = first["msg"].removeprefix("Value error, ")
    return SimError(400, f"Invalid value for '{param}': {msg}" if param else msg, param=param)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type="application/json",
                        charset="utf-8")


async def _json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise SimError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                       "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)") from None


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _invalid(e) from None


def _usage(o: Outcome) -> dict[str, Any]:
    return {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens,
            "total_tokens": o.prompt_tokens + o.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": o.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _headers(o: Outcome) -> dict[str, str]:
    return {"x-request-id": f"req_{o.request_id}", "x-sim-category": o.category, "x-sim-cost-usd": f"{o.cost_usd:.8f}"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIMULATOR_KEY]
    req = _validate(ChatRequest, await _json_body(request))
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    outcome = sim.complete(req.model, messages, category=request.headers.get(CATEGORY_HEADER),
                           max_tokens=limit, stop=stop)
    base = {"id": f"chatcmpl-{outcome.request_id}", "created": int(time.time()), "model": req.model,
            "system_fingerprint": FINGERPRINT, "service_tier": "default"}
    if not req.stream:
        await asyncio.sleep(outcome.ttft_s + outcome.completion_tokens * outcome.s_per_token)
        body = {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.content,
                                                     "refusal": None, "annotations": []},
                             "logprobs": None, "finish_reason": outcome.finish_reason}],
                "usage": _usage(outcome)}
        return _json(body, headers=_headers(outcome))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return await _stream(request, outcome, {**base, "object": "chat.completion.chunk"}, include_usage)


async def _stream(request: web.Request, o: Outcome, base: dict[str, Any], include_usage: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache", **_headers(o)})
    await resp.prepare(request)
    extra = {"usage": None} if include_usage else {}

    async def send(choices: list[dict[str, Any]], **more: Any) -> None:
        chunk = {**base, "choices": choices, **extra, **more}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    try:
        await asyncio.sleep(o.ttft_s)
        await send(choice({"role": "assistant", "content": "", "refusal": None}))
        start, sent_tokens = time.monotonic(), 0.0
        for i in range(0, len(o.content), STREAM_CHUNK_CHARS):
            piece = o.content[i: i + STREAM_CHUNK_CHARS]
            sent_tokens += len(piece) / 4
            wait = start + sent_tokens * o.s_per_token - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await send(choice({"content": piece}))
        await send(choice({}, o.finish_reason))
        if include_usage:
            await send([], usage=_usage(o))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream
    return resp


async def list_models(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR_KEY]
    data = [_model_object(name, s.spec.owned_by) for name, s in sim.models.items() if s.spec.available]
    return _json({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state = request.app[SIMULATOR_KEY].lookup(request.match_info["name"])
    return _json(_model_object(request.match_info["name"], state.spec.owned_by))


def _model_object(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1767225600, "owned_by": owner}


async def healthz(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR_KEY]
    return _json({"status": "ok", "profile": sim.profile.name, "models": len(sim.models)})


async def admin_models(request: web.Request) -> web.Response:
    return _json(request.app[SIMULATOR_KEY].snapshot())


async def admin_update_model(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR_KEY]
    name = request.match_info["name"]
    sim.update(name, _validate(AdminUpdate, await _json_body(request)))
    return _json(sim.snapshot()["models"][name])


async def admin_settings(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR_KEY]
    settings = _validate(Settings, await _json_body(request))
    if settings.latency_scale is not None:
        sim.latency_scale = settings.latency_scale
    return _json({"latency_scale": sim.latency_scale})


async def admin_reset(request: web.Request) -> web.Response:
    request.app[SIMULATOR_KEY].reset()
    return _json({"status": "reset"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as an OpenAI error object, including aiohttp's own 404/405."""
    try:
        return await handler(request)
    except SimError as e:
        if e.delay_s:
            await asyncio.sleep(e.delay_s)  # a hang: nothing is sent until then
        return _json(e.body(), status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = "unknown_url" if e.status == 404 else None
        err = SimError(e.status, f"{e.reason}: {request.method} {request.path}", code=code)
        return _json(err.body(), status=e.status)


def make_app(profile: Profile | None = None, *, seed: int = 0) -> web.Application:
    """The simulator as an aiohttp application (the built-in profile when ``profile`` is None)."""
    app = web.Application(middlewares=[openai_errors], client_max_size=32 * 1024**2)
    app[SIMULATOR_KEY] = Simulator(profile if profile is not None else builtin_profile(), seed=seed)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{name}", get_model)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/admin/models", admin_models)
    app.router.add_post("/admin/models/{name}", admin_update_model)
    app.router.add_post("/admin/settings", admin_settings)
    app.router.add_post("/admin/reset", admin_reset)
    return app


def run_simulator(host: str = "127.0.0.1", port: int = 9000, profile_path: str | Path | None = None,
                  seed: int = 0, latency_scale: float | None = None) -> None:
    """Serve the simulator until interrupted (``bandit-router simulate``).

    ``profile_path``: a YAML or JSON profile (else the built-in one); a bad file raises
    :class:`~bandit_router.simulator.profile.ProfileError` naming the field, before anything is served.
    ``latency_scale`` overrides the profile's (0 = answer at once).
    """
    profile = load_profile(profile_path) if profile_path is not None else builtin_profile()
    if latency_scale is not None:
        if latency_scale < 0:
            raise ValueError("latency_scale must be >= 0")
        profile = profile.model_copy(update={"latency_scale": latency_scale})
    models = ", ".join(profile.models)
    print(f"bandit-router simulator: profile {profile.name!r} ({models}), seed {seed}, "
          f"latency scale {profile.latency_scale:g}, on http://{host}:{port}/v1", flush=True)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(make_app(profile, seed=seed), host=host, port=port, print=None, access_log=None, loop=loop)
