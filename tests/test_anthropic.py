"""The Anthropic Messages adapter: request/response translation, end to end against a local server
that speaks (and validates) the Messages wire format, error mapping, and, when the ``anthropic``
SDK is installed, a check that the local server's wire format is what the official SDK expects."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from anthropic_server import (  # tests/ is on sys.path under pytest
    FAILURES,
    REQUESTS,
    answer,
    make_anthropic_app,
    stream_events,
)

from bandit_router.procs import free_port
from bandit_router.providers.anthropic import AnthropicProvider, ChunkTranslator, from_message, to_messages
from bandit_router.providers.base import Provider, StreamResult, UpstreamError, Usage
from bandit_router.providers.http import HttpClient

KEY = "sk-ant-test-0123456789"
IMAGE = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "hours": {"type": "integer"}}}}}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def text(s: str) -> dict[str, str]:
    return {"type": "text", "text": s}


@pytest_asyncio.fixture
async def upstream(aiohttp_server) -> TestServer:
    return await aiohttp_server(make_anthropic_app(api_key=KEY))


@pytest_asyncio.fixture
async def session() -> HttpClient:
    s = HttpClient()
    yield s
    await s.close()


def make(session: HttpClient, server: TestServer, base: str = "/", **kw: Any) -> AnthropicProvider:
    kw.setdefault("api_key", KEY)
    return AnthropicProvider(session, name="claude-test", base_url=str(server.make_url(base)),
                             upstream_model="claude-upstream-1", **kw)


async def collect(p: AnthropicProvider, body: dict[str, Any]) -> tuple[list[dict[str, Any]], StreamResult]:
    result = StreamResult()
    return [c async for batch in p.stream(body, result) for c in batch], result


def assemble(chunks: list[dict[str, Any]]) -> tuple[str, dict[int, dict[str, Any]], str | None]:
    """Content, tool calls by index and finish_reason, as an OpenAI client would assemble them."""
    content, calls, finish = "", {}, None
    for ch in [ch for c in chunks for ch in c["choices"]]:
        content += ch["delta"].get("content") or ""
        for tc in ch["delta"].get("tool_calls") or []:
            call = calls.setdefault(tc["index"], {"id": tc.get("id"), "name": tc["function"].get("name"),
                                                  "arguments": ""})
            call["arguments"] += tc["function"].get("arguments") or ""
        finish = ch["finish_reason"] or finish
    return content, calls, finish


def test_system_hoisting_turn_merging_tool_calls_and_results() -> None:
    out = to_messages({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "developer", "content": [text("Answer in French.")]},
                                    user("hello")]}, "claude-x")
    assert out == {"model": "claude-x", "max_tokens": 4096, "system": "Be brief.\n\nAnswer in French.",
                   "messages": [{"role": "user", "content": [text("hello")]}]}
    # turns: consecutive roles merge, tool calls and results become tool_use / tool_result blocks
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    out = to_messages({"tools": [WEATHER], "messages": [
        user("a"),
        {"role": "user", "content": [text("b"), {"type": "image_url", "image_url": {"url": IMAGE}}]},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        user("thanks"),
        {"role": "assistant", "content": None},  # empty turns are dropped, so the user turns merge
        {"role": "user", "content": [text("again")]},
        {"role": "assistant", "content": "Sure thing:  "},  # prefill: trailing whitespace is stripped
    ]}, "m")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    assert out["messages"] == [
        {"role": "user", "content": [text("a"), text("b"), image]},
        {"role": "assistant", "content": [text("Let me check."), {"type": "tool_use", "id": "call_1",
                                                                  "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                                     text("thanks"), text("again")]},
        {"role": "assistant", "content": [text("Sure thing:")]},
    ]
    # a user message before the tool result: tool_result blocks still come first in the merged turn
    out = to_messages({"messages": [user("q"), {"role": "assistant", "tool_calls": [call]}, user("also"),
                                    {"role": "tool", "tool_call_id": "call_1", "content": [text("18C")]}]}, "m")
    assert [b["type"] for b in out["messages"][2]["content"]] == ["tool_result", "text"]


def test_sampling_parameters_and_dropped_fields() -> None:
    body = {"model": "auto", "messages": [user("hi")], "max_tokens": 50, "max_completion_tokens": 70,
            "temperature": 1.6, "top_p": 0.9, "stop": "END", "user": "u-1", "frequency_penalty": 0.5, "seed": 3,
            "presence_penalty": 0.1, "stream_options": {"include_usage": True}, "router": {"category": "coding"},
            "response_format": {"type": "json_object"}, "n": 1}
    out = to_messages(body, "m", stream=True)
    assert out == {"model": "m", "max_tokens": 70, "messages": [{"role": "user", "content": [text("hi")]}],
                   "temperature": 1.0, "top_p": 0.9, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"},
                   "stream": True}
    out = to_messages({"messages": [user("hi")], "max_tokens": 50, "temperature": 0.2, "stop": ["a", "b"]}, "m",
                      default_max_tokens=9)
    assert (out["max_tokens"], out["temperature"], out["stop_sequences"]) == (50, 0.2, ["a", "b"]) and to_messages(
        {"messages": [user("hi")]}, "m", default_max_tokens=9)["max_tokens"] == 9


def test_tools_and_tool_choice() -> None:
    base = {"messages": [user("hi")], "tools": [WEATHER]}
    out = to_messages(base, "m")
    assert "tool_choice" not in out and out["tools"] == [{"name": "get_weather", "description": "Weather in a city",
                                                          "input_schema": WEATHER["function"]["parameters"]}]
    for choice, want in [("auto", {"type": "auto"}), ("none", {"type": "none"}), ("required", {"type": "any"}),
                         ({"type": "function", "function": {"name": "get_weather"}},
                          {"type": "tool", "name": "get_weather"})]:
        assert to_messages({**base, "tool_choice": choice}, "m")["tool_choice"] == want
    assert to_messages({**base, "parallel_tool_calls": False}, "m")["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    no_params = {"type": "function", "function": {"name": "ping"}}
    assert to_messages({**base, "tools": [no_params]}, "m")["tools"] == [
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}}]
    assert "tool_choice" not in to_messages({"messages": [user("hi")], "tool_choice": "auto"}, "m")


@pytest.mark.parametrize("body, needle", [
    ({"messages": [user("hi")], "n": 2}, "n > 1"),
    ({"messages": [user("hi")], "logprobs": True}, "logprobs"),
    ({"messages": [user("hi")], "response_format": {"type": "json_schema", "json_schema": {}}}, "json_schema"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/bmp;base64,AAAA"}}]}]}, "image/bmp"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input_audio"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "function"),
    ({"messages": [{"role": "assistant", "content": "Hello!"}, user("hi")]}, "first non-system message"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "first non-system message"),
    ({"messages": []}, "non-empty"),
    ({"messages": [user("hi"), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, "not valid JSON"),
    ({"messages": [user("hi")], "tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"messages": [user("hi")], "tools": [WEATHER], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
])
def test_unsupported_requests_are_clear_400s(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(UpstreamError) as e:
        to_messages(body, "m")
    assert e.value.status == 400 and not e.value.retryable and needle in e.value.message


def test_message_with_text_tool_use_and_cache_usage() -> None:
    msg = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-upstream-1",
           "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, text("Checking. "), text("Now."),
                       {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
           "stop_reason": "tool_use", "stop_sequence": None,
           "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 100,
                     "output_tokens": 7}}
    done = from_message(msg, "claude-test")
    assert done.usage == Usage(prompt_tokens=115, completion_tokens=7, cached_tokens=100)
    body, choice = done.body, done.body["choices"][0]
    assert (body["id"], body["object"], body["model"]) == ("chatcmpl-msg_01", "chat.completion", "claude-test")
    assert isinstance(body["created"], int) and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking. Now."
    assert choice["message"]["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]
    assert body["usage"] == {"prompt_tokens": 115, "completion_tokens": 7, "total_tokens": 122,
                             "prompt_tokens_details": {"cached_tokens": 100}}
    only_tool = from_message({**msg, "content": msg["content"][-1:]}, "x").body["choices"][0]["message"]
    assert only_tool["content"] is None and len(only_tool["tool_calls"]) == 1
    for stop, finish in [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
                         ("tool_use", "tool_calls"), ("refusal", "content_filter")]:
        assert from_message({**msg, "stop_reason": stop}, "n").body["choices"][0]["finish_reason"] == finish


def test_chunk_translator_ignores_thinking_and_takes_cumulative_usage() -> None:
    t = ChunkTranslator("claude-test", include_usage=True)
    events = [{"type": "message_start", "message": {"id": "msg_9", "usage": {
        "input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 30}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "x"}},
        {"type": "content_block_stop", "index": 0}, {"type": "ping"},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 12}},
        {"type": "message_stop"}]
    chunks = [c for ev in events for c in t.feed(ev)] + t.finish()
    assert t.done and t.error is None and [c["choices"][0]["delta"] if c["choices"] else None for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}, {}, None]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and {c["id"] for c in chunks} == {"chatcmpl-msg_9"}
    assert chunks[-1]["usage"] == {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62,
                                   "prompt_tokens_details": {"cached_tokens": 30}}


@pytest.mark.asyncio
async def test_complete_end_to_end(upstream: TestServer, session: HttpClient) -> None:
    p: Provider = make(session, upstream)
    done = await p.complete({"model": "auto", "messages": [{"role": "system", "content": "Be kind."},
                                                           user("hello there")], "temperature": 0.3})
    choice = done.body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Echo: hello there", "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert done.body["model"] == "claude-test" and done.body["id"].startswith("chatcmpl-msg_")
    assert done.usage == Usage(4, 3, 0)  # words of "Be kind. hello there" and of "Echo: hello there"
    assert done.body["usage"]["total_tokens"] == 7 and upstream.app[REQUESTS][-1] == {
        "model": "claude-upstream-1", "max_tokens": 4096, "system": "Be kind.", "temperature": 0.3,
        "messages": [{"role": "user", "content": [text("hello there")]}]}


@pytest.mark.asyncio
async def test_stop_sequences_and_max_tokens(upstream: TestServer, session: HttpClient) -> None:
    p = make(session, upstream, "/v1")  # a base_url ending in /v1 works too
    done = await p.complete({"messages": [user("one two STOP three")], "stop": ["STOP", "zzz"]})
    assert (done.body["choices"][0]["message"]["content"], done.body["choices"][0]["finish_reason"]) == (
        "Echo: one two ", "stop")
    done = await p.complete({"messages": [user("one two three four")], "max_completion_tokens": 2})
    assert (done.body["choices"][0]["message"]["content"], done.body["choices"][0]["finish_reason"],
            done.usage.completion_tokens) == ("Echo: one ", "length", 2)


@pytest.mark.asyncio
async def test_tool_round_trip(upstream: TestServer, session: HttpClient) -> None:
    p = make(session, upstream)
    messages = [user("Please use the tool for Paris")]
    done = await p.complete({"messages": messages, "tools": [WEATHER]})
    choice = done.body["choices"][0]
    [call] = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and call["id"].startswith("toolu_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Please use the tool for Paris"}
    # the assistant message goes back verbatim, with the tool's answer; the server checks the pairing
    messages += [choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"}]
    done = await p.complete({"messages": messages, "tools": [WEATHER]})
    assert (done.body["choices"][0]["message"]["content"], done.body["choices"][0]["finish_reason"]) == (
        "Tool said: 18C and sunny", "stop")
    assert upstream.app[REQUESTS][-1]["messages"][2]["content"][0]["tool_use_id"] == call["id"]
    forced = await p.complete({"messages": [user("hi")], "tools": [WEATHER, CLOCK], "tool_choice": {
        "type": "function", "function": {"name": "get_time"}}})
    assert forced.body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    refused = await p.complete({"messages": messages[:1], "tools": [WEATHER], "tool_choice": "none"})
    assert "tool_calls" not in refused.body["choices"][0]["message"]
    with pytest.raises(UpstreamError) as e:  # a tool result for a call the upstream never made: its 400
        await p.complete({"messages": messages[:1] + [{"role": "assistant", "content": "ok"},
                                                      {"role": "tool", "tool_call_id": "call_zzz", "content": "x"}]})
    assert e.value.status == 400 and not e.value.retryable and "call_zzz" in e.value.message


@pytest.mark.asyncio
async def test_stream_text_matches_complete(upstream: TestServer, session: HttpClient) -> None:
    p = make(session, upstream)
    body = {"messages": [{"role": "system", "content": "sys"}, user("stream me some words")], "stream": True}
    chunks, result = await collect(p, body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {(c["object"], c["model"], c["id"]) for c in chunks} == {
        ("chat.completion.chunk", "claude-test", chunks[0]["id"])} and chunks[0]["id"].startswith("chatcmpl-msg_")
    content, calls, finish = assemble(chunks)
    done = await p.complete(body)
    assert content == done.body["choices"][0]["message"]["content"] == "Echo: stream me some words"
    assert (calls, finish) == ({}, "stop") and all("usage" not in c for c in chunks)  # the client did not ask
    assert result.finished and result.usage == done.usage == Usage(5, 5, 0)
    assert upstream.app[REQUESTS][-2]["stream"] is True
    chunks, result = await collect(p, {**body, "stream_options": {"include_usage": True}})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and result.finished


@pytest.mark.asyncio
async def test_stream_parallel_tool_calls(upstream: TestServer, session: HttpClient) -> None:
    p = make(session, upstream)
    body = {"messages": [user("now use the tools please")], "tools": [WEATHER, CLOCK]}
    chunks, result = await collect(p, body)
    content, calls, finish = assemble(chunks)
    done = await p.complete(body)
    assert finish == "tool_calls" and content == "I'll use the tool."
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert [orjson.loads(c["arguments"]) for c in calls.values()] == [
        orjson.loads(w["function"]["arguments"]) for w in done.body["choices"][0]["message"]["tool_calls"]]
    assert orjson.loads(calls[1]["arguments"]) == {"city": "now use the tools please", "hours": 5}
    starts = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or [] if "id" in tc]
    assert [(s["index"], s["type"], s["function"]["arguments"]) for s in starts] == [(0, "function", ""),
                                                                                      (1, "function", "")]
    assert result.usage == done.usage
    single = await p.complete({**body, "parallel_tool_calls": False})
    assert len(single.body["choices"][0]["message"]["tool_calls"]) == 1


@pytest.mark.asyncio
async def test_cached_tokens_are_part_of_the_prompt(aiohttp_server, session: HttpClient) -> None:
    server = await aiohttp_server(make_anthropic_app(api_key=KEY, cache_read_input_tokens=1000,
                                                     cache_creation_input_tokens=200))
    p = make(session, server)
    done = await p.complete({"messages": [user("a b c")]})
    assert done.usage == Usage(prompt_tokens=3 + 200 + 1000, completion_tokens=4, cached_tokens=1000)
    assert done.body["usage"]["prompt_tokens_details"] == {"cached_tokens": 1000}  # the router's cost input
    assert (await collect(p, {"messages": [user("a b c")]}))[1].usage == done.usage


@pytest.mark.asyncio
async def test_error_event_mid_stream(upstream: TestServer, session: HttpClient) -> None:
    p = make(session, upstream)
    result, got = StreamResult(), []
    with pytest.raises(UpstreamError) as e:
        async for batch in p.stream({"messages": [user("please fail midway now")]}, result):
            got.extend(batch)
    assert got and got[0]["choices"][0]["delta"]["role"] == "assistant"
    assert e.value.status == 502 and e.value.retryable and "Overloaded" in e.value.message and not result.finished


@pytest.mark.asyncio
async def test_bad_key_is_a_502_without_the_key(upstream: TestServer, session: HttpClient,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The router's upstream key is wrong: the client must not get a 401 (which blames *its* key)."""
    wrong = "sk-ant-wrong-key-987654321"
    p = make(session, upstream, api_key=wrong)
    for attempt in (lambda: p.complete({"messages": [user("hi")]}), lambda: collect(p, {"messages": [user("hi")]})):
        with pytest.raises(UpstreamError) as e:
            await attempt()
        assert (e.value.status, e.value.upstream_status, e.value.retryable) == (502, 401, False)
        assert "rejected the router's request (status 401)" in e.value.message
        assert wrong not in e.value.message and wrong not in str(e.value)
    assert "authentication_error" in caplog.text and wrong not in caplog.text  # the operator sees why


