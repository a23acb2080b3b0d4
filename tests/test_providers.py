"""The OpenAI-compatible adapter and the error handling shared by every adapter (status mapping,
Retry-After, api key scrubbing, streams cut short or garbled), against a small real aiohttp server
on loopback that plays the upstream; and through the router with the official openai client."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from typing import Any

import openai
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from bandit_router.config import parse_config
from bandit_router.procs import free_port
from bandit_router.providers import OpenAICompatProvider, UpstreamError
from bandit_router.providers.base import (
    REDACTED,
    StreamResult,
    Usage,
    http_error,
    parse_retry_after,
    redact,
    transport_error,
)
from bandit_router.providers.http import ConnectFailed, HttpClient, UpstreamTimeout
from bandit_router.server import make_app

KEY = "sk-proj-router-upstream-key-0123456789"
SEEN = web.AppKey("seen", list)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up-model",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def _data(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1}}
GOOD = [_data(_chunk({"role": "assistant", "content": ""})), _data(_chunk({"content": "Hello "})),
        _data(_chunk({"content": "there"})), _data(_chunk({}, "stop")),
        _data({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up-model",
               "choices": [], "usage": USAGE}), b"data: [DONE]\n\n"]
# the same events as another JSON writer spaces them (what an upstream's own bytes look like)
SPACED = [e if e.startswith(b"data: [") else b"data: " + json.dumps(orjson.loads(e[6:])).encode() + b"\n\n"
          for e in GOOD]


def make_upstream() -> web.Application:
    """``POST /v1/chat/completions`` whose behaviour is the last user message:

    * ``ok``: a completion (or a stream ending in ``data: [DONE]``);
    * ``fail <status> [retry=<value>]``: that status with an OpenAI error body whose message echoes the
      Authorization header back (as some proxies do), and the Retry-After header when given;
    * ``plain <status>``: a non-JSON error body echoing the header, past 500 characters in;
    * ``bad chunk`` / ``not an object`` / ``error chunk`` / ``odd choices`` / ``wrong content``: a stream
      with an invalid JSON chunk, a JSON chunk that is not an object, an ``{"error": ...}`` object, a
      chunk whose choices are not objects, a chunk whose text is not a string, after two good chunks;
    * ``spaced``: the stream of ``ok`` with spaces in its JSON; ``together``: that of ``ok`` in one write;
    * ``cut``: two good chunks, then the response ends without ``data: [DONE]``;
    * ``drop``: two good chunks, then the connection is closed mid-response;
    * ``slow``: answers after 2 s.
    """

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        request.app[SEEN].append(body)
        auth = request.headers.get("Authorization", "")
        words = body["messages"][-1]["content"].split()
        mode = words[0]
        if mode == "fail":
            headers = dict(("Retry-After", w[6:]) for w in words[2:] if w.startswith("retry="))
            msg = f"failure {words[1]}: your request had Authorization: {auth}"
            return web.json_response({"error": {"message": msg, "type": "x", "param": None, "code": None}},
                                     status=int(words[1]), headers=headers)
        if mode == "plain":  # the key straddles character 500, where messages are cut
            return web.Response(status=int(words[1]), text="x" * 470 + f" header was {auth} (plain text)")
        if mode == "slow":
            await asyncio.sleep(2.0)
        if not body.get("stream"):
            if mode == "not":
                return web.json_response([1, 2])
            return web.json_response({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                                      "model": "up-model", "usage": USAGE, "choices": [
                                          {"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                                           "logprobs": None, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        bad = {"bad": b"data: {\"id\": \"chatcmpl-1\", \"choices\": [\n\n", "not": _data([1, 2]),
               "error": _data({"error": {"message": f"The server had an error ({auth})", "type": "server_error",
                                         "code": 500}}),
               "odd": _data({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": ["x"]}),
               "wrong": _data(_chunk({"content": ["not", "a", "string"]}))}
        if mode in ("ok", "slow"):
            events = GOOD
        elif mode == "spaced":
            events = SPACED
        elif mode == "together":
            events = [b"".join(GOOD)]  # the whole stream in one write
        elif mode in bad:
            events = GOOD[:2] + [bad[mode]] + GOOD[2:]
        else:  # cut, drop
            events = GOOD[:2]
        for e in events:
            await resp.write(e)
        if mode == "drop":
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/v1/chat/completions", completions)
    return app


@pytest_asyncio.fixture
async def upstream(aiohttp_server) -> TestServer:
    return await aiohttp_server(make_upstream())


@pytest_asyncio.fixture
async def session() -> HttpClient:
    s = HttpClient()
    yield s
    await s.close()


def make(session: HttpClient, server: TestServer, **kw: Any) -> OpenAICompatProvider:
    kw.setdefault("api_key", KEY)
    return OpenAICompatProvider(session, name="gpt-test", base_url=str(server.make_url("/v1")),
                                upstream_model="up-model", **kw)


def ask(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **kw}


async def collect(p: OpenAICompatProvider, body: dict[str, Any]) -> tuple[list[dict[str, Any]], StreamResult]:
    result = StreamResult()
    return [c async for batch in p.stream(body, result) for c in batch], result


async def failed_stream(p: OpenAICompatProvider, body: dict[str, Any]
                        ) -> tuple[list[dict[str, Any]], StreamResult, UpstreamError]:
    result, got = StreamResult(), []
    with pytest.raises(UpstreamError) as e:
        async for batch in p.stream(body, result):
            got.extend(batch)
    return got, result, e.value


# -- shared helpers -------------------------------------------------------------------------------
@pytest.mark.parametrize("status, reported, retryable, needle", [
    (400, 400, False, "rejected the request (status 400): why"),
    (413, 400, False, "rejected the request (status 413): why"),
    (422, 400, False, "rejected the request (status 422): why"),
    (429, 429, True, "rate limiting the router (status 429)"),
    (401, 502, False, "rejected the router's request (status 401)"),
    (403, 502, False, "rejected the router's request (status 403)"),
    (404, 502, False, "rejected the router's request (status 404): why"),
    (409, 502, True, "rejected the router's request (status 409): why"),
    (418, 502, False, "rejected the router's request (status 418): why"),
    (408, 504, True, "timed out (status 408)"),
    (500, 502, True, "failed (status 500): why"), (503, 502, True, "failed (status 503): why"),
    (529, 502, True, "failed (status 529): why")])
def test_http_error_mapping(status: int, reported: int, retryable: bool, needle: str) -> None:
    e = http_error("m", status, "why")
    assert (e.status, e.retryable, e.upstream_status, e.retry_after) == (reported, retryable, status, None)
    assert e.message.startswith("upstream m ") and needle in e.message
    if status in (401, 403):  # about the router's credentials: the upstream's words are logged, not returned
        assert "why" not in e.message


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": " 1.5 "}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25  # OpenAI's finer header first
    assert parse_retry_after({"retry-after": email.utils.formatdate(now + 30, usegmt=True)}, now=now) == 30.0
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    for bad in ("", "soon", "-3", "inf", "nan"):
        assert parse_retry_after({"retry-after": bad}) is None
    assert parse_retry_after(None) is None and parse_retry_after({}) is None
    e = http_error("m", 429, "slow down", headers={"retry-after": "12"})
    assert (e.status, e.retry_after, e.retryable) == (429, 12.0, True) and "retry after 12 s" in e.message


def test_redact_and_transport_errors() -> None:
    assert redact(f"key {KEY} and Bearer {KEY}", KEY) == f"key {REDACTED} and Bearer {REDACTED}"
    assert redact("nothing", None, "") == "nothing"
    e = http_error("m", 400, f"bad: {KEY}", secret=KEY)
    assert KEY not in e.message and REDACTED in e.message
    assert (transport_error("m", TimeoutError()).status, transport_error("m", TimeoutError()).retryable) == (504, True)
    assert transport_error("m", UpstreamTimeout("read")).status == 504  # a client error and a timeout
    e = transport_error("m", ConnectFailed(f"Authorization: Bearer {KEY}"))
    assert (e.status, e.retryable) == (502, True) and KEY not in e.message


# -- the OpenAI-compatible adapter ----------------------------------------------------------------
@pytest.mark.asyncio
async def test_complete_and_stream(upstream: TestServer, session: HttpClient) -> None:
    p = make(session, upstream)
    done = await p.complete(ask("ok"))
    assert done.body["model"] == "gpt-test" and done.usage == Usage(3, 2, 1)
    assert upstream.app[SEEN][-1]["model"] == "up-model" and "stream" not in upstream.app[SEEN][-1]
    chunks, result = await collect(p, ask("ok"))
    assert result.finished and result.usage == Usage(3, 2, 1)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello there"
    assert all(c["model"] == "gpt-test" and "usage" not in c for c in chunks)  # usage not asked for: not sent
    chunks, result = await collect(p, ask("ok", stream_options={"include_usage": True}))
    assert result.finished and chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE


@pytest.mark.parametrize("status, reported, retryable", [
    (400, 400, False), (413, 400, False), (422, 400, False), (429, 429, True), (401, 502, False),
    (403, 502, False), (404, 502, False), (500, 502, True), (503, 502, True)])
@pytest.mark.asyncio
async def test_upstream_statuses_are_mapped(upstream: TestServer, session: HttpClient, status: int,
                                            reported: int, retryable: bool) -> None:
    """An upstream 401/403/404 is the router's problem (502), never passed through as the client's."""
    p = make(session, upstream)
    for attempt in (lambda: p.complete(ask(f"fail {status}")), lambda: collect(p, ask(f"fail {status}"))):
        with pytest.raises(UpstreamError) as e:
            await attempt()
        assert (e.value.status, e.value.retryable, e.value.upstream_status) == (reported, retryable, status)
        assert ("rejected the router's request" in e.value.message) == (reported == 502 and status < 500)
        if reported == 400:
            assert f"failure {status}" in e.value.message  # the upstream's reason reaches the client


@pytest.mark.asyncio
async def test_429_keeps_retry_after(upstream: TestServer, session: HttpClient) -> None:
    p = make(session, upstream)
    for attempt in (lambda: p.complete(ask("fail 429 retry=7")), lambda: collect(p, ask("fail 429 retry=7"))):
        with pytest.raises(UpstreamError) as e:
            await attempt()
        assert (e.value.status, e.value.retry_after, e.value.retryable) == (429, 7.0, True)
    with pytest.raises(UpstreamError) as e:
        await p.complete(ask("fail 429"))
    assert e.value.retry_after is None


@pytest.mark.parametrize("prompt", ["fail 400", "fail 401", "fail 404", "fail 500", "plain 400", "plain 403",
                                    "plain 502"])
@pytest.mark.asyncio
async def test_the_api_key_never_leaks(upstream: TestServer, session: HttpClient, prompt: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """The upstream echoes the Authorization header in its error: neither the error nor a log line
    may contain the key (a plain-text body is scrubbed before it is cut, so no prefix survives)."""
    caplog.set_level(logging.DEBUG)
    p = make(session, upstream)
    for attempt in (lambda: p.complete(ask(prompt)), lambda: collect(p, ask(prompt))):
        with pytest.raises(UpstreamError) as e:
            await attempt()
        assert KEY not in e.value.message and KEY not in str(e.value) and KEY[:8] not in e.value.message
    assert KEY not in caplog.text and KEY[:8] not in caplog.text
    if prompt in ("fail 400", "fail 500"):  # the message is kept, only the key is gone
        assert f"Authorization: Bearer {REDACTED}" in e.value.message


@pytest.mark.asyncio
async def test_stream_passes_unchanged_chunks_on_as_sent(upstream: TestServer, session: HttpClient) -> None:
    """Each batch carries its SSE bytes: the upstream's own bytes for a chunk that needs no change (so
    it is not serialized again), a re-serialized chunk where it was relabelled or lost its usage."""

    async def sse(p: OpenAICompatProvider, body: dict[str, Any]) -> bytes:
        result = StreamResult()
        out = b"".join([batch.sse async for batch in p.stream(body, result)])
        assert result.finished and result.usage == Usage(3, 2, 1)
        return out

    same = OpenAICompatProvider(session, name="up-model", base_url=str(upstream.make_url("/v1")),
                                upstream_model=None, api_key=None)  # the upstream answers with this very name
    assert await sse(same, ask("spaced")) == b"".join(SPACED[:4])  # byte for byte, without the usage chunk
    assert await sse(same, ask("spaced", stream_options={"include_usage": True})) == b"".join(SPACED[:5])
    relabelled = await sse(make(session, upstream), ask("spaced", stream_options={"include_usage": True}))
    events = relabelled.split(b"\n\n")
    assert events[-1] == b"" and len(events) == 6
    for event, sent in zip(events[:-1], SPACED[:5], strict=True):
        chunk = orjson.loads(event.removeprefix(b"data: "))
        assert chunk == {**orjson.loads(sent.strip().removeprefix(b"data: ")), "model": "gpt-test"}
        assert event == b"data: " + orjson.dumps(chunk)


@pytest.mark.asyncio
async def test_stream_is_finished_as_its_last_chunks_are_yielded(upstream: TestServer, session: HttpClient) -> None:
    """Chunks that arrive with ``data: [DONE]`` are yielded with the stream already finished, so the
    router can send the end of the stream in the same write; never before the last batch."""
    result, seen = StreamResult(), []
    async for batch in make(session, upstream).stream(ask("together"), result):
        seen.append((len(batch), result.finished))
    assert seen == [(4, True)]
    result, seen = StreamResult(), []
    async for _batch in make(session, upstream).stream(ask("ok"), result):
        seen.append(result.finished)
    assert result.finished and not any(seen[:-1])


@pytest.mark.parametrize("prompt, needle, retryable", [
    ("bad chunk", "sent an invalid stream chunk", False),
    ("not an object", "sent an invalid stream chunk", False),
    ("odd choices", "sent an invalid stream chunk", False),
    ("wrong content", "sent an invalid stream chunk", False),
    ("error chunk", "The server had an error", True),
    ("cut", "ended the stream before data: [DONE]", True),
    ("drop", "unreachable", True)])
@pytest.mark.asyncio
async def test_stream_garbled_or_cut_short(upstream: TestServer, session: HttpClient, prompt: str,
                                           needle: str, retryable: bool) -> None:
    """A bad chunk or an early end is an UpstreamError (502) after the chunks already sent, and the
    stream is not finished (so it is not accounted as a success)."""
    got, result, e = await failed_stream(make(session, upstream), ask(prompt))
    assert (e.status, e.retryable) == (502, retryable) and needle in e.message and KEY not in e.message
    assert [c["choices"][0]["delta"] for c in got] == [{"role": "assistant", "content": ""}, {"content": "Hello "}]
    assert not result.finished


@pytest.mark.asyncio
async def test_non_object_body_unreachable_and_timeout(aiohttp_server, upstream: TestServer,
                                                       session: HttpClient) -> None:
    with pytest.raises(UpstreamError) as e:
        await make(session, upstream).complete(ask("not an object"))
    assert e.value.status == 502 and "sent an invalid JSON body" in e.value.message
    p = OpenAICompatProvider(session, name="gone", base_url=f"http://127.0.0.1:{free_port()}/v1",
                             upstream_model=None, api_key=KEY)
    for attempt in (lambda: p.complete(ask("ok")), lambda: collect(p, ask("ok"))):
        with pytest.raises(UpstreamError) as e:
            await attempt()
        assert (e.value.status, e.value.retryable) == (502, True) and "unreachable" in e.value.message
    p = make(session, upstream, timeout_s=0.2)
    for attempt in (lambda: p.complete(ask("slow")), lambda: collect(p, ask("slow"))):
        with pytest.raises(UpstreamError) as e:
            await attempt()
        assert (e.value.status, e.value.retryable) == (504, True)


# -- through the router -----------------------------------------------------------------------------
@pytest_asyncio.fixture
async def routed(aiohttp_server, upstream: TestServer, tmp_path, monkeypatch):
    monkeypatch.setenv("PROVIDERS_TEST_KEY", KEY)
    cfg = parse_config({"models": [{"name": "gpt-test", "base_url": str(upstream.make_url("/v1")),
                                    "upstream_model": "up-model", "api_key_env": "PROVIDERS_TEST_KEY",
                                    "input_price": 1.0, "output_price": 2.0}], "bandit": {"seed": 0}})
    router = await aiohttp_server(make_app(cfg, db_path=tmp_path / "p.db"))
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.port}/v1", api_key="client-key", max_retries=0)
    yield client
    await client.close()


@pytest.mark.asyncio
async def test_router_reports_an_upstream_401_as_502(routed) -> None:
    """The client's key is fine: it must not see a 401 (openai raises AuthenticationError on those)."""
    with pytest.raises(openai.APIStatusError) as e:
        await routed.chat.completions.create(model="auto", messages=[{"role": "user", "content": "fail 401"}])
    assert e.value.status_code == 502 and not isinstance(e.value, openai.AuthenticationError)
    assert "rejected the router's request (status 401)" in e.value.message and KEY not in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        await routed.chat.completions.create(model="auto", messages=[{"role": "user", "content": "fail 422"}])
    assert "failure 422" in e.value.message and KEY not in e.value.message


@pytest.mark.asyncio
async def test_router_ends_a_garbled_stream_with_an_error_event(routed) -> None:
    """A bad chunk mid-stream reaches the client as an OpenAI-style error event (not a 500 after the
    headers), which the openai client raises as an APIError after the text so far."""
    text = ""
    with pytest.raises(openai.APIError) as e:
        stream = await routed.chat.completions.create(model="auto", stream=True,
                                                      messages=[{"role": "user", "content": "bad chunk"}])
        async for chunk in stream:
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert "sent an invalid stream chunk" in e.value.message
    # The good chunks and the bad one may arrive in one read, and the router sends a read's chunks
    # in one write: then the failure comes before any byte reached the client, as a plain 502.
    assert text == "Hello " or (isinstance(e.value, openai.InternalServerError) and text == "")
