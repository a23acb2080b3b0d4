"""Latency-aware routing: the estimator against closed forms, the router's deadline and latency
weight, persistence, and the HTTP hints end to end against the simulator on loopback."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fleet import sim_client
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.config import parse_config
from bandit_router.costs import Price
from bandit_router.latency import BUCKETS, TOTAL, TTFT, LatencyEstimates, bucket_of, quantile
from bandit_router.router import BanditSettings, ModelSpec, Router
from bandit_router.server import make_app

BUCKET_RATIO = (600.0 / 1e-3) ** (1 / BUCKETS)  # one bucket's width, as a ratio (about 1.18)

# -- the estimator -----------------------------------------------------------------------------------


def test_a_quantile_is_exact_up_to_one_bucket():
    values = np.geomspace(0.01, 100.0, 1001)
    w = np.zeros(BUCKETS)
    for v in values:
        w[bucket_of(v)] += 1
    for q in (0.1, 0.5, 0.9):
        exact = float(np.quantile(values, q))
        assert exact / BUCKET_RATIO <= quantile(w, q) <= exact * BUCKET_RATIO, q
    assert math.isnan(quantile(np.zeros(BUCKETS), 0.9))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.002, 300.0), min_size=1, max_size=60), st.floats(0.05, 0.95))
def test_quantile_property_within_a_bucket_of_the_sample_quantile(xs, q):
    w = np.zeros(BUCKETS)
    for v in xs:
        w[bucket_of(v)] += 1
    est = quantile(w, q)
    lo, hi = min(xs) / BUCKET_RATIO, max(xs) * BUCKET_RATIO
    assert lo <= est <= hi
    s = sorted(xs)
    k = math.ceil(q * len(s)) - 1  # the sample's q-quantile (inverse of the empirical cdf)
    assert s[max(k, 0)] / BUCKET_RATIO <= est <= s[max(k, 0)] * BUCKET_RATIO ** 2


def test_the_prior_is_a_log_normal_around_the_typical_value():
    e = LatencyEstimates(quantile=0.9, prior_sigma=0.5)
    e.add_model(ttft_s=1.0, total_s=8.0)
    ttft, total = e.quantiles()[:, 0]
    assert ttft == pytest.approx(math.exp(1.2816 * 0.5), rel=0.1)  # p90 of lognormal(0, 0.5)
    assert total == pytest.approx(8.0 * math.exp(1.2816 * 0.5), rel=0.1)


def test_observations_overwhelm_the_prior_and_forgetting_follows_a_slowdown():
    e = LatencyEstimates(quantile=0.5, decay=0.5 ** (1 / 50))
    e.add_model(ttft_s=1.0, total_s=10.0)
    for _ in range(50):
        e.observe(0, 0.2, 2.0)
    assert e.quantiles()[TTFT, 0] == pytest.approx(0.2, rel=0.2)
    assert e.quantiles()[TOTAL, 0] == pytest.approx(2.0, rel=0.2)
    total_before = e.h[TOTAL, 0].sum()
    for _ in range(50):  # one half-life of a slower model: 50 events
        e.observe(0, None, 6.0)
    assert e.quantiles()[TOTAL, 0] == pytest.approx(6.0, rel=0.2)  # the median moved to the new regime
    assert e.quantiles()[TTFT, 0] == pytest.approx(0.2, rel=0.2)  # untimed first tokens: unchanged
    assert e.h[TOTAL, 0].sum() == pytest.approx(total_before / 2 + sum(0.5 ** (i / 50) for i in range(50)), rel=1e-9)
    assert e.n[TOTAL, 0] == 100 and e.n[TTFT, 0] == 50


def test_histograms_add_up_across_processes():
    a, b, both = (LatencyEstimates(quantile=0.5, prior_weight=1e-9) for _ in range(3))
    for e in (a, b, both):
        e.add_model(1.0, 1.0)
    for v in (0.1, 0.2, 0.3):
        a.observe(0, None, v)
        both.observe(0, None, v)
    for v in (3.0, 4.0):
        b.observe(0, None, v)
        both.observe(0, None, v)
    merged = a.h + b.h
    assert np.allclose(merged, both.h, atol=1e-8)


def test_bad_latencies_are_refused():
    e = LatencyEstimates()
    e.add_model(1.0, 2.0)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="latency"):
            e.observe(0, None, bad)
    with pytest.raises(ValueError, match="quantile"):
        LatencyEstimates(quantile=1.0)
    with pytest.raises(ValueError, match="typical latency"):
        e.add_model(0.0, 1.0)


# -- the router ---------------------------------------------------------------------------------------

MSG = [{"role": "user", "content": "hello there, how are you today?"}]


def _router(measured: bool = True, **kw) -> Router:
    """Two models, "slow" the better one. ``measured``: 100 timed answers each at their typical
    latencies, so the decision's latency draw is within a few % of the estimate."""
    models = [ModelSpec("fast", Price(1.0, 1.0), priors={"general": (0.5, 1000.0)}, ttft_s=0.2, latency_s=2.0),
              ModelSpec("slow", Price(1.0, 1.0), priors={"general": (0.9, 1000.0)}, ttft_s=3.0, latency_s=30.0)]
    r = Router(models, BanditSettings(cost_weight=0.0, seed=1, explore=0.0, **kw))
    if measured:
        d = r.decide(MSG, category="general")
        for name, (ttft, total) in {"fast": (0.2, 2.0), "slow": (3.0, 30.0)}.items():
            d.arm = r.index[name]
            for _ in range(100):
                r.observe_latency(d, ttft, total)
    return r