@pytest.mark.parametrize("status, reported, retryable, needle, detail", [
    (529, 502, True, "overloaded_error", True), (500, 502, True, "api_error", True),
    (429, 429, True, "rate_limit_error", True), (400, 400, False, "invalid_request_error", True),
    (413, 400, False, "request_too_large", True), (404, 502, False, "rejected the router's request (status 404)", True),
    (403, 502, False, "rejected the router's request (status 403)", False)])
@pytest.mark.asyncio
async def test_status_mapping(upstream: TestServer, session: HttpClient, status: int, reported: int,
                              retryable: bool, needle: str, detail: bool, caplog: pytest.LogCaptureFixture) -> None:
    p = make(session, upstream)
    for attempt in (lambda: p.complete({"messages": [user("hi")]}), lambda: collect(p, {"messages": [user("hi")]})):
        upstream.app[FAILURES].append((status, f"failure {status} for {KEY}"))
        with pytest.raises(UpstreamError) as e:
            await attempt()
        assert (e.value.status, e.value.retryable, e.value.upstream_status) == (reported, retryable, status)
        assert needle in e.value.message
        if detail:  # the upstream's message and request id, except for credential problems (logged instead)
            assert f"failure {status}" in e.value.message and "request-id" in e.value.message
        else:
            assert "failure" not in e.value.message and f"failure {status}" in caplog.text
        assert KEY not in e.value.message and KEY not in caplog.text  # even if the upstream echoes it


