"""The scheduled jobs (expiry, checkpoints, time-based forgetting) against a real app on loopback."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bandit_router.config import parse_config
from bandit_router.server import make_app
from bandit_router.server.keys import SERVICE
from bandit_router.simulator import make_app as make_simulator

CODING = [{"role": "user", "content": "Write a Python function that sorts a list."}]


@pytest_asyncio.fixture
async def stack(aiohttp_server, aiohttp_client, tmp_path):
    sim = await aiohttp_server(make_simulator(seed=3))
    cfg = parse_config({
        "models": [{"name": n, "base_url": f"http://127.0.0.1:{sim.port}/v1", "input_price": 1.0, "output_price": 2.0}
                   for n in ("gpt-5.4", "glm-5")],
        "bandit": {"seed": 1, "half_life_seconds": 1.0, "half_life_events": None},
        "feedback": {"window_s": 0.5},
    })
    app = make_app(cfg, db_path=tmp_path / "jobs.db")
    client = await aiohttp_client(app)
    return client, app


async def _complete(client) -> str:
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert r.status == 200
    return r.headers["X-Router-Event-Id"]


@pytest.mark.asyncio
async def test_feedback_window_then_expiry(stack):
    client, app = stack
    fresh = await _complete(client)
    assert (await client.post("/v1/feedback", json={"event_id": fresh, "score": 1})).status == 200
    old = await _complete(client)
    await asyncio.sleep(0.6)
    r = await client.post("/v1/feedback", json={"event_id": old, "score": 1})
    assert r.status == 410 and "feedback window" in (await r.json())["error"]["message"]
    service = app[SERVICE]
    await service.flush()
    assert await service.expire() == 2
    r = await client.post("/v1/feedback", json={"event_id": old, "score": 1})
    assert r.status == 404


@pytest.mark.asyncio
async def test_checkpoint_and_time_based_forgetting(stack):
    client, app = stack
    service = app[SERVICE]
    for _ in range(5):
        eid = await _complete(client)
        assert (await client.post("/v1/feedback", json={"event_id": eid, "score": 1})).status == 200
    before = service.router.arm_stats()["coding"]
    n_before = sum(a["effective_observations"] for a in before.values())
    last = service.router._cats["coding"].last_t
    await asyncio.sleep(1.0)
    now = time.time()
    service.forget()  # the scheduled job: about one half-life has passed
    after = service.router.arm_stats()["coding"]
    n_after = sum(a["effective_observations"] for a in after.values())
    assert n_after == pytest.approx(n_before * 2 ** -(now - last), rel=0.01)  # however slow the machine
    await service.flush()
    saved = service.store.load_state("category:coding")
    assert saved, "the checkpoint wrote the category state"


@pytest.mark.asyncio
async def test_upstream_keys_never_leak(aiohttp_server, aiohttp_client, tmp_path, monkeypatch, caplog):
    secret = "sk-secret-do-not-print-4242"
    monkeypatch.setenv("TEST_UPSTREAM_KEY", secret)
    sim_app = make_simulator(seed=3)
    sim = await aiohttp_server(sim_app)
    cfg = parse_config({"models": [{"name": "gpt-5.4", "base_url": f"http://127.0.0.1:{sim.port}/v1",
                                    "api_key_env": "TEST_UPSTREAM_KEY", "input_price": 1.0, "output_price": 2.0}],
                        "bandit": {"seed": 1}})
    client = await aiohttp_client(make_app(cfg, db_path=tmp_path / "keys.db", admin_local_only=True))
    ok = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert ok.status == 200
    # make the upstream fail, then look everywhere a key could surface
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{sim.port}/admin/models/gpt-5.4", json={"fail_rate": 1.0}) as r:
            assert r.status == 200
    failed = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    assert failed.status == 502
    texts = [await failed.text(), await (await client.get("/admin/arms")).text(),
             await (await client.get("/healthz")).text(), caplog.text]
    assert all(secret not in t for t in texts)


@pytest.mark.asyncio
async def test_per_model_limits_and_max_cost(aiohttp_server, aiohttp_client, tmp_path):
    sim = await aiohttp_server(make_simulator(seed=3))
    url = f"http://127.0.0.1:{sim.port}/v1"
    cfg = parse_config({"models": [
        {"name": "gpt-5.4", "base_url": url, "input_price": 2.5, "output_price": 20.0, "max_context_tokens": 100,
         "max_output_tokens": 7},
        {"name": "glm-5", "base_url": url, "input_price": 1.0, "output_price": 3.2}], "bandit": {"seed": 1}})
    client = await aiohttp_client(make_app(cfg, db_path=tmp_path / "limits.db"))
    long = [{"role": "user", "content": "Write a Python function. " + "word " * 400}]
    for _ in range(20):  # too long for gpt-5.4's 100-token window: only glm-5 may serve it
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": long})
        assert r.headers["X-Router-Model"] == "glm-5"
    # a passed-through request to gpt-5.4 gets its output capped at max_output_tokens
    r = await client.post("/v1/chat/completions", json={"model": "gpt-5.4", "messages": CODING, "max_tokens": 50})
    body = await r.json()
    assert r.status == 200 and body["usage"]["completion_tokens"] <= 7
    assert body["choices"][0]["finish_reason"] == "length"
    # max_cost_usd excludes models expected to cost more; none left: a 503 that says why
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING},
                          headers={"X-Router-Max-Cost-Usd": "0.0000001"})
    assert r.status == 503 and "max_cost_usd" in (await r.json())["error"]["message"]
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": long,
                                                        "router": {"max_cost_usd": 1.0}})
    assert r.status == 200


@pytest.mark.asyncio
async def test_graders_run_in_the_background_and_feed_back(aiohttp_server, aiohttp_client, tmp_path):
    sim = await aiohttp_server(make_simulator(seed=3))
    url = f"http://127.0.0.1:{sim.port}/v1"
    cfg = parse_config({
        "models": [{"name": "gpt-5.4", "base_url": url, "input_price": 2.5, "output_price": 20.0}],
        "bandit": {"seed": 1},
        "grading": {"graders": {"*": [{"type": "regex", "name": "expected", "mode": "search", "multiline": True,
                                       "ignore_case": True}],
                                "coding": [{"type": "code_tests", "name": "tests"}]},
                    "policy": {"rates": {"science": 0.0}}},
    })
    app = make_app(cfg, db_path=tmp_path / "grading.db", admin_local_only=True)
    client = await aiohttp_client(app)
    service = app[SERVICE]
    ref = {"pattern": r"^ANSWER: 42\.?$"}
    messages = [{"role": "user", "content": "Summarise the number 42.\nEXPECTED: 42"}]
    for stream in (False, True):
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": messages, "stream": stream,
                                                            "router": {"reference": ref, "category": "general"}})
        assert r.status == 200
        await r.read()
    # a grader failure (code_tests without tests in the reference) is counted, never a quality 0
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING,
                                                        "router": {"category": "coding"}})
    assert r.status == 200
    # sampled out: science has rate 0
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": messages,
                                                        "router": {"reference": ref, "category": "science"}})
    await service.settle()
    await service.flush()
    arms = await (await client.get("/admin/arms")).json()
    assert arms["graders"]["expected"]["graded"] == 2
    assert arms["graders"]["expected"]["skipped"] == 1
    assert arms["graders"]["tests"]["failed"] == 1 and "graded" not in arms["graders"]["tests"]
    row = arms["categories"]["general"]["gpt-5.4"]
    assert row["feedback_by_source"] == {"grader:expected": 2} and row["observations"] == 2
    assert arms["categories"]["coding"]["gpt-5.4"]["observations"] == 0


def test_bad_grader_spec_names_the_field():
    from bandit_router.config import ConfigError

    models = [{"name": "m", "base_url": "http://x/v1", "input_price": 1, "output_price": 1}]
    with pytest.raises(ConfigError, match=r"grading.*graders\.coding\.1\.mode"):
        parse_config({"models": models, "grading": {"graders": {"coding": [
            {"type": "json_valid"}, {"type": "regex", "mode": "bogus"}]}}})
    with pytest.raises(ConfigError, match=r"graders\.coding\.0.*type"):
        parse_config({"models": models, "grading": {"graders": {"coding": [{"type": "nope"}]}}})


def _judge_app(score: str) -> web.Application:
    """A tiny OpenAI-compatible judge upstream that always answers with a score."""
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        _judge_app.seen.append(body)  # type: ignore[attr-defined]
        return web.json_response({"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": score}}],
                                  "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.asyncio
async def test_llm_judge_never_judges_its_own_model_and_keeps_to_budget(aiohttp_server, aiohttp_client, tmp_path):
    _judge_app.seen = []  # type: ignore[attr-defined]
    sim = await aiohttp_server(make_simulator(seed=3))
    judge = await aiohttp_server(_judge_app("SCORE: 7\nmostly right"))
    cfg = parse_config({
        "models": [{"name": "gpt-5.4", "base_url": f"http://127.0.0.1:{sim.port}/v1", "input_price": 2.5,
                    "output_price": 20.0},
                   {"name": "judge", "base_url": f"http://127.0.0.1:{judge.port}/v1", "input_price": 1.0,
                    "output_price": 1.0, "categories": ["judging"]}],
        "bandit": {"seed": 1},
        # the configured judge is gpt-5.4 itself: it must hand over to its alternate for gpt-5.4's answers
        "grading": {"graders": {"*": [{"type": "llm_judge", "name": "judge", "model": "gpt-5.4",
                                       "alternates": ["judge"], "max_cost_usd": 0.001}]},
                    "policy": {"usd_per_hour": 3.6, "burst_usd": 0.0025}},
    })
    app = make_app(cfg, db_path=tmp_path / "judge.db", admin_local_only=True)
    client = await aiohttp_client(app)
    service = app[SERVICE]
    for _ in range(4):
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
        assert r.status == 200 and r.headers["X-Router-Model"] == "gpt-5.4"
        await service.settle()
    await service.flush()
    arms = await (await client.get("/admin/arms")).json()
    stats = arms["graders"]["judge"]
    # each judge call costs $0.000105 against a $0.0025 burst: all four fit; the judge upstream saw them all
    assert stats["graded"] == 4 and len(_judge_app.seen) == 4  # type: ignore[attr-defined]
    assert all(b["model"] == "judge" for b in _judge_app.seen)  # type: ignore[attr-defined]
    row = arms["categories"]["coding"]["gpt-5.4"]
    assert row["feedback_by_source"] == {"grader:judge": 4}
    # exhaust the budget: further answers are not judged (counted as over_budget)
    service.grading.policy.spend(1.0, __import__("time").time())
    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING})
    await service.settle()
    stats = (await (await client.get("/admin/arms")).json())["graders"]["judge"]
    assert stats["over_budget"] == 1 and stats["graded"] == 4
