"""The response cache: the pure index (keys, TTL, LRU) and, end to end in process against the
simulator on loopback, hits that cost $0 and call no upstream, tenant scoping, bypass, restart."""

from __future__ import annotations

import asyncio

import pytest
from fleet import CODING, fleet_config, sim_client

from bandit_router.cache import ResponseCache, cache_key, cacheable, replay_chunks
from bandit_router.config import parse_config
from bandit_router.server import make_app
from bandit_router.server.keys import SERVICE

# -- the pure part ---------------------------------------------------------------------------------


def test_only_deterministic_single_choice_requests_are_cacheable():
    base = {"model": "auto", "messages": CODING}
    assert cacheable({**base, "temperature": 0})
    assert cacheable({**base, "temperature": 0.0, "n": 1})
    assert not cacheable(base)  # the provider's default temperature is not 0
    assert not cacheable({**base, "temperature": 0.7})
    assert not cacheable({**base, "temperature": False})  # a bool is not a temperature
    assert cacheable({**base, "temperature": 0, "stream": True})  # replayed as chunks
    assert not cacheable({**base, "temperature": 0, "n": 2})
    assert cacheable({**base, "temperature": 0.7}, all_requests=True)
    assert not cacheable({**base, "n": 3}, all_requests=True)


def test_a_cached_completion_replays_as_openai_chunks_unless_it_holds_tool_calls():
    done = {"id": "c1", "created": 5, "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"},
                         "finish_reason": "stop"}]}
    chunks = replay_chunks(done, include_usage=True)
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 3
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "hi there"}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop" and chunks[2]["usage"]["completion_tokens"] == 2
    assert len(replay_chunks(done)) == 2
    tools = {**done, "choices": [{"index": 0, "message": {"role": "assistant", "content": None,
                                                          "tool_calls": [{"id": "t"}]}, "finish_reason": "tool_calls"}]}
    assert replay_chunks(tools) is None


def test_the_key_is_scoped_by_tenant_and_eligible_models_and_ignores_what_does_not_change_the_answer():
    body = {"model": "auto", "messages": CODING, "temperature": 0, "max_tokens": 50}
    k = cache_key("a", body, ["m1", "m2"])
    assert k == cache_key("a", dict(reversed(list(body.items()))), ["m2", "m1"])  # order does not matter
    assert k == cache_key("a", {**body, "user": "u1", "stream": False, "router": {"category": "x"}}, ["m1", "m2"])
    assert k != cache_key("b", body, ["m1", "m2"])  # another tenant
    assert k != cache_key("a", body, ["m1"])  # another eligible set
    assert k != cache_key("a", {**body, "max_tokens": 51}, ["m1", "m2"])
    assert k != cache_key("a", {**body, "messages": [{"role": "user", "content": "other"}]}, ["m1", "m2"])
    # the tenant cannot be smuggled into the request to collide with another tenant's key
    assert cache_key("a", body, ["m1"]) != cache_key("", {**body, "a": 1}, ["m1"])


def test_entries_expire_after_the_ttl_and_the_least_recently_used_go_first():
    c = ResponseCache(max_entries=2, ttl_s=10.0)
    for i, key in enumerate(("k1", "k2")):
        assert c.put(c.entry(key, "t", "m", "general", b"{}", now=100.0 + i)) == []
    assert c.get("k1", 105.0) is not None  # k1 is now the most recently used
    assert c.put(c.entry("k3", "t", "m", "general", b"{}", now=106.0)) == ["k2"]
    assert c.get("k2", 106.0) is None and c.get("k1", 106.0) is not None
    assert c.get("k1", 110.0) is None  # created at 100, ttl 10
    assert c.expire(200.0) == ["k3"] and len(c) == 0
    assert c.stats()["hits"] == 2 and c.stats()["misses"] == 2


def test_load_keeps_the_newest_within_the_cap_and_skips_expired_entries():
    old = ResponseCache(max_entries=5, ttl_s=10.0)
    entries = [old.entry(f"k{i}", "t", "m", "general", b"{}", now=float(i)) for i in range(5)]
    c = ResponseCache(max_entries=2, ttl_s=10.0)
    dropped = c.load(reversed(entries), now=10.5)  # k0 expired at 10.0
    assert sorted(dropped) == ["k1", "k2"] and c.get("k4", 10.5) and c.get("k3", 10.5)
    assert c.stores == 0  # restoring is not storing


def test_an_entry_the_caller_cannot_use_is_a_miss_not_a_hit():
    c = ResponseCache(max_entries=4, ttl_s=60)
    c.put(c.entry("k", "t", "m", "coding", b"{}", 0.0))
    assert c.get("k", 1.0, accept=lambda e: False) is None
    assert (c.hits, c.misses) == (0, 1)
    assert c.get("k", 1.0, accept=lambda e: e.model == "m") is not None
    assert (c.hits, c.misses) == (1, 1)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_entries"):
        ResponseCache(max_entries=0)
    with pytest.raises(ValueError, match="ttl_s"):
        ResponseCache(ttl_s=0)


