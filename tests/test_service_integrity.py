"""Service edge cases found in review, in process against a real app and the simulator on loopback:
scheduled jobs on the loop, overload leaves the posterior alone, feedback for in-flight decisions,
bounded categories, pass-through to a category-restricted model, the forgetting clock persisted."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from bandit_router.config import parse_config
from bandit_router.costs import Price
from bandit_router.providers.base import Usage
from bandit_router.router import BanditSettings, ModelSpec, Router
from bandit_router.server import make_app
from bandit_router.server.keys import SCHEDULER, SERVICE
from bandit_router.service import Hints
from bandit_router.simulator import make_app as make_simulator

CODING = [{"role": "user", "content": "Write a Python function that sorts a list."}]
CHAT = [{"role": "user", "content": "Tell me about the weather in spring."}]


@pytest_asyncio.fixture
async def stack(aiohttp_server, aiohttp_client, tmp_path):
    sim = await aiohttp_server(make_simulator(seed=3))
    models = [{"name": n, "base_url": f"http://127.0.0.1:{sim.port}/v1", "input_price": 1.0, "output_price": 2.0}
              for n in ("gpt-5.4", "glm-5")]
    models[1]["categories"] = ["coding"]  # glm-5 serves coding only
    cfg = parse_config({"models": models, "bandit": {"seed": 1, "half_life_seconds": 3600.0}})
    app = make_app(cfg, db_path=tmp_path / "integrity.db")
    client = await aiohttp_client(app)
    return client, app


@pytest.mark.asyncio
async def test_scheduled_jobs_are_coroutines_run_on_the_loop(stack):
    _, app = stack
    jobs = app[SCHEDULER].get_jobs()
    assert {j.id for j in jobs} == {"checkpoint", "expire", "forget"}
    for job in jobs:  # a plain function would run on apscheduler's thread pool, racing the handlers
        assert asyncio.iscoroutinefunction(job.func), job.id


@pytest.mark.asyncio
async def test_overloaded_feedback_is_refused_before_learning(stack):
    client, app = stack
    service = app[SERVICE]
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    eid, model = r.headers["X-Router-Event-Id"], r.headers["X-Router-Model"]
    await service.flush()
    before = service.router.arm_stats()["coding"][model]
    q = service.store._q
    saved, q.maxsize = q.maxsize, max(q.qsize(), 1)
    try:
        r = await client.post("/v1/feedback", json={"event_id": eid, "score": 1.0})
        assert r.status == 503 and "not recorded" in (await r.json())["error"]["message"]
        assert service.router.arm_stats()["coding"][model] == before  # nothing learned
    finally:
        q.maxsize = saved
    r = await client.post("/v1/feedback", json={"event_id": eid, "score": 1.0})
    assert r.status == 200
    assert service.router.arm_stats()["coding"][model]["observations"] == before["observations"] + 1


@pytest.mark.asyncio
async def test_feedback_for_an_in_flight_decision_writes_its_row_first(stack):
    _, app = stack
    service = app[SERVICE]
    service.cache_size = 2
    d = service.decide(CODING, Hints(), record=False)  # as a streamed call: the row is written at the end
    for _ in range(5):  # push it out of the LRU; it stays in flight
        service.decide(CODING, Hints())
    assert d.event_id not in service._tracked
    out = await service.feedback(d.event_id, *_signal(0.9))
    assert out["learned"] and out["decision_quality"] == pytest.approx(0.9)
    row = await service.store.get_decision(d.event_id)
    assert row is not None and row.quality == pytest.approx(0.9)
    service.account(d, Usage(10, 5, 0))
    await service.flush()
    row = await service.store.get_decision(d.event_id)
    assert row.status == "completed" and row.quality == pytest.approx(0.9) and row.completion_tokens == 5


@pytest.mark.asyncio
async def test_an_evicted_in_flight_decision_keeps_its_tenant_and_locality(aiohttp_server, tmp_path):
    """Found in review: the call's end dropped the decision from the in-flight set before charging
    its tenant and choosing its graders, so a decision the LRU had evicted was charged to "default"
    and an LLM judge outside its locality was allowed to see it."""
    from feedback.graders.judge import LLMJudgeGrader

    sim = await aiohttp_server(make_simulator(seed=3))
    url = f"http://127.0.0.1:{sim.port}/v1"
    cfg = parse_config({"models": [{"name": "gpt-5.4", "base_url": url, "input_price": 1.0, "output_price": 2.0},
                                   {"name": "glm-5", "base_url": url, "input_price": 1.0, "output_price": 2.0,
                                    "locality": "local"}],
                        "budget": {"usd_per_day": 1000.0}})
    app = make_app(cfg, db_path=tmp_path / "evicted.db")
    async with TestClient(TestServer(app)):  # the service is built on start-up
        service = app[SERVICE]
        service.cache_size = 2
        d = service.decide(CODING, Hints(tenant="team-a", locality="local"), record=False)
        assert d.model == "glm-5"
        for _ in range(5):  # push it out of the LRU; it stays in flight
            service.decide(CHAT, Hints())
        assert d.event_id not in service._tracked
        kept = []
        service.grading.schedule = lambda *a, keep=None, **k: kept.append(keep)
        service.account(d, Usage(1000, 500, 0), graded=(CODING, "an answer", None))
        assert service.pacers.pacers["team-a"].spent > 0  # charged to its tenant, not to "default"
        assert "default" not in service.pacers.pacers  # (reading a weight creates no pacer)
        (keep,) = kept
        assert keep is not None and not keep(LLMJudgeGrader(model="gpt-5.4"))  # outside "local": withheld
        assert keep(LLMJudgeGrader(model="glm-5"))
        assert not service._judge_allowed(None)(LLMJudgeGrader(model="glm-5"))  # unknown: fails closed


def _signal(q: float):
    from feedback import parse_feedback

    body = {"event_id": "x", "score": q}
    return parse_feedback(body), body


@pytest.mark.asyncio
async def test_new_category_names_are_bounded(stack):
    client, app = stack
    service = app[SERVICE]
    service.router.max_categories = len(service.router.arm_stats()) + 1
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CHAT},
                          headers={"X-Router-Category": "team-a"})
    assert r.status == 200 and r.headers["X-Router-Category"] == "team-a"
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CHAT},
                          headers={"X-Router-Category": "team-b"})
    body = await r.json()
    assert r.status == 422 and "max_categories" in body["error"]["message"]
    assert body["error"]["param"] == "router.category"
    r = await client.post("/v1/route", json={"messages": CHAT, "category": "team-c"})
    assert r.status == 422 and (await r.json())["error"]["param"] == "category"


@pytest.mark.asyncio
async def test_pass_through_to_a_category_restricted_model(stack):
    client, _ = stack
    r = await client.post("/v1/chat/completions", json={"model": "glm-5", "messages": CHAT})
    assert r.status == 200, await r.text()
    assert r.headers["X-Router-Model"] == "glm-5" and r.headers["X-Router-Category"] != "coding"
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CHAT})
    assert r.headers["X-Router-Model"] == "gpt-5.4"  # auto never picks glm-5 outside coding


def test_forgetting_clock_survives_export_and_import():
    settings = BanditSettings(seed=0, half_life_seconds=100.0, half_life_events=None)
    a = Router([ModelSpec("m1", Price(1, 2)), ModelSpec("m2", Price(1, 2))], settings)
    for t in range(5):
        d = a.decide(CODING, timestamp=1000.0 + t)
        a.learn(d, 1.0, now=1000.0 + t)
    b = Router([ModelSpec("m1", Price(1, 2)), ModelSpec("m2", Price(1, 2))], settings)
    b.import_state(a.dirty_states())
    a.forget(1104.0)
    b.forget(1104.0)  # 100 s after the last decay: one half-life, in both
    for m in ("m1", "m2"):
        na = a.arm_stats()["coding"][m]["effective_observations"]
        nb = b.arm_stats()["coding"][m]["effective_observations"]
        assert nb == pytest.approx(na) and np.isfinite(nb)
    closed_form = 0.5 * sum(2 ** (-(4 - t) / 100) for t in range(5))  # each learn decayed, then 100 s more
    assert sum(s["effective_observations"] for s in b.arm_stats()["coding"].values()) == pytest.approx(closed_form)


@pytest.mark.asyncio
async def test_a_disabled_model_stays_disabled_across_a_restart(sim, aiohttp_client, tmp_path):
    """The service's own state rows (model switches, budgets) share the state table with the
    posteriors; restoring must not read them as posterior sums (it once raised at start-up)."""
    from fleet import fleet_config

    cfg = parse_config({**fleet_config(sim.port), "budget": {"usd_per_day": 5.0}})
    client = await aiohttp_client(make_app(cfg, db_path=tmp_path / "r.db", admin_local_only=True))
    assert (await client.post("/admin/models/glm-5/disable")).status == 200
    chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    assert (await client.post("/v1/chat/completions", json=chat)).status == 200  # a budget row too
    await client.close()
    client = await aiohttp_client(make_app(cfg, db_path=tmp_path / "r.db", admin_local_only=True))
    arms = (await (await client.get("/admin/arms")).json())
    assert arms["categories"]["general"]["glm-5"]["enabled"] is False
    assert arms["budgets"]["default"]["requests_today"] == 1


@pytest.mark.asyncio
async def test_odd_bodies_get_clear_errors_and_leave_nothing_in_flight(stack):
    """Found in review: a stream_options that is not an object, and a body nested deeper than orjson
    writes back, were 500s that left their decision in flight."""
    client, app = stack
    service = app[SERVICE]
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING, "stream": True,
                                                        "stream_options": "yes"})
    assert r.status == 422 and "stream_options" in (await r.json())["error"]["message"]
    deep: dict = {}
    x = deep
    for _ in range(300):
        x["a"] = {}
        x = x["a"]
    for path in ("/v1/chat/completions", "/v1/route", "/v1/feedback"):
        r = await client.post(path, json={"model": "auto", "messages": CODING, "temperature": 0, "metadata": deep})
        assert r.status == 400 and "nested more than" in (await r.json())["error"]["message"], path
    ok = {"model": "auto", "messages": CODING, "temperature": 0, "metadata": {"a": [{"b": 1}] * 50}}
    assert (await client.post("/v1/chat/completions", json=ok)).status == 200  # many brackets, shallow: fine
    service.books.run()  # (what the answers left to do: any other endpoint would run it first)
    assert not service._inflight


@pytest.mark.asyncio
async def test_an_error_of_ours_after_the_decision_writes_it_as_failed(stack, monkeypatch):
    client, app = stack
    service = app[SERVICE]

    def broken(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(service, "cache_key", broken)
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert r.status == 500 and not service._inflight
    await service.flush()
    eid = next(reversed(service._tracked))  # the last decision
    assert (await service.store.get_decision(eid)).status == "failed"


async def _routed_to(chat, aiohttp_server, tmp_path, **config):
    """A router (no response cache) whose one model "m" ($1 / $10 per 1M tokens) is a small
    upstream answering POST /v1/chat/completions with ``chat``."""
    from aiohttp import web

    up = web.Application()
    up.router.add_post("/v1/chat/completions", chat)
    upstream = await aiohttp_server(up)
    cfg = parse_config({"models": [{"name": "m", "base_url": f"http://127.0.0.1:{upstream.port}/v1",
                                    "input_price": 1.0, "output_price": 10.0}], "cache": {"enabled": False},
                        **config})
    return make_app(cfg, db_path=tmp_path / "routed.db")


@pytest.mark.asyncio
async def test_a_stream_the_client_leaves_is_still_charged_to_its_budget(aiohttp_server, tmp_path):
    """Found in review: a stream cut short ("stop generating") was written with no cost and never
    charged, though the upstream bills what it generated; a client could dodge its budget so."""
    import orjson
    from aiohttp import web

    async def slow_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(40):
            chunk = {"id": "s", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": "word " * 8}, "finish_reason": None}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            await asyncio.sleep(0.05)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = await _routed_to(slow_stream, aiohttp_server, tmp_path, budget={"usd_per_day": 10.0})
    async with TestClient(TestServer(app)) as client:
        service = app[SERVICE]
        r = await client.post("/v1/chat/completions", headers={"X-Router-Tenant": "t2"},
                              json={"model": "auto", "stream": True, "messages": CHAT})
        eid = r.headers["X-Router-Event-Id"]
        await r.content.readline()
        r.close()  # the client leaves after the first chunk
        for _ in range(100):  # the router notices at its next write
            if eid not in service._inflight:
                break
            await asyncio.sleep(0.05)
        assert eid not in service._inflight
        await service.flush()
        row = await service.store.get_decision(eid)
        assert row.status == "failed" and row.cost_usd > 0 and row.completion_tokens >= 10
        assert service.pacers.pacers["t2"].spent == pytest.approx(row.cost_usd)


@pytest.mark.asyncio
@pytest.mark.parametrize("end", ["with the last chunks", "in a read of its own"])
async def test_a_client_gone_at_the_streams_last_write_does_not_complete_it(aiohttp_server, tmp_path, monkeypatch,
                                                                            end):
    """Found in review: the provider marks a stream finished as it yields the chunks that came with
    the upstream's end (or after its last yield, when the end comes alone); a client gone while the
    last piece (with data: [DONE]) was being written must leave a stream cut short ("failed"), not
    a completed one."""
    import orjson
    from aiohttp import web

    from bandit_router.calls import DONE

    async def all_at_once(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunks = [{"id": "s", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in ("a ", "b")]
        body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
        if end == "with the last chunks":
            await resp.write(body + b"data: [DONE]\n\n")
        else:
            await resp.write(body)
            await asyncio.sleep(0.1)  # the router has relayed the chunks by then
            await resp.write(b"data: [DONE]\n\n")
        return resp

    app = await _routed_to(all_at_once, aiohttp_server, tmp_path)
    real_write_eof = web.StreamResponse.write_eof

    async def gone_at_the_end(self, data: bytes = b"") -> None:
        if data.endswith(DONE):  # the router's last piece (the upstream ends its body with no data)
            raise ConnectionResetError("client gone")
        await real_write_eof(self, data)
    monkeypatch.setattr(web.StreamResponse, "write_eof", gone_at_the_end)
    async with TestClient(TestServer(app)) as client:
        service = app[SERVICE]
        r = await client.post("/v1/chat/completions", json={"model": "auto", "stream": True, "messages": CHAT})
        eid = r.headers["X-Router-Event-Id"]
        got = await r.read()  # (the client stays: leaving early would cancel the handler, another path)
        assert DONE not in got
        if end == "in a read of its own":
            assert b'"b"' in got  # all the chunks went out, only the end did not
        assert eid not in service._inflight
        await service.flush()
        assert (await service.store.get_decision(eid)).status == "failed"


@pytest.mark.asyncio
@pytest.mark.parametrize("budget", [False, True])
async def test_the_answer_goes_out_before_its_books_unless_it_reports_a_budget(aiohttp_server, tmp_path, monkeypatch,
                                                                                budget):
    """A completed call is written to the books (its row, the metrics, the graders) on the loop's
    turn after its answer has been sent, at the cost the answer reports; with budgets configured
    the answer reports the tenant's spending after the call, so the tenant is charged first."""
    from aiohttp import web

    sim = await aiohttp_server(make_simulator(seed=3))
    raw = {"models": [{"name": "gpt-5.4", "base_url": f"http://127.0.0.1:{sim.port}/v1",
                       "input_price": 1.0, "output_price": 2.0}], "cache": {"enabled": False}}
    if budget:
        raw["budget"] = {"usd_per_day": 100.0}
    app = make_app(parse_config(raw), db_path=tmp_path / "order.db")
    order: list[str] = []
    real_write_eof = web.StreamResponse.write_eof

    async def write_eof(self, data: bytes = b"") -> None:
        await real_write_eof(self, data)
        if self.headers.get("X-Router-Event-Id"):
            order.append("sent")
    monkeypatch.setattr(web.StreamResponse, "write_eof", write_eof)
    async with TestClient(TestServer(app)) as client:
        service = app[SERVICE]
        real_finish = service._finish

        def finish(d, **fields):
            order.append("recorded")
            return real_finish(d, **fields)
        monkeypatch.setattr(service, "_finish", finish)
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CHAT})
        assert r.status == 200
        out = await r.json()
        await service.flush()
        assert order == (["recorded", "sent"] if budget else ["sent", "recorded"])
        row = await service.store.get_decision(out["router"]["event_id"])
        assert out["router"]["cost_usd"] > 0
        assert row.status == "completed" and row.cost_usd == pytest.approx(out["router"]["cost_usd"])
        if budget:
            assert out["router"]["budget"]["spent_today_usd"] == pytest.approx(out["router"]["cost_usd"])


@pytest.mark.asyncio
async def test_a_failure_writing_the_books_after_the_answer_is_logged(stack, monkeypatch, caplog):
    client, app = stack
    service = app[SERVICE]

    def broken(*a, **k):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(service, "_settle", broken)
    with caplog.at_level("ERROR", logger="bandit_router"):
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CHAT})
        assert r.status == 200  # the answer had gone out
        eid = r.headers["X-Router-Event-Id"]
        service.books.run()
    assert any("recording the completed call" in rec.getMessage() for rec in caplog.records)
    assert eid not in service._inflight  # not left in flight: its row is written all the same
    await service.flush()
    assert (await service.store.get_decision(eid)).status == "completed"
