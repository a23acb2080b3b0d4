"""Budget pacing: the primal-dual pacers against their update rules, on synthetic streams, in the
replay, and on the real RouterBench data when it is beside the repository."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.pacing import DAY_S, DayPacer, Pacers, RequestPacer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench"


def test_the_request_pacer_follows_its_update_rule():
    p = RequestPacer(0.01, step=0.1)
    assert p.cost_weight(5.0) == 5.0  # nothing spent: the base weight
    p.spend(0.03)  # three budgets' worth: μ += 0.1 × (3 − 1)
    assert p.mu == pytest.approx(0.2) and p.lam == pytest.approx(20.0) and p.cost_weight(5.0) == pytest.approx(25.0)
    p.spend(0.0)  # under: μ −= 0.1
    assert p.mu == pytest.approx(0.1)
    for _ in range(5):
        p.spend(0.0)
    assert p.mu == pytest.approx(-0.4) and p.lam == 0.0  # a credit, remembered; λ itself stays at 0
    assert p.cost_weight(5.0) == 5.0  # relaxed to the base, never below
    for _ in range(100):
        p.spend(0.0)
    assert p.mu == p.mu_min  # the credit is bounded (no wind-up)
    assert p.ratio == pytest.approx(0.03 / 107 / 0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50), st.floats(1e-4, 0.5), st.floats(0.0, 100.0))
def test_the_weight_is_never_below_the_base_and_lambda_never_negative(costs, budget, base):
    p = RequestPacer(budget)
    for c in costs:
        p.spend(c)
        assert p.mu_min <= p.mu <= p.mu_max and p.lam >= 0.0 and p.cost_weight(base) >= base


def test_on_a_two_model_stream_spend_converges_to_the_budget():
    """A cheap weak model and a dear strong one; the budget lies between their costs. Choosing by
    quality − w × cost with the pacer's w spends the budget to within 2%."""
    rng = np.random.default_rng(0)
    cost = np.array([0.001, 0.010])
    quality = np.array([0.6, 0.9])
    p = RequestPacer(0.004)
    spent = 0.0
    n = 20_000
    for _ in range(n):
        w = p.cost_weight(0.0)
        noise = rng.normal(0, 0.05, 2)  # a Thompson-like draw
        k = int(np.argmax(quality + noise - w * cost))
        c = cost[k] * rng.uniform(0.8, 1.2)
        p.spend(c)
        spent += c
    assert spent / n / 0.004 == pytest.approx(1.0, abs=0.02)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="budget"):
        RequestPacer(0.0)
    with pytest.raises(ValueError, match="budget"):
        DayPacer(-1.0)
    p = RequestPacer(0.01)
    for bad in (-0.01, math.nan, math.inf):
        with pytest.raises(ValueError, match="spend"):
            p.spend(bad)


T0 = 1_000 * DAY_S  # a UTC midnight


def test_the_day_pacer_rises_ahead_of_pace_relaxes_under_it_and_resets_each_day():
    p = DayPacer(100.0, step=0.05, slack=0.02)
    assert p.cost_weight(10.0, T0) == 10.0
    # a quarter into the day, $50 already spent: ahead of the $27 pace, the weight rises
    for i in range(50):
        p.spend(1.0, T0 + DAY_S * 0.25 * (i + 1) / 50)
    assert p.snapshot(T0 + DAY_S / 4)["spent_today_usd"] == pytest.approx(50.0)
    assert p.mu > 0 and p.cost_weight(10.0, T0 + DAY_S / 4) > 10.0
    high = p.mu
    # late in the day, spending little: under pace, it relaxes back to the base
    for i in range(200):
        p.spend(0.01, T0 + DAY_S * (0.8 + 0.1 * i / 200))
    assert p.mu < high and p.mu == 0.0
    # the next UTC day starts from zero spend
    p.spend(1.0, T0 + DAY_S + 60)
    snap = p.snapshot(T0 + DAY_S + 60)
    assert snap["spent_today_usd"] == pytest.approx(1.0) and snap["requests_today"] == 1
    assert not p.exhausted(T0 + DAY_S + 60)


def test_an_exhausted_day_budget_pins_the_weight_at_its_cap():
    p = DayPacer(1.0)
    p.spend(1.5, T0 + 10)
    assert p.exhausted(T0 + 10) and p.mu == p.mu_max and p.snapshot(T0 + 10)["exhausted"] is True


def test_day_pacer_export_and_restore():
    p = DayPacer(20.0)
    for i in range(10):
        p.spend(2.0, T0 + 100 * i)
    q = DayPacer(20.0)
    q.restore(p.export())
    assert q.export() == p.export() and q.cost_weight(1.0, T0 + 1000) == p.cost_weight(1.0, T0 + 1000)


