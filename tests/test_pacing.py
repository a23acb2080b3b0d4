"""Budget pacing: the primal-dual pacers against their update rules (closed forms), on synthetic
streams, in the replay and its CLI, on the real RouterBench data when it is beside the repository,
and wired into the service."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.pacing import DAY_S, HOUR_S, LAMBDA_MAX, OVERFLOW, DayPacer, Pacers, RequestPacer, dual_step

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench"
T0 = 1_000 * DAY_S  # a UTC midnight


# -- the per-request pacer ------------------------------------------------------------------------


def test_the_request_pacer_follows_its_update_rule():
    p = RequestPacer(0.01, step=0.1, mu_min=-1.0)
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
    for _ in range(100):
        p.spend(1.0)
    assert p.mu == p.mu_max and p.lam == pytest.approx(50 / 0.01)  # λ is capped
    assert p.ratio == pytest.approx((0.03 + 100) / 207 / 0.01)
    assert dual_step(0.5, 3.0, 0.1, -1.0, 0.6) == 0.6 and dual_step(0.5, -30.0, 0.1, -1.0, 0.6) == -1.0


def test_the_request_pacers_defaults_are_the_tuned_ones():
    p = RequestPacer(0.002)
    assert (p.step, p.mu_min, p.mu_max) == (0.01, -5.0, 50.0)  # benchmarks/replay_budget.py, README


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50), st.floats(1e-4, 0.5), st.floats(0.0, 100.0))
def test_the_request_pacers_weight_is_never_below_the_base_and_lambda_never_negative(costs, budget, base):
    p = RequestPacer(budget)
    for c in costs:
        p.spend(c)
        assert p.mu_min <= p.mu <= p.mu_max and 0.0 <= p.lam <= LAMBDA_MAX and p.cost_weight(base) >= base


def _two_model_stream(pacer_weight, pacer_spend, n: int, seed: int = 0) -> float:
    """A cheap weak model and a dear strong one, chosen by quality + noise − w × cost (a
    Thompson-like draw); returns the spend per request."""
    rng = np.random.default_rng(seed)
    cost = np.array([0.001, 0.010])
    quality = np.array([0.6, 0.9])
    spent = 0.0
    for i in range(n):
        w = pacer_weight(i)
        k = int(np.argmax(quality + rng.normal(0, 0.05, 2) - w * cost))
        c = cost[k] * rng.uniform(0.8, 1.2)
        pacer_spend(i, c)
        spent += c
    return spent / n


def test_on_a_two_model_stream_spend_converges_to_the_budget():
    """The budget lies between the two models' costs: the pacer's weight makes a mix that spends
    it to within 2% (and the unpaced router would spend 2.5 times as much)."""
    p = RequestPacer(0.004)
    per_request = _two_model_stream(lambda i: p.cost_weight(0.0), lambda i, c: p.spend(c), 10_000)
    assert per_request / 0.004 == pytest.approx(1.0, abs=0.02)
    assert p.ratio == pytest.approx(per_request / 0.004)
    assert 0.9 / 0.009 > p.lam > 0.0  # it binds, below the weight that would make the dear model never worth it


def test_request_pacer_export_and_restore():
    p = RequestPacer(0.01)
    for c in (0.02, 0.0, 0.05):
        p.spend(c)
    q = RequestPacer(0.01)
    assert q.restore(p.export()) and q.export() == p.export() and q.lam == p.lam
    assert RequestPacer.import_ is RequestPacer.restore
    assert not q.restore({"mu": "nan", "spent": 1.0, "requests": 3}) and q.export() == p.export()
    assert not q.restore({"mu": 0.1}) and q.export() == p.export()
    assert p.snapshot()["spend_ratio"] == pytest.approx(0.07 / 3 / 0.01)


def test_bad_input_names_the_problem():
    for bad in (0.0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="budget"):
            RequestPacer(bad)
        with pytest.raises(ValueError, match="budget"):
            DayPacer(bad)
    with pytest.raises(ValueError, match="step"):
        RequestPacer(0.01, step=0.0)
    with pytest.raises(ValueError, match="slack"):
        DayPacer(10.0, slack=1.0)
    p, d = RequestPacer(0.01), DayPacer(10.0)
    for bad in (-0.01, math.nan, math.inf, None, "0.1"):
        with pytest.raises(ValueError, match="spend"):
            p.spend(bad)
        with pytest.raises(ValueError, match="spend"):
            d.spend(bad, T0)
    assert p.requests == 0 and d.requests == 0  # nothing charged by a rejected spend
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="cost weight"):
            p.cost_weight(bad)
        with pytest.raises(ValueError, match="cost weight"):
            d.cost_weight(bad, T0)
        with pytest.raises(ValueError, match="time"):
            d.spend(0.1, bad)
    with pytest.raises(ValueError, match="tenant 'team-b'"):
        Pacers(default=1.0, tenants={"team-a": 2.0, "team-b": -3.0})


# -- the per-day pacer ------------------------------------------------------------------------------


def test_the_day_pacer_follows_its_closed_form():
    p = DayPacer(100.0, step=0.01, slack=0.02)
    assert p.cost_weight(3.0, T0) == 3.0  # first use at midnight: nothing spent, the base weight
    now = T0 + 6 * HOUR_S  # a quarter of the day
    for _ in range(10):
        p.spend(6.0, now)
    pace = 100.0 * (0.25 + 0.02 * 0.75)
    n_hat = 10 + 10 / (6 * HOUR_S + HOUR_S) * 0.75 * DAY_S  # seen, plus the rate since first use × the rest
    b_hat = 100.0 / n_hat
    mu = 0.01 * (60.0 - pace) / b_hat
    assert p.pace(now) == pytest.approx(pace) and p.expected_requests(now) == pytest.approx(n_hat)
    assert p.mu(now) == pytest.approx(mu) and p.lam(now) == pytest.approx(mu / b_hat)
    assert p.cost_weight(3.0, now) == pytest.approx(3.0 + mu / b_hat)
    snap = p.snapshot(now, base=3.0)
    assert snap["pace_usd"] == pytest.approx(pace) and snap["lambda"] == pytest.approx(mu / b_hat)
    assert snap["multiplier"] == pytest.approx(1 + mu / b_hat / 3.0)
    # $60 in 6 hours: $100 is reached 4 hours later
    assert snap["projected_exhausted_at"] == pytest.approx(now + 4 * HOUR_S)
    assert snap["projected_day_usd"] == pytest.approx(60.0 * 4)


def test_the_day_pacer_rises_ahead_of_pace_and_relaxes_under_it_as_the_day_goes_by():
    p = DayPacer(100.0)
    for i in range(50):  # $50 in the first quarter of the day: ahead of the $26.5 pace
        p.spend(1.0, T0 + DAY_S * 0.25 * i / 50)
    ahead = p.cost_weight(10.0, T0 + DAY_S / 4)
    assert ahead > 10.0
    more = DayPacer(100.0)
    more.restore(p.export())
    more.spend(10.0, T0 + DAY_S / 4)
    assert more.cost_weight(10.0, T0 + DAY_S / 4) > ahead  # further ahead: higher still
    # no more spend: as the pace catches up the weight relaxes, by itself, back to the base
    ws = [p.cost_weight(10.0, T0 + DAY_S * f) for f in (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55)]
    assert all(b <= a for a, b in zip(ws, ws[1:], strict=False)) and ws[-1] == 10.0
    assert p.mu(T0 + DAY_S * 0.55) < 0  # under pace


def test_the_first_request_of_a_day_is_not_over_pace():
    p = DayPacer(100.0)
    p.spend(1.5, T0 + 1)  # 1.5% of the day's budget, one second after midnight
    assert p.cost_weight(2.0, T0 + 2) == 2.0
    tight = DayPacer(100.0, slack=0.0)  # without the burst allowance it would be
    tight.spend(1.5, T0 + 1)
    assert tight.cost_weight(2.0, T0 + 2) > 2.0


def test_a_new_utc_day_starts_from_zero_spend():
    p = DayPacer(10.0)
    for i in range(40):
        p.spend(0.5, T0 + DAY_S * 0.5 + i)  # $20: over the day's $10
    assert p.exhausted(T0 + DAY_S * 0.6) and p.snapshot(T0 + DAY_S * 0.6)["exhausted"] is True
    assert p.lam(T0 + DAY_S * 0.6) == pytest.approx(p.mu_max / p.per_request(T0 + DAY_S * 0.6))  # at the cap
    assert p.cost_weight(1.0, T0 + DAY_S - 1) > 1.0  # until midnight
    snap = p.snapshot(T0 + DAY_S + 60)
    assert snap["spent_today_usd"] == 0.0 and snap["requests_today"] == 0 and snap["exhausted"] is False
    assert p.prior_requests == 80 and p.cost_weight(1.0, T0 + DAY_S + 60) == 1.0  # 40 in the half day seen
    p.spend(0.01, T0 + DAY_S + 61)
    assert p.snapshot(T0 + DAY_S + 61)["spent_today_usd"] == pytest.approx(0.01)
    # a time from an earlier day (a clock stepped back) is charged to today, not to a reopened yesterday
    p.spend(0.01, T0 + DAY_S - 5)
    assert p.day == 1001 and p.spent == pytest.approx(0.02)
    # a day later still with no traffic in between: no prior
    p.cost_weight(1.0, T0 + 3 * DAY_S + 10)
    assert p.prior_requests == 0 and p.spent == 0.0


def test_a_day_of_uniform_traffic_spends_the_budget_by_midnight():
    """5,000 requests spread over a UTC day, the two-model chooser; the day's budget is 40% of what
    it would spend unpaced: the day ends within 2% of the budget, and it is not exhausted early."""
    n, budget = 5_000, 5_000 * 0.004
    times = T0 + np.sort(np.random.default_rng(1).random(n)) * DAY_S
    p = DayPacer(budget)
    exhausted_at = []

    def spend(i: int, c: float) -> None:
        p.spend(c, times[i])
        if p.exhausted(times[i]) and not exhausted_at:
            exhausted_at.append((times[i] - T0) / DAY_S)

    per_request = _two_model_stream(lambda i: p.cost_weight(0.0, times[i]), spend, n)
    assert per_request * n / budget == pytest.approx(1.0, abs=0.02)
    assert not exhausted_at or exhausted_at[0] > 0.99


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 3 * DAY_S)), min_size=1, max_size=40),
       st.floats(0.01, 100.0), st.floats(0.0, 100.0))
def test_the_day_pacers_weight_is_never_below_the_base_and_lambda_never_negative(spends, budget, base):
    p = DayPacer(budget)
    for c, dt in sorted(spends, key=lambda s: s[1]):
        p.spend(c, T0 + dt)
        lam = p.lam(T0 + dt)
        assert 0.0 <= lam <= LAMBDA_MAX and p.cost_weight(base, T0 + dt) >= base
        assert p.mu(T0 + dt) <= p.mu_max and 0.0 <= p.spent


def test_day_pacer_export_and_restore():
    p = DayPacer(20.0)
    for i in range(10):
        p.spend(2.5, T0 + 100 * i)
    q = DayPacer(20.0)
    assert q.restore(p.export())
    assert q.export() == p.export() and q.cost_weight(1.0, T0 + 1000) == p.cost_weight(1.0, T0 + 1000)
    assert json.loads(json.dumps(p.export())) == p.export()  # what the service stores
    assert DayPacer.import_ is DayPacer.restore
    # the first version's state (with μ, without since) is still read
    old = DayPacer(20.0)
    assert old.restore({"mu": 3.0, "day": 1000, "spent": 7.0, "requests": 4})
    assert old.snapshot(T0 + 10)["spent_today_usd"] == 7.0 and old.since == T0
    # a damaged state is ignored, not half taken
    for bad in ({"day": 1000, "spent": -1.0, "requests": 1}, {"day": "x", "spent": 1.0, "requests": 1},
                {"spent": 1.0}, {"day": 1000, "spent": math.inf, "requests": 1}, None):
        assert not q.restore(bad) and q.export() == p.export()


# -- tenants ------------------------------------------------------------------------------------------


def test_pacers_keep_one_budget_per_tenant():
    ps = Pacers(default=None, tenants={"team-a": 5.0})
    assert not Pacers() and ps
    assert ps.get("team-b", T0) is None and ps.cost_weight("team-b", 3.0, T0) == 3.0  # no budget: not paced
    ps.spend("team-b", 4.0, T0 + 60)  # nothing kept for it
    assert "team-b" not in ps.pacers
    assert ps.cost_weight("team-a", 3.0, T0) == 3.0 and "team-a" not in ps.pacers  # reading creates nothing
    assert ps.tenant_snapshot("team-a", T0)["spent_today_usd"] == 0 and ps.tenant_snapshot("team-b", T0) is None
    ps.spend("team-a", 4.0, T0 + 60)
    assert ps.cost_weight("team-a", 3.0, T0 + 61) > 3.0
    both = Pacers(default=1.0, tenants={"big": 100.0})
    both.spend("x", 0.5, T0 + 1)
    both.spend("big", 0.5, T0 + 1)
    snap = both.snapshot(T0 + 2, base=2.0)
    assert snap["x"]["usd_per_day"] == 1.0 and snap["big"]["usd_per_day"] == 100.0
    assert snap["x"]["cost_weight"] > snap["big"]["cost_weight"] == 2.0  # the same spend is far over x's pace
    again = Pacers(default=1.0, tenants={"big": 100.0})
    assert again.restore(both.export(), T0 + 3) == 2 and again.export() == both.export()
    assert Pacers(tenants={"big": 1.0}).restore(both.export()) == 1  # x has no budget there
    # states from before yesterday, or from a day still to come, are not restored
    assert Pacers(default=1.0).restore(both.export(), T0 + 2 * DAY_S) == 0
    assert Pacers(default=1.0).restore(both.export(), T0 + DAY_S) == 2  # yesterday's: the rate's prior
    assert Pacers(default=1.0).restore(both.export(), T0 - DAY_S) == 0


def test_beyond_the_cap_new_tenants_share_one_pacer_and_stale_ones_make_room():
    capped = Pacers(default=1.0, tenants={"named": 2.0}, max_tenants=2)
    a, b = capped.get("a", T0), capped.get("b", T0)
    assert a is not None and b is not None and a is not b and capped.get("named", T0)
    a.spend(0.1, T0)
    b.spend(0.1, T0)
    # beyond the cap, new tenants share one pacer with the default budget: never unpaced
    c, d = capped.get("c", T0), capped.get("d", T0)
    assert c is not None and c is d and capped.pacers[OVERFLOW] is c and c.usd_per_day == 1.0
    capped.spend("c", 0.9, T0 + 60)
    assert capped.cost_weight("d", 1.0, T0 + 61) > 1.0  # d pays for c's spend: they share a budget
    assert "c" not in capped.pacers and "d" not in capped.pacers
    # the shared pacer's state restores into the shared pacer; a tenant's never does
    states = capped.export()
    again = Pacers(default=1.0, tenants={"named": 2.0}, max_tenants=2)
    assert again.restore({"x": states["a"], "y": states["b"], "z": states["a"], OVERFLOW: states[OVERFLOW]},
                         T0 + 70) == 3
    assert again.pacers[OVERFLOW].spent == pytest.approx(0.9) and "z" not in again.pacers
    # two days later a and b have spent nothing since yesterday: their places go to new tenants
    later = T0 + 2 * DAY_S
    e = capped.get("e", later)
    assert e is not None and e is not capped.pacers[OVERFLOW] and "a" not in capped.pacers


# -- the replay -------------------------------------------------------------------------------------


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
    r = run(table, ReplayOptions(steps=6000, seed=0, budget=0.004), with_peers=False)
    b = r["budget"]
    assert b["spend_ratio"] == pytest.approx(1.0, abs=0.02) and b["usd_per_request"] == 0.004
    assert b["spend_per_request"] == pytest.approx(r["router"]["cost"]) and b["quality"] == r["router"]["quality"]
    share = r["router"]["share"]
    assert 0.1 < share["dear"] < 0.6  # a mix: neither the cheap model alone nor the dear one
    assert len(r["cost_weights"]) == 6000 and r["cost_weights"][0] == 0.0 and b["median_cost_weight"] > 0
    unpaced = run(table, ReplayOptions(steps=6000, seed=0, cost_weight=0.0), with_peers=False)
    assert "budget" not in unpaced and unpaced["router"]["cost"] > 2 * 0.004  # the budget binds


def test_the_cli_replays_with_a_budget(tmp_path, capsys):
    from test_replay import write_csv

    from bandit_router import cli

    csv_path = write_csv(tmp_path / "tiny.csv")
    assert cli.main(["replay", str(csv_path), "--steps", "1500", "--budget", "0.001", "--json", "--peers", ""]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["budget"]["usd_per_request"] == 0.001
    assert report["budget"]["spend_ratio"] == pytest.approx(1.0, abs=0.05)  # 1,500 requests: a loose check
    assert "cost_weights" not in report  # per-step arrays stay out of the JSON
    for bad in ("0", "-0.01", "nan", "inf"):
        with pytest.raises(SystemExit, match="--budget"):
            cli.main(["replay", str(csv_path), "--steps", "10", "--budget", bad, "--json", "--peers", ""])


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/routerbench is not beside the repository")
def test_on_routerbench_spend_lands_within_two_percent_of_the_budget():
    from bandit_router.replay import data
    from bandit_router.replay.run import ReplayOptions, run

    table = data.load(sorted(str(p) for p in DATA.glob("*.csv")))
    r = run(table, ReplayOptions(steps=5000, seed=0, budget=0.0015), with_peers=False)
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
    assert budgets["tight"]["mu"] > 0 and budgets["tight"]["lambda"] > 0
    async with sim_client(sim) as c:
        assert (await c.get("/admin/models")).status == 200
    await client.close()
    client = await start()
    again = (await (await client.get("/admin/arms")).json())["budgets"]["tight"]
    assert again["spent_today_usd"] == pytest.approx(spent) and again["mu"] > 0