@pytest.mark.asyncio
async def test_key_straddling_the_cut_does_not_leak(upstream: TestServer, session: HttpClient) -> None:
    """Error bodies are scrubbed before they are cut to 500 characters: no prefix of the key survives."""
    p = make(session, upstream)
    upstream.app[FAILURES].append((400, "x" * 428 + f" echo {KEY} and more text after it"))  # key at ~500
    with pytest.raises(UpstreamError) as e:
        await p.complete({"messages": [user("hi")]})
    assert e.value.status == 400 and "[redacted]" in e.value.message and KEY[:8] not in e.value.message


def _truncated_app(mutate: Any) -> web.Application:
    """Streams the local server's events for an "Echo" answer, passed through ``mutate`` first."""
    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in mutate(stream_events(answer(body, "msg_1"))):
            await resp.write(event)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


@pytest.mark.parametrize("mutate, needle, retryable", [
    (lambda events: events[:-1], "ended the stream before message_stop", True),  # message_stop missing
    (lambda events: events[:3] + [b"event: content_block_delta\ndata: {not json\n\n"] + events[3:],
     "sent an invalid stream event", False),
    (lambda events: events[:3] + [b"event: x\ndata: [1, 2]\n\n"] + events[3:], "sent an invalid stream event", False),
])
@pytest.mark.asyncio
async def test_stream_cut_short_or_garbled_is_an_upstream_error(aiohttp_server, session: HttpClient,
                                                                mutate: Any, needle: str, retryable: bool) -> None:
    p = make(session, await aiohttp_server(_truncated_app(mutate)))
    result, got = StreamResult(), []
    with pytest.raises(UpstreamError) as e:
        async for batch in p.stream({"messages": [user("one two three")]}, result):
            got.extend(batch)
    assert (e.value.status, e.value.retryable) == (502, retryable) and needle in e.value.message
    assert got and not result.finished  # what was already sent stays sent; the stream is not "finished"
    assert all(c["choices"][0]["finish_reason"] is None for c in got)  # no made-up finish_reason