def test_a_deadline_excludes_slow_models_and_falls_back_to_the_fastest():
    r = _router()
    assert r.decide(MSG, category="general").model == "slow"  # the better one, without hints
    d = r.decide(MSG, category="general", max_latency_s=1.0, stream=True)
    assert d.model == "fast" and d.deadline_met is True and d.latency_s < 1.0
    assert d.latencies is not None and d.latencies[1] > 1.0
    d = r.decide(MSG, category="general", max_latency_s=10.0, stream=True)  # both meet it: quality wins
    assert d.model == "slow" and d.deadline_met is True
    d = r.decide(MSG, category="general", max_latency_s=0.01, stream=True)  # nobody meets it
    assert d.model == "fast" and d.deadline_met is False
    d = r.decide(MSG, category="general", max_latency_s=10.0, stream=False)  # total latency: 30 s × p90
    assert d.model == "fast"
    assert r.decide(MSG, category="general").deadline_met is None


def test_the_latency_weight_trades_quality_for_speed():
    r = _router()
    # measured: the whole answer takes ~30 s vs ~2 s; 0.4 quality apart
    assert r.decide(MSG, category="general", latency_weight=0.005).model == "slow"  # 0.14 < 0.4
    d = r.decide(MSG, category="general", latency_weight=0.03)  # 0.84 > 0.4
    assert d.model == "fast" and d.deadline_met is None


def test_observed_latency_moves_the_estimate_and_the_choice():
    r = _router(half_life_events=20)
    d = r.decide(MSG, category="general", max_latency_s=1.0, stream=True)
    assert d.model == "fast"
    slow = r.decide(MSG, category="general")
    for _ in range(100):  # the slow model speeds up: its first token now comes in 0.3 s
        r.observe_latency(slow, 0.3, 3.0)
    assert r.latency("general")[0, 1] < 1.0  # forgetting followed it
    assert r.decide(MSG, category="general", max_latency_s=1.0, stream=True).model == "slow"


def test_a_model_whose_latency_is_unknown_still_gets_tried():
    """Point estimates alone would rule out a model whose prior is over the deadline forever: its
    first-token time is only seen when it streams. The decision's draw tries it now and then."""
    models = [ModelSpec(n, Price(1.0, 1.0), priors={"general": (q, 1000.0)}, ttft_s=2.0)
              for n, q in (("a", 0.9), ("b", 0.5))]
    r = Router(models, BanditSettings(cost_weight=0.0, seed=2, explore=0.0))
    chosen = []
    for _ in range(400):
        d = r.decide(MSG, category="general", max_latency_s=1.0, stream=True)
        chosen.append(d.model)
        r.observe_latency(d, 0.4 if d.model == "b" else 1.5, 5.0)  # b is really fast, a is not
    assert chosen[:100].count("b") >= 5  # tried while unknown
    assert chosen[-100:].count("b") >= 90  # and once measured, it is the one that meets the deadline


