"""Retries, fallbacks and circuit breakers, in process against the real simulator (and, for the
cases it cannot produce, a small upstream of our own) on loopback."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
import pytest_asyncio
from aiohttp import web
from fleet import CODING, fleet_config, sim_client, sim_set

from bandit_router.config import parse_config
from bandit_router.server import make_app
from bandit_router.server.keys import SERVICE


async def _router(aiohttp_client, tmp_path, sim_port: int, **reliability: object):
    cfg = parse_config(fleet_config(sim_port, **reliability))
    app = make_app(cfg, db_path=tmp_path / "fb.db", admin_local_only=True)
    return await aiohttp_client(app), app




async def _sim_requests(sim, model: str) -> int:
    async with sim_client(sim) as c:
        return (await (await c.get("/admin/models")).json())["models"][model]["requests"]


@pytest.mark.asyncio
async def test_a_failing_model_falls_back_and_the_response_says_so(sim, aiohttp_client, tmp_path):
    client, app = await _router(aiohttp_client, tmp_path, sim.port, retries=1)
    await sim_set(sim, "gpt-5.4", {"fail_rate": 1.0})
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    body = await r.json()
    assert r.status == 200, body
    assert r.headers["X-Router-Model"] == body["model"] == "glm-5"
    assert r.headers["X-Router-Fallback"] == "gpt-5.4"
    assert body["router"]["fallback"]["from"] == ["gpt-5.4", "gpt-5.4"]  # one retry, then the runner-up
    assert body["router"]["model"] == "glm-5"
    service = app[SERVICE]
    await service.flush()
    row = await service.store.get_decision(r.headers["X-Router-Event-Id"])
    assert row.model == "glm-5" and row.status == "completed"  # feedback will teach glm-5, which answered
    health = (await (await client.get("/admin/arms")).json())["health"]
    assert health["gpt-5.4"]["failures"] == 2 and health["glm-5"]["calls"] == 1


@pytest.mark.asyncio
async def test_the_breaker_opens_keeps_traffic_off_then_probes_and_closes(sim, aiohttp_client, tmp_path):
    client, app = await _router(aiohttp_client, tmp_path, sim.port, retries=0, breaker_failures=3,
                                breaker_cooldown_s=2.0)
    await sim_set(sim, "gpt-5.4", {"fail_rate": 1.0})
    for _ in range(3):
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
        assert r.status == 200 and r.headers["X-Router-Fallback"] == "gpt-5.4"
    health = (await (await client.get("/admin/arms")).json())["health"]["gpt-5.4"]
    assert health["breaker"] == "open" and health["times_opened"] == 1
    calls = await _sim_requests(sim, "gpt-5.4")
    for _ in range(5):  # open: not even tried, no fallback needed
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
        assert r.status == 200 and r.headers["X-Router-Model"] == "glm-5" and "X-Router-Fallback" not in r.headers
    assert await _sim_requests(sim, "gpt-5.4") == calls
    await sim_set(sim, "gpt-5.4", {"fail_rate": 0.0})  # it recovers
    await asyncio.sleep(2.1)  # the cooldown passes: the next request is the half-open probe
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert r.status == 200 and r.headers["X-Router-Model"] == "gpt-5.4"
    assert (await (await client.get("/admin/arms")).json())["health"]["gpt-5.4"]["breaker"] == "closed"


@pytest.mark.asyncio
async def test_a_hanging_model_times_out_at_first_byte_and_falls_back(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port, retries=0)
    await sim_set(sim, "gpt-5.4", {"hang_rate": 1.0, "hang_s": 30})
    t0 = time.monotonic()
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert r.status == 200 and r.headers["X-Router-Model"] == "glm-5"
    assert time.monotonic() - t0 < 5  # the 0.5 s first-byte timeout, not the 30 s hang
    assert (await r.json())["router"]["fallback"]["errors"][0]["status"] == 504


@pytest.mark.asyncio
async def test_streams_fall_back_before_the_first_byte(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port, retries=0)
    await sim_set(sim, "gpt-5.4", {"fail_rate": 1.0})
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING, "stream": True})
    text = await r.text()
    assert r.status == 200 and r.headers["X-Router-Model"] == "glm-5" and r.headers["X-Router-Fallback"] == "gpt-5.4"
    assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text


@pytest.mark.asyncio
async def test_pass_through_never_falls_back(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port, retries=0)
    await sim_set(sim, "gpt-5.4", {"fail_rate": 1.0})
    r = await client.post("/v1/chat/completions", json={"model": "gpt-5.4", "messages": CODING})
    assert r.status == 502 and "gpt-5.4" in (await r.json())["error"]["message"]


@pytest.mark.asyncio
async def test_failure_quality_is_a_config_choice(sim, aiohttp_client, tmp_path):
    for fq, learned in ((None, 0), (0.0, 1)):
        (tmp_path / str(fq)).mkdir()
        client, app = await _router(aiohttp_client, tmp_path / str(fq), sim.port, retries=0, failure_quality=fq)
        await sim_set(sim, "gpt-5.4", {"fail_rate": 1.0})
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
        assert r.status == 200
        stats = app[SERVICE].router.arm_stats()["coding"]
        assert stats["gpt-5.4"]["observations"] == learned, fq
        assert stats["glm-5"]["observations"] == 0  # the answer's quality comes later, as feedback


class Flaky:
    """An OpenAI-compatible upstream: 429 with Retry-After first, then 200; or a stream that dies."""

    def __init__(self) -> None:
        self.calls = 0
        self.times: list[float] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        self.times.append(time.monotonic())
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "x",
                     "choices": [{"index": 0, "delta": {"content": "partial "}, "finish_reason": None}]}
            import json

            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            request.transport.close()  # dies mid-stream
            return resp
        if self.calls == 1:
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit"}}, status=429,
                                     headers={"Retry-After": "0.3"})
        return web.json_response({"id": "c", "object": "chat.completion", "created": 0, "model": "x",
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})


@pytest_asyncio.fixture
async def flaky(aiohttp_server, aiohttp_client, tmp_path):
    up = Flaky()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.chat)
    server = await aiohttp_server(app)
    cfg = {"models": [{"name": "only", "base_url": f"http://127.0.0.1:{server.port}/v1", "input_price": 1.0,
                       "output_price": 1.0}], "reliability": {"retries": 1}}
    client = await aiohttp_client(make_app(parse_config(cfg), db_path=tmp_path / "flaky.db"))
    return up, client


@pytest.mark.asyncio
async def test_retry_after_is_honoured_on_the_same_model(flaky):
    up, client = flaky
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert r.status == 200 and up.calls == 2
    assert up.times[1] - up.times[0] >= 0.29  # waited as told
    assert "X-Router-Fallback" not in r.headers  # a retry on the same model is not a fallback


@pytest.mark.asyncio
async def test_a_stream_that_dies_midway_ends_with_an_error_event_then_done(flaky):
    up, client = flaky
    sdk_base = str(client.make_url("/v1"))
    sdk = openai.AsyncOpenAI(base_url=sdk_base, api_key="unused", max_retries=0)
    seen, raised = [], None
    try:
        stream = await sdk.chat.completions.create(model="auto", messages=CODING, stream=True)
        async for chunk in stream:
            seen.append(chunk)
    except openai.APIError as e:  # the SDK raises on an error event in the stream
        raised = e
    assert seen and seen[0].choices[0].delta.content == "partial "
    assert raised is not None
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING, "stream": True})
    text = await r.text()
    events = [line for line in text.split("\n\n") if line.strip()]
    assert '"error"' in events[-2] and events[-1] == "data: [DONE]"
    await sdk.close()


@pytest.mark.asyncio
async def test_a_hanging_model_times_out_at_first_byte_when_streaming_too(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port, retries=0)
    await sim_set(sim, "gpt-5.4", {"hang_rate": 1.0, "hang_s": 30})
    t0 = time.monotonic()
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING, "stream": True})
    text = await r.text()
    assert r.status == 200 and r.headers["X-Router-Model"] == "glm-5" and text.rstrip().endswith("[DONE]")
    assert time.monotonic() - t0 < 5