@pytest.mark.asyncio
async def test_unreachable_and_timeout(aiohttp_server, session: HttpClient) -> None:
    p = AnthropicProvider(session, name="c", base_url=f"http://127.0.0.1:{free_port()}", upstream_model=None,
                          api_key=KEY)
    with pytest.raises(UpstreamError) as e:
        await p.complete({"messages": [user("hi")]})
    assert e.value.status == 502 and e.value.retryable and KEY not in e.value.message
    slow = await aiohttp_server(make_anthropic_app(api_key=KEY, latency_s=2.0))
    p = make(session, slow, timeout_s=0.2)
    for attempt in (lambda: p.complete({"messages": [user("hi")]}), lambda: collect(p, {"messages": [user("hi")]})):
        with pytest.raises(UpstreamError) as e:
            await attempt()
        assert e.value.status == 504 and e.value.retryable


@pytest.mark.asyncio
async def test_local_server_speaks_the_sdk_wire_format(upstream: TestServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.AsyncAnthropic(base_url=str(upstream.make_url("/")), api_key=KEY, max_retries=0)
    tool = {"name": "get_weather", "description": "Weather", "input_schema": WEATHER["function"]["parameters"]}
    oslo = [{"role": "user", "content": "use the tool for Oslo"}]

    def ask(content: Any, **kw: Any) -> Any:
        return client.messages.create(model="claude-x", max_tokens=64, messages=[{"role": "user", "content": content}]
                                      if isinstance(content, str) else content, **kw)
    try:
        msg = await ask("hello there", system="Be kind.")
        assert msg.content[0].text == "Echo: hello there" and msg.stop_reason == "end_turn"
        assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)
        msg = await ask(oslo, tools=[tool])
        assert (use := msg.content[1]).type == "tool_use" and use.input == {"city": "use the tool for Oslo"}
        follow = await ask(oslo + [{"role": "assistant", "content": msg.content}, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "3C"}]}], tools=[tool])
        assert follow.content[0].text == "Tool said: 3C"
        async with client.messages.stream(model="claude-x", max_tokens=64, tools=[tool], messages=oslo) as s:
            texts = [t async for t in s.text_stream]
            final = await s.get_final_message()
        assert "".join(texts) == "I'll use the tool." and final.stop_reason == "tool_use"
        assert final.content[1].input == {"city": "use the tool for Oslo"} and final.usage.output_tokens > 0
        with pytest.raises(anthropic.APIError):
            async with client.messages.stream(model="claude-x", max_tokens=64,
                                              messages=[{"role": "user", "content": "fail midway"}]) as s:
                await s.get_final_message()
        with pytest.raises(anthropic.BadRequestError, match="alternate"):
            await ask([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
        with pytest.raises(anthropic.AuthenticationError):
            await client.with_options(api_key="nope").messages.create(model="claude-x", max_tokens=8, messages=oslo)
        upstream.app[FAILURES].append((529, "Overloaded"))
        with pytest.raises(anthropic.APIStatusError) as e:
            await ask("x")
        assert e.value.status_code == 529
    finally:
        await client.close()
