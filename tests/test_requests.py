"""The chat request's plain shape (``requests.plain_chat``) against ChatRequest, the schema it stands in for."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bandit_router.server.requests import ChatRequest, plain_chat, read_chat

# JSON values as orjson makes them, weighted towards what each field may hold
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=32),
                     st.sampled_from(["", "auto", "true", "1", "user", "x" * 3]))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                           max_size=3), max_leaves=6)
_ROLE = st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]),
                  st.sampled_from(["User", "bot", ""]), _JSON)
_CONTENT = st.one_of(st.text(max_size=20), st.none(), st.just([{"type": "text", "text": "hi"}]), _JSON)


@st.composite
def _message(draw: Any) -> Any:
    """A chat message, each part right or wrong (a third of the time, wrong)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(_JSON)  # not an object at all
    roles = ["system", "developer", "user", "assistant", "tool", "function"]
    m: dict[str, Any] = {"role": draw(st.sampled_from(roles)),
                         "content": draw(st.one_of(st.text(max_size=20), st.none()))}
    if draw(st.integers(0, 2)) == 0:
        m["role"] = draw(_ROLE)
    if draw(st.integers(0, 2)) == 0:
        m["content"] = draw(_CONTENT)
    for key in ("role", "content"):
        if draw(st.integers(0, 9)) == 0:
            del m[key]
    if draw(st.integers(0, 4)) == 0:
        m["name"] = draw(_JSON)  # an extra field: allowed
    return m


@st.composite
def _body(draw: Any) -> dict[str, Any]:
    """A chat request whose fields are each, now and then, missing or wrong."""
    body: dict[str, Any] = {"model": "auto", "messages": draw(st.lists(_message(), min_size=1, max_size=3))}
    if draw(st.integers(0, 4)) == 0:
        body["model"] = draw(st.one_of(st.sampled_from(["fast", ""]), _JSON))
    if draw(st.integers(0, 9)) == 0:
        body["messages"] = draw(st.one_of(st.just([]), _JSON))
    for key in ("model", "messages"):
        if draw(st.integers(0, 19)) == 0:
            del body[key]
    for key, values in (("stream", st.one_of(st.booleans(), st.sampled_from(["true", "false", 1, 0]), _JSON)),
                        ("stream_options", st.one_of(st.none(), st.just({"include_usage": True}), _JSON)),
                        ("router", st.one_of(st.none(), st.just({"category": "coding"}), _JSON)),
                        ("temperature", _JSON)):
        if draw(st.integers(0, 2)) == 0:
            body[key] = draw(values)
    return body


@settings(max_examples=1500, deadline=None)
@given(_body())
def test_a_plain_body_is_one_chat_request_accepts_as_it_is(body):
    if not plain_chat(body):
        return
    event("plain")  # (--hypothesis-show-statistics: about a tenth of the bodies)
    req = ChatRequest.model_validate(body)  # raises if the plain shape let through a body it refuses
    assert req.model == body["model"] and req.stream is body.get("stream", False) and req.router is None
    assert [m.role for m in req.messages] == [m["role"] for m in body["messages"]]
    assert [m.content for m in req.messages] == [m.get("content") for m in body["messages"]]


def test_the_plain_shape_covers_the_usual_request():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": []}, {"role": "tool", "content": "42"}]
    assert plain_chat({"model": "auto", "messages": msgs})
    assert plain_chat({"model": "auto", "messages": msgs, "stream": True, "stream_options": {"include_usage": True},
                       "temperature": 0.2, "max_tokens": 50, "router": None})


@pytest.mark.parametrize("body", [
    {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "router": {"category": "coding"}},
    {"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": "true"},  # pydantic coerces
    {"model": "auto", "messages": [{"role": "robot", "content": "hi"}]},
    {"model": "", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "auto", "messages": []},
    {"model": 7, "messages": [{"role": "user", "content": "hi"}]},
    {"model": "auto", "messages": [{"role": ["user"], "content": "hi"}]},  # unhashable: no TypeError
])
def test_other_bodies_go_to_chat_request(body):
    assert not plain_chat(body)