def test_latency_state_round_trips_and_old_states_still_load():
    r = _router(measured=False)
    d = r.decide(MSG, category="general")
    for v in (0.5, 0.7, 0.9):
        r.observe_latency(d, v, v * 10)
    state = r.dirty_states()
    assert "latency:general:slow" in state
    fresh = _router(measured=False)
    fresh.import_state(state)
    assert np.allclose(fresh.latency("general"), r.latency("general"))
    old = {k: v for k, v in state.items() if not k.startswith("latency:")}
    older = _router(measured=False)
    older.import_state(old)
    assert np.allclose(older.latency("general"), _router(measured=False).latency("general"))  # priors kept
    assert r.arm_stats()["general"]["slow"]["latency_observations"] == 3


def test_without_latency_hints_decisions_are_unchanged():
    a, b = _router(), _router()
    for _ in range(50):
        da = a.decide(MSG, category="general")
        db = b.decide(MSG, category="general", latency_weight=0.0, max_latency_s=None)
        assert da.model == db.model and np.array_equal(da.scores, db.scores) and db.latencies is None


# -- end to end ----------------------------------------------------------------------------------------

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Tell me a fun fact about octopuses."}]}


async def _fleet(aiohttp_client, tmp_path, sim_port: int):
    # the simulator's real per-model latencies (latency_scale 1: test speed); config priors as if
    # from the providers' documentation: claude slow, glm fast
    names = {"claude-opus-4.6": (0.04, 0.4), "glm-5": (0.01, 0.1)}
    models = [{"name": n, "base_url": f"http://127.0.0.1:{sim_port}/v1", "input_price": 1.0, "output_price": 1.0,
               "ttft_s": t, "latency_s": total,
               "priors": {"general": {"quality": 0.95 if n.startswith("claude") else 0.5, "strength": 1000}}}
              for n, (t, total) in names.items()]
    cfg = parse_config({"models": models, "bandit": {"seed": 3, "cost_weight": 0.0, "explore": 0.0}})
    app = make_app(cfg, db_path=tmp_path / "lat.db", admin_local_only=True)
    return await aiohttp_client(app), app


@pytest.mark.asyncio
async def test_deadline_hints_over_http(sim, aiohttp_client, tmp_path):
    async with sim_client(sim) as c:
        # 4x test speed: far enough apart that a busy machine's delays do not blur the two models
        assert (await c.post("/admin/settings", json={"latency_scale": 4})).status == 200
    client, app = await _fleet(aiohttp_client, tmp_path, sim.port)
    # measure both models first (pass-through calls are timed too), so the decisions' latency draws
    # sit close to the estimates: glm-5's first token ~40 ms (p90 ~65), claude's ~160 ms (p90 ~250)
    for model in ("glm-5", "claude-opus-4.6"):
        for _ in range(20):
            r = await client.post("/v1/chat/completions", json={**CHAT, "model": model, "stream": True,
                                                                "max_tokens": 8})  # (short: fast)
            await r.read()
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.headers["X-Router-Model"] == "claude-opus-4.6" and "X-Router-Deadline" not in r.headers
    # interactive: a 120 ms deadline on the first token
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                          headers={"X-Router-Max-Latency-Ms": "120"})
    assert r.status == 200 and r.headers["X-Router-Model"] == "glm-5" and r.headers["X-Router-Deadline"] == "met"
    await r.read()
    # the body hint, not streamed: the whole answer's latency counts
    r = await client.post("/v1/chat/completions", json={**CHAT, "router": {"max_latency_ms": 1}})
    body = await r.json()
    assert r.status == 200 and r.headers["X-Router-Deadline"] == "missed" and body["model"] == "glm-5"
    assert body["router"]["latency"]["deadline_met"] is False and body["router"]["latency"]["metric"] == "total"
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Router-Latency-Weight": "1000"})
    assert r.headers["X-Router-Model"] == "glm-5"
    # bad hints are 422s naming the header
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Router-Max-Latency-Ms": "0"})
    assert r.status == 422 and "X-Router-Max-Latency-Ms" in (await r.json())["error"]["message"]
    # route-only shows every model's expected latency
    r = await client.post("/v1/route", json={"messages": CHAT["messages"], "max_latency_ms": 120, "stream": True})
    body = await r.json()
    assert body["model"] == "glm-5" and body["latency"]["deadline_met"] is True
    assert {c["model"]: c["expected_latency_ms"] > 120 for c in body["candidates"]} == {
        "claude-opus-4.6": True, "glm-5": False}
    metrics = await (await client.get("/metrics")).text()
    assert 'bandit_router_deadline_decisions_total{met="true"} 2.0' in metrics
    assert 'bandit_router_deadline_decisions_total{met="false"} 1.0' in metrics
    # the calls were timed: the estimates are in /admin/arms and survive a restart
    arms = (await (await client.get("/admin/arms")).json())["categories"]["general"]
    lat = arms["glm-5"]["latency"]
    assert lat["observations"] >= 23 and lat["quantile"] == 0.9 and 0 < lat["total_s"] < 2.0
    await client.close()
    client, _ = await _fleet(aiohttp_client, tmp_path, sim.port)
    again = (await (await client.get("/admin/arms")).json())["categories"]["general"]["glm-5"]["latency"]
    assert again == lat


