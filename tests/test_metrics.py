"""GET /metrics: Prometheus text, in process against the simulator (as tests/test_fallback.py)."""

from __future__ import annotations

import pytest
from fleet import CODING, fleet_config, sim_set
from prometheus_client.parser import text_string_to_metric_families

from bandit_router.config import parse_config
from bandit_router.server import make_app
from bandit_router.server.keys import SERVICE

TOKEN = "metrics-admin-token-0123456789"





async def _router(aiohttp_client, tmp_path, sim_port: int, **kw: object):
    cfg = parse_config(fleet_config(sim_port, retries=0, **kw))
    app = make_app(cfg, db_path=tmp_path / "m.db", admin_local_only=True)
    return await aiohttp_client(app), app


async def _scrape(client, **kw) -> dict[str, list]:
    r = await client.get("/metrics", **kw)
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"].startswith("text/plain")
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(await r.text()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(samples: dict[str, list], name: str, **labels: str) -> float:
    hits = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, samples.get(name))
    return hits[0]


@pytest.mark.asyncio
async def test_metrics_count_requests_latency_cost_feedback_and_state(sim, aiohttp_client, tmp_path):
    client, app = await _router(aiohttp_client, tmp_path, sim.port)
    eids = []
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
        assert r.status == 200 and r.headers["X-Router-Model"] == "gpt-5.4"
        eids.append(r.headers["X-Router-Event-Id"])
    await sim_set(sim, "gpt-5.4", {"fail_rate": 1.0})
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert r.status == 200 and r.headers["X-Router-Fallback"] == "gpt-5.4" and r.headers["X-Router-Model"] == "glm-5"
    assert (await client.post("/v1/chat/completions", json={"model": "nope", "messages": CODING})).status == 404
    for eid, body in ((eids[0], {"score": 1.0}), (eids[1], {"score": 0.5, "source": "a prompt-like free text"}),
                      (eids[1], {"score": 0.9, "source": "user"}),
                      (eids[0], {"score": 0.3, "source": "grader:made-up"})):
        f = await client.post("/v1/feedback", json={"event_id": eid, **body})
        assert f.status == 200, await f.text()

    m = await _scrape(client)
    req = "bandit_router_requests_total"
    assert _value(m, req, model="gpt-5.4", category="coding", status="200", fallback="false") == 2
    assert _value(m, req, model="glm-5", category="coding", status="200", fallback="true") == 1
    assert _value(m, req, model="none", category="none", status="404", fallback="false") == 1
    assert _value(m, "bandit_router_request_duration_seconds_count", stream="false") == 4
    assert _value(m, "bandit_router_upstream_duration_seconds_count", model="gpt-5.4") == 3  # 2 ok + 1 failed
    assert _value(m, "bandit_router_upstream_duration_seconds_count", model="glm-5") == 1
    assert _value(m, "bandit_router_overhead_seconds_count") == 2  # only single-call requests
    assert _value(m, "bandit_router_decisions_total", category="coding", model="gpt-5.4") == 3
    assert _value(m, "bandit_router_traffic_share", category="coding", model="gpt-5.4") == 1.0
    assert _value(m, "bandit_router_cost_usd_total", category="coding", model="gpt-5.4") > 0
    assert _value(m, "bandit_router_cost_usd_total", category="coding", model="glm-5") > 0
    assert _value(m, "bandit_router_feedback_total", source="user") == 2
    assert _value(m, "bandit_router_feedback_total", source="other") == 1  # a free-form source is not a label
    assert _value(m, "bandit_router_feedback_total", source="grader:other") == 1  # nor an unconfigured grader
    stats = app[SERVICE].router.arm_stats()
    for cat, rows in stats.items():
        for model, row in rows.items():
            assert _value(m, "bandit_router_posterior_quality_mean", category=cat, model=model) == pytest.approx(
                row["quality_mean"])
    for model in ("gpt-5.4", "glm-5", "gemini-3.1-pro"):
        assert _value(m, "bandit_router_breaker_state", model=model) == 0
    assert _value(m, "bandit_router_storage_queue_depth") >= 0


@pytest.mark.asyncio
async def test_breaker_state_gauge_shows_an_open_breaker(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port, breaker_failures=1, breaker_cooldown_s=60)
    await sim_set(sim, "gpt-5.4", {"fail_rate": 1.0})
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert r.status == 200 and r.headers["X-Router-Fallback"] == "gpt-5.4"
    m = await _scrape(client)
    assert _value(m, "bandit_router_breaker_state", model="gpt-5.4") == 2
    assert _value(m, "bandit_router_breaker_state", model="glm-5") == 0


@pytest.mark.asyncio
async def test_label_cardinality_stays_bounded_with_distinct_prompts(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port)
    eids = set()
    for i in range(50):
        prompt = [{"role": "user", "content": f"Write a Python function number {i} that sorts a list #{i}."}]
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": prompt})
        assert r.status == 200
        eid = r.headers["X-Router-Event-Id"]
        eids.add(eid)
        await client.post("/v1/feedback", json={"event_id": eid, "score": 0.7, "source": f"src-{i}"})
    m = await _scrape(client)
    label_sets = {(name, tuple(sorted(s.labels.items()))) for name, ss in m.items() for s in ss}
    values = {v for _, labels in label_sets for _, v in labels}
    assert not values & eids
    assert not any("sorts a list" in v or v.startswith("src-") for v in values)
    assert len(label_sets) < 250  # histogram buckets per configured model, a few categories: not per request
    assert len(m["bandit_router_feedback_total"]) == 1


@pytest.mark.asyncio
async def test_metrics_need_the_admin_token_when_one_is_configured(sim, aiohttp_client, tmp_path):
    cfg = fleet_config(sim.port)
    cfg["admin"] = {"token": TOKEN}
    client = await aiohttp_client(make_app(parse_config(cfg), db_path=tmp_path / "a.db"))
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"})).status == 401
    m = await _scrape(client, headers={"Authorization": f"Bearer {TOKEN}"})
    assert "bandit_router_storage_queue_depth" in m
    no_token = await aiohttp_client(make_app(parse_config(fleet_config(sim.port)), db_path=tmp_path / "b.db"))
    assert (await no_token.get("/metrics")).status == 403  # admin disabled: so are the metrics


@pytest.mark.asyncio
async def test_streamed_calls_are_timed_to_their_first_chunk(sim, aiohttp_client, tmp_path):
    client, _ = await _router(aiohttp_client, tmp_path, sim.port)
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING, "stream": True})
        assert r.status == 200 and (await r.text()).rstrip().endswith("[DONE]")
    m = await _scrape(client)
    assert _value(m, "bandit_router_upstream_first_chunk_seconds_count", model="gpt-5.4") == 2
    assert _value(m, "bandit_router_request_duration_seconds_count", stream="true") == 2