# -- end to end --------------------------------------------------------------------------------------

DET = {"model": "auto", "messages": CODING, "temperature": 0}


async def _router(aiohttp_client, tmp_path, sim_port: int, *, db: str = "cache.db", **extra):
    cfg = parse_config({**fleet_config(sim_port), **extra})
    app = make_app(cfg, db_path=tmp_path / db, admin_local_only=True)
    return await aiohttp_client(app), app


async def _upstream_calls(sim) -> int:
    async with sim_client(sim) as c:
        models = (await (await c.get("/admin/models")).json())["models"]
    return sum(m["requests"] for m in models.values())


@pytest.mark.asyncio
async def test_a_repeated_deterministic_request_is_answered_from_the_cache(sim, aiohttp_client, tmp_path):
    client, app = await _router(aiohttp_client, tmp_path, sim.port)
    r1 = await client.post("/v1/chat/completions", json=DET)
    b1 = await r1.json()
    assert r1.status == 200 and r1.headers["X-Router-Cache"] == "miss" and b1["router"]["cache"] == "miss"
    calls = await _upstream_calls(sim)
    r2 = await client.post("/v1/chat/completions", json=DET)
    b2 = await r2.json()
    assert r2.status == 200 and r2.headers["X-Router-Cache"] == "hit"
    assert await _upstream_calls(sim) == calls  # no upstream call
    assert b2["router"]["cache"] == "hit" and b2["router"]["cost_usd"] == 0.0
    assert b2["choices"] == b1["choices"] and b2["model"] == b1["model"] == r2.headers["X-Router-Model"]
    assert b2["router"]["event_id"] != b1["router"]["event_id"]

    # feedback on a hit is recorded but not learned: the posterior does not move
    service = app[SERVICE]
    before = service.router.arm_stats()
    fb = await client.post("/v1/feedback", json={"event_id": b2["router"]["event_id"], "score": 0.0})
    assert fb.status == 200 and (await fb.json())["learned"] is False
    assert service.router.arm_stats() == before
    await service.flush()
    row = await service.store.get_decision(b2["router"]["event_id"])
    assert row.status == "cached" and row.cost_usd == 0.0 and row.learn is False

    metrics = await (await client.get("/metrics")).text()
    assert 'bandit_router_cache_requests_total{result="hit"} 1.0' in metrics


@pytest.mark.asyncio
async def test_non_deterministic_requests_and_bypass_reach_the_upstream(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port)
    warm = {**DET, "temperature": 0.7}
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json=warm)
        assert r.status == 200 and "X-Router-Cache" not in r.headers and "cache" not in (await r.json())["router"]
    await client.post("/v1/chat/completions", json=DET)
    calls = await _upstream_calls(sim)
    r = await client.post("/v1/chat/completions", json=DET, headers={"X-Router-Cache": "bypass"})
    assert r.status == 200 and r.headers["X-Router-Cache"] == "bypass"
    assert await _upstream_calls(sim) == calls + 1
    r = await client.post("/v1/chat/completions", json=DET)  # the bypass refreshed the entry; this one hits
    assert r.headers["X-Router-Cache"] == "hit"