# -- forgetting, merging and the prior (closed forms) ----------------------------------------------


def test_decay_halves_the_data_after_one_half_life_and_leaves_the_prior():
    e = LatencyEstimates(decay=0.5 ** (1 / 10))
    e.add_model(1.0, 10.0)
    e.add_model(1.0, 10.0)
    prior = e.prior.copy()
    e.observe(0, 0.3, 3.0)
    for _ in range(10):  # ten answers of the other model: one half-life of the category
        e.observe(1, None, 5.0)
    assert e.h[TOTAL, 0, bucket_of(3.0)] == pytest.approx(0.5, rel=1e-12)
    assert e.h[TTFT, 0, bucket_of(0.3)] == pytest.approx(0.5, rel=1e-12)
    assert e.weights()[TOTAL, 1] == pytest.approx(sum(0.5 ** (i / 10) for i in range(10)), rel=1e-12)
    assert np.array_equal(e.prior, prior)
    e.forget(0.5)  # time-based forgetting: the data only
    assert e.h[TOTAL, 0].sum() == pytest.approx(0.25, rel=1e-12) and np.array_equal(e.prior, prior)


def test_an_unobserved_model_drifts_back_to_its_prior():
    e = LatencyEstimates(quantile=0.5, decay=0.5 ** (1 / 20))
    e.add_model(1.0, 10.0)
    e.add_model(1.0, 10.0)
    for _ in range(20):
        e.observe(0, None, 2.0)
    assert e.quantiles()[TOTAL, 0] == pytest.approx(2.0, rel=0.2)
    for _ in range(400):  # twenty half-lives of answers by the other model
        e.observe(1, None, 10.0)
    assert e.quantiles()[TOTAL, 0] == pytest.approx(10.0, rel=0.2)  # the prior's median again


def test_merging_two_processes_adds_the_data_and_keeps_the_prior_once():
    a, b, both = (LatencyEstimates(quantile=0.9, decay=0.99) for _ in range(3))
    for e in (a, b, both):
        e.add_model(1.0, 4.0)
    for v in (0.1, 0.2, 0.3):
        a.observe(0, v, v * 10)
    for v in (3.0, 4.0):
        b.observe(0, None, v)
    # one process's decays do not touch the other's data: merging equals one process seeing all
    # answers only without forgetting, so compare against the exact sums
    merged = a.merged(b)
    assert np.allclose(merged.h, a.h + b.h) and np.array_equal(merged.prior, a.prior)
    assert np.array_equal(merged.n, a.n + b.n)
    assert np.allclose(merged.quantiles(), quantile(a.h + b.h + a.prior, 0.9))
    assert a.h.sum() > 0 and merged.prior.sum() == pytest.approx(2.0)  # one prior per metric