def _request(headers: dict[str, str] | None = None) -> Any:
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers or {})


def test_read_chat_agrees_on_both_paths():
    plain = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "stream": True}
    hinted = {**plain, "router": {"category": "coding", "cost_weight": 2.5}}
    model, h = read_chat(_request({"X-Router-Cost-Weight": "3"}), plain)
    assert (model, h.stream, h.max_output_tokens, h.category, h.cost_weight) == ("auto", True, 9, None, 3.0)
    model, h = read_chat(_request(), hinted)
    assert (model, h.stream, h.max_output_tokens, h.category, h.cost_weight) == ("auto", True, 9, "coding", 2.5)
    _, coerced = read_chat(_request(), {**plain, "stream": "false"})  # not plain: pydantic reads it
    assert coerced.stream is False
    with pytest.raises(ValidationError, match="role"):
        read_chat(_request(), {"model": "auto", "messages": [{"role": "robot", "content": "hi"}]})
    with pytest.raises(ValueError, match="X-Router-Cost-Weight"):
        read_chat(_request({"X-Router-Cost-Weight": "-1"}), plain)


@pytest.mark.asyncio
async def test_read_json_takes_a_whole_body_at_once_and_keeps_the_size_limit(aiohttp_client):
    import asyncio

    from aiohttp import web

    from bandit_router.server.auth import AuthSettings
    from bandit_router.server.guard import make_guard
    from bandit_router.server.requests import read_json

    async def echo(request: web.Request) -> web.Response:
        eof = request.content.is_eof()  # before reading: the path read_json takes
        return web.json_response({"body": await read_json(request), "whole": eof})

    app = web.Application(client_max_size=200, middlewares=[make_guard(AuthSettings())])
    app.router.add_post("/echo", echo)
    client = await aiohttp_client(app)
    r = await client.post("/echo", data=b'{"a": [1, 2]}')
    assert r.status == 200 and await r.json() == {"body": {"a": [1, 2]}, "whole": True}
    r = await client.post("/echo", data=b'{"a": "' + b"x" * 300 + b'"}')  # arrived whole, over the limit
    assert r.status == 413 and "too large" in (await r.json())["error"]["message"]

    async def pieces():  # a body that is still arriving when the handler starts: aiohttp's read loop
        for part in (b'{"a": ', b'"slow"', b"}"):
            await asyncio.sleep(0.05)
            yield part

    r = await client.post("/echo", data=pieces())
    assert r.status == 200 and await r.json() == {"body": {"a": "slow"}, "whole": False}

    async def big():
        for _ in range(5):
            await asyncio.sleep(0.02)
            yield b"x" * 60

    r = await client.post("/echo", data=big())
    assert r.status == 413


@pytest.mark.asyncio
async def test_the_guard_answers_a_broken_handler_with_an_error_object_and_a_zero_limit_is_none(aiohttp_client):
    from aiohttp import web

    from bandit_router.server.auth import AuthSettings
    from bandit_router.server.guard import make_guard
    from bandit_router.server.requests import read_json

    async def broken(request: web.Request) -> web.Response:
        return None  # type: ignore[return-value]  # a bug: no response

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await read_json(request))

    app = web.Application(client_max_size=0, middlewares=[make_guard(AuthSettings(secrets=("sk-secret-123456",)))])
    app.router.add_get("/broken", broken)
    app.router.add_post("/echo", echo)
    client = await aiohttp_client(app)
    r = await client.get("/broken")
    assert r.status == 500 and (await r.json())["error"]["message"] == "internal error (logged)"
    r = await client.get("/nothing/sk-secret-123456")  # aiohttp's own 404 names the path: scrubbed too
    assert r.status == 404 and "sk-secret" not in await r.text() and "[redacted]" in await r.text()
    r = await client.post("/echo", data=b'{"a": "' + b"x" * 5000 + b'"}')  # client_max_size=0: no limit, as in aiohttp
    assert r.status == 200 and len((await r.json())["a"]) == 5000