def test_pacers_keep_one_budget_per_tenant():
    ps = Pacers(default=None, tenants={"team-a": 5.0})
    assert not Pacers() and ps
    assert ps.get("team-b") is None and ps.cost_weight("team-b", 3.0, T0) == 3.0
    ps.spend("team-a", 4.0, T0 + 60)
    assert ps.cost_weight("team-a", 3.0, T0 + 61) > 3.0
    both = Pacers(default=1.0)
    both.spend("x", 0.5, T0 + 1)
    both.spend("y", 0.1, T0 + 1)
    snap = both.snapshot(T0 + 2)
    assert snap["x"]["spent_today_usd"] == 0.5 and snap["y"]["spent_today_usd"] == 0.1


# -- the replay --------------------------------------------------------------------------------------


def _tiny_table():
    from bandit_router.replay.data import Table

    rng = np.random.default_rng(1)
    n, models = 300, ["cheap", "dear"]
    x = np.zeros((n, 32))
    x[:, 0] = 1.0
    quality = np.stack([rng.random(n) < 0.6, rng.random(n) < 0.9], axis=1).astype(float)
    cost = np.tile([0.001, 0.010], (n, 1))
    return Table(models=models, categories=np.array(["general"] * n), x=x, quality=quality, cost=cost,
                 prompt_tokens=np.full(n, 100), output_tokens=np.tile([100.0, 100.0], (n, 1)),
                 prompts=[[{"role": "user", "content": "q"}]] * n)


def test_the_replay_paces_to_a_budget():
    from bandit_router.replay.run import ReplayOptions, run

    table = _tiny_table()
    r = run(table, ReplayOptions(steps=8000, seed=0, budget=0.004), with_peers=False)
    assert r["budget"]["spend_ratio"] == pytest.approx(1.0, abs=0.02)
    share = r["router"]["share"]
    assert 0.1 < share["dear"] < 0.6  # a mix: neither the cheap model alone nor the dear one


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/routerbench is not beside the repository")
def test_on_routerbench_spend_lands_within_two_percent_of_the_budget():
    from bandit_router.replay import data
    from bandit_router.replay.run import ReplayOptions, run

    table = data.load(sorted(str(p) for p in DATA.glob("*.csv")))
    r = run(table, ReplayOptions(steps=6000, seed=0, budget=0.0015), with_peers=False)
    assert r["budget"]["spend_ratio"] == pytest.approx(1.0, abs=0.02)
    assert r["router"]["quality"] > 0.78  # what $0.0015 buys, against gpt-4's 0.88 at $0.005


# -- the service ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_tenant_budget_paces_the_service_and_survives_a_restart(sim, aiohttp_client, tmp_path):
    from fleet import sim_client

    from bandit_router.config import parse_config
    from bandit_router.server import make_app

    prices = {"dear": (10.0, 40.0, 0.99), "cheap": (0.1, 0.4, 0.5)}  # $ per 1M in/out, prior quality
    models = [{"name": n, "upstream_model": "glm-5", "base_url": f"http://127.0.0.1:{sim.port}/v1",
               "input_price": i, "output_price": o, "priors": {"general": {"quality": q, "strength": 1000}}}
              for n, (i, o, q) in prices.items()]
    cfg = parse_config({"models": models, "bandit": {"seed": 1, "cost_weight": 0.0, "explore": 0.0},
                        "cache": {"enabled": False}, "budget": {"tenants": {"tight": 0.02}}})

    async def start():
        return await aiohttp_client(make_app(cfg, db_path=tmp_path / "budget.db", admin_local_only=True))

    client = await start()
    chat = {"model": "auto", "messages": [{"role": "user", "content": "Tell me about the weather."}]}
    free = await client.post("/v1/chat/completions", json=chat, headers={"X-Router-Tenant": "other"})
    body = await free.json()
    assert free.headers["X-Router-Model"] == "dear" and "budget" not in body["router"]  # no budget: best model
    models_seen, weights = [], []
    for _ in range(12):
        r = await client.post("/v1/chat/completions", json=chat, headers={"X-Router-Tenant": "tight"})
        body = await r.json()
        assert r.status == 200
        models_seen.append(body["model"])
        weights.append(body["router"]["cost_weight"])
    assert models_seen[0] == "dear" and weights[0] == 0.0
    assert models_seen[-1] == "cheap" and weights[-1] > 0  # ahead of the day's pace: the weight rose
    assert all(b >= a for a, b in zip(weights, weights[1:], strict=False))
    budgets = (await (await client.get("/admin/arms")).json())["budgets"]
    spent = budgets["tight"]["spent_today_usd"]
    assert spent > 0 and budgets["tight"]["usd_per_day"] == 0.02 and "other" not in budgets
    async with sim_client(sim) as c:
        assert (await c.get("/admin/models")).status == 200
    await client.close()
    client = await start()
    again = (await (await client.get("/admin/arms")).json())["budgets"]["tight"]
    assert again["spent_today_usd"] == pytest.approx(spent) and again["mu"] > 0