@pytest.mark.asyncio
async def test_entries_are_never_served_across_tenants(sim, aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.setenv("TEAM_A_KEYS", "key-aaaaaaaaaaaaaaaa")
    monkeypatch.setenv("TEAM_B_KEYS", "key-bbbbbbbbbbbbbbbb")
    client, _ = await _router(aiohttp_client, tmp_path, sim.port,
                              auth={"tenant_keys_env": {"team-a": "TEAM_A_KEYS", "team-b": "TEAM_B_KEYS"}})
    a = {"Authorization": "Bearer key-aaaaaaaaaaaaaaaa"}
    b = {"Authorization": "Bearer key-bbbbbbbbbbbbbbbb"}
    assert (await client.post("/v1/chat/completions", json=DET, headers=a)).headers["X-Router-Cache"] == "miss"
    assert (await client.post("/v1/chat/completions", json=DET, headers=a)).headers["X-Router-Cache"] == "hit"
    calls = await _upstream_calls(sim)
    # team b sends the same request (and claims team a's tenant header, which authentication overrides)
    r = await client.post("/v1/chat/completions", json=DET, headers={**b, "X-Router-Tenant": "team-a"})
    assert r.status == 200 and r.headers["X-Router-Cache"] == "miss"
    assert await _upstream_calls(sim) == calls + 1


@pytest.mark.asyncio
async def test_without_auth_the_tenant_header_scopes_the_cache(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port)
    h1, h2 = {"X-Router-Tenant": "one"}, {"X-Router-Tenant": "two"}
    assert (await client.post("/v1/chat/completions", json=DET, headers=h1)).headers["X-Router-Cache"] == "miss"
    assert (await client.post("/v1/chat/completions", json=DET, headers=h2)).headers["X-Router-Cache"] == "miss"
    assert (await client.post("/v1/chat/completions", json=DET, headers=h2)).headers["X-Router-Cache"] == "hit"
    bad = await client.post("/v1/chat/completions", json=DET, headers={"X-Router-Tenant": "a b"})
    assert bad.status == 422 and "X-Router-Tenant" in (await bad.json())["error"]["message"]


@pytest.mark.asyncio
async def test_the_cache_survives_a_restart_and_entries_expire(sim, aiohttp_client, tmp_path):
    client, app = await _router(aiohttp_client, tmp_path, sim.port, cache={"ttl_s": 1.5})
    assert (await client.post("/v1/chat/completions", json=DET)).headers["X-Router-Cache"] == "miss"
    await client.close()  # the app's cleanup flushes the store
    client, _ = await _router(aiohttp_client, tmp_path, sim.port, cache={"ttl_s": 1.5})
    calls = await _upstream_calls(sim)
    assert (await client.post("/v1/chat/completions", json=DET)).headers["X-Router-Cache"] == "hit"
    assert await _upstream_calls(sim) == calls
    await asyncio.sleep(1.6)
    assert (await client.post("/v1/chat/completions", json=DET)).headers["X-Router-Cache"] == "miss"


@pytest.mark.asyncio
async def test_a_pass_through_and_a_routed_request_do_not_share_entries(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port)
    r = await client.post("/v1/chat/completions", json=DET)
    chosen = r.headers["X-Router-Model"]
    r = await client.post("/v1/chat/completions", json={**DET, "model": chosen})
    assert r.headers["X-Router-Cache"] == "miss"  # (the body's model differs too: see the locality test below)
    r = await client.post("/v1/chat/completions", json={**DET, "model": chosen})
    assert r.headers["X-Router-Cache"] == "hit"


@pytest.mark.asyncio
async def test_the_same_body_with_a_narrower_eligible_set_is_a_different_entry(sim, aiohttp_client, tmp_path):
    """The body is byte-for-byte the same; only the locality header narrows the eligible models. An
    answer from a model outside the locality must not be served to the restricted request."""
    cfg = fleet_config(sim.port)
    for m in cfg["models"]:
        if m["name"] == "glm-5":
            m["locality"] = "local"
    client, app = await _router(aiohttp_client, tmp_path, sim.port, models=cfg["models"])
    r = await client.post("/v1/chat/completions", json=DET)
    assert r.headers["X-Router-Cache"] == "miss" and r.headers["X-Router-Model"] != "glm-5"
    assert (await client.post("/v1/chat/completions", json=DET)).headers["X-Router-Cache"] == "hit"
    local = {"X-Router-Locality": "local"}
    r = await client.post("/v1/chat/completions", json=DET, headers=local)
    assert r.status == 200 and r.headers["X-Router-Cache"] == "miss" and r.headers["X-Router-Model"] == "glm-5"
    r = await client.post("/v1/chat/completions", json=DET, headers=local)
    assert r.headers["X-Router-Cache"] == "hit" and r.headers["X-Router-Model"] == "glm-5"
    assert app[SERVICE].cache.stats()["hits"] == 2


@pytest.mark.asyncio
async def test_the_cache_can_be_turned_off(sim, aiohttp_client, tmp_path):
    client, app = await _router(aiohttp_client, tmp_path, sim.port, cache={"enabled": False})
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json=DET)
        assert r.status == 200 and "X-Router-Cache" not in r.headers
    assert app[SERVICE].cache is None


def _sse_text(raw: bytes) -> str:
    import json

    out = []
    for line in raw.decode().split("\n\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:]).get("choices") or ():
                out.append((c.get("delta") or {}).get("content") or "")
    return "".join(out)


@pytest.mark.asyncio
async def test_streamed_requests_share_the_cache_both_ways(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port)
    streamed = {**DET, "stream": True}
    r = await client.post("/v1/chat/completions", json=streamed)
    assert r.status == 200 and r.headers["X-Router-Cache"] == "miss"
    first = await r.read()
    assert first.endswith(b"data: [DONE]\n\n")
    calls = await _upstream_calls(sim)
    r = await client.post("/v1/chat/completions", json=streamed)  # stored from the stream, replayed
    assert r.status == 200 and r.headers["X-Router-Cache"] == "hit"
    again = await r.read()
    assert _sse_text(again) == _sse_text(first) != "" and again.endswith(b"data: [DONE]\n\n")
    r = await client.post("/v1/chat/completions", json=DET)  # the same entry answers a plain request
    body = await r.json()
    assert r.headers["X-Router-Cache"] == "hit" and body["choices"][0]["message"]["content"] == _sse_text(first)
    assert await _upstream_calls(sim) == calls

    # and the other way round, through the official SDK: a plain answer replayed to a stream
    import openai

    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    other = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    plain = await sdk.chat.completions.create(model="auto", messages=other, temperature=0)
    calls = await _upstream_calls(sim)
    stream = await sdk.chat.completions.create(model="auto", messages=other, temperature=0, stream=True,
                                               stream_options={"include_usage": True})
    pieces, usage = [], None
    async for chunk in stream:
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == plain.choices[0].message.content and usage.completion_tokens > 0
    assert await _upstream_calls(sim) == calls
    await sdk.close()