def test_the_latency_draw_narrows_with_data():
    e = LatencyEstimates(decay=1.0)
    e.add_model(1.0, 10.0)
    z = np.array([1.0])
    unknown = e.sample(True, z)[0] / e.expected(True)[0]
    assert unknown == pytest.approx(math.e, rel=1e-9)  # exp(1 × 1 / √1)
    for _ in range(99):
        e.observe(0, 1.0, 10.0)
    assert e.sample(True, z)[0] / e.expected(True)[0] == pytest.approx(math.exp(0.1), rel=1e-9)


# -- the router: forgetting by time, the draws' stream, damaged states ------------------------------


def test_time_based_forgetting_also_ages_latency():
    models = [ModelSpec("a", Price(1.0, 1.0)), ModelSpec("b", Price(1.0, 1.0))]
    r = Router(models, BanditSettings(half_life_events=None, half_life_seconds=100.0))
    d = r.decide(MSG, category="general")
    r.learn(d, 1.0, now=0.0)
    r.observe_latency(d, 0.5, 5.0)
    lat = r._cats["general"].lat
    assert lat.weights()[TOTAL, d.arm] == 1.0
    r.forget(100.0)
    assert lat.weights()[TOTAL, d.arm] == pytest.approx(0.5, rel=1e-12)
    r.forget(50.0)  # the clock never runs backwards
    assert lat.weights()[TOTAL, d.arm] == pytest.approx(0.5, rel=1e-12)


def test_latency_hints_do_not_shift_the_quality_draws():
    models = [ModelSpec("fast", Price(1.0, 1.0), ttft_s=0.2), ModelSpec("slow", Price(1.0, 1.0), ttft_s=3.0)]
    a, b = (Router(models, BanditSettings(seed=4)) for _ in range(2))
    for i in range(300):
        da = a.decide(MSG, category="general")
        db = b.decide(MSG, category="general", max_latency_s=1.0 if i % 2 else None, stream=True)
        assert np.array_equal(da.draw_z, db.draw_z)
        if i % 2 == 0:
            assert np.array_equal(da.scores, db.scores)


def test_when_nobody_meets_the_deadline_the_lowest_estimate_is_used():
    r = _router()  # measured: fast 0.2 s, slow 3 s to the first token
    for _ in range(50):
        d = r.decide(MSG, category="general", max_latency_s=0.001, stream=True)
        assert d.model == "fast" and d.deadline_met is False and d.latency_s == pytest.approx(0.2, rel=0.2)


def test_a_damaged_latency_state_is_skipped():
    r = _router()
    state = r.dirty_states()
    state["latency:general:fast"] = np.zeros(7).tobytes()  # another layout
    state["latency:general:slow"] = np.full(2 + 2 * BUCKETS, np.nan).tobytes()
    fresh = _router(measured=False)
    fresh.import_state(state)  # does not raise
    assert np.allclose(fresh.latency("general"), _router(measured=False).latency("general"))


def test_apply_deadline_on_plain_arrays():
    from bandit_router.policy import apply_deadline

    inf = np.inf
    pen = np.array([0.0, 0.0, -inf, 0.0])
    est = np.array([0.5, 2.0, 0.1, 3.0])
    out, met = apply_deadline(pen, np.array([0.4, 2.0, 0.1, 3.0]), est, 1.0)
    assert met and list(out) == [0.0, -inf, -inf, -inf]
    out, met = apply_deadline(pen, np.array([5.0, 2.0, 0.1, 3.0]), est, 1.0)  # eligible ones all late
    assert not met and list(out) == [0.0, -inf, -inf, -inf]  # the fastest eligible by estimate (not 2)
    out, met = apply_deadline(pen, est / 10, est, 1.0)  # nobody late: the same array, no copy
    assert met and out is pen
    assert list(pen) == [0.0, 0.0, -inf, 0.0]  # never changed in place
