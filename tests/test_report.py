"""Operator views: the logged score moments, the choice probability of a Thompson decision, the
off-policy estimators, `bandit-router report` on a real service's log, `bandit-router stats` against a
live app, and the storage migration that adds the moments column."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import numpy as np
import pytest
import pytest_asyncio
from scipy.stats import norm
from sqlite_utils import Database

from bandit_router.cli import main
from bandit_router.config import parse_config
from bandit_router.costs import Price
from bandit_router.report import Options, analyse, read_log
from bandit_router.report.log import Log
from bandit_router.report.ope import bootstrap, terms
from bandit_router.report.propensity import choice_probability, monte_carlo
from bandit_router.report.stats import ADMIN_TOKEN_ENV as STATS_TOKEN_ENV
from bandit_router.router import BanditSettings, ModelSpec, Router
from bandit_router.server import make_app
from bandit_router.server.auth import ADMIN_TOKEN_ENV
from bandit_router.server.keys import SERVICE
from bandit_router.simulator import make_app as make_simulator
from bandit_router.storage import DecisionRow, SQLiteStore
from bandit_router.storage.base import decision_record

MODELS = ("gpt-5.4", "claude-opus-4.6", "gemini-3.1-pro", "glm-5")
TOKEN = "report-test-admin-token-0123456789"
PROMPTS = {
    "coding": "Write a Python function that reverses a linked list, with tests.",
    "science": "Explain why the sky is blue in terms of Rayleigh scattering.",
    "general": "Give me three ideas for a birthday party.",
}


# -- the choice probability ---------------------------------------------------------------------------
def test_two_arm_propensity_is_the_closed_form():
    rng = np.random.default_rng(0)
    mean = rng.normal(0.0, 1.0, (500, 2))
    sd = np.exp(rng.normal(-1.0, 2.0, (500, 2)))  # scales from ~0.002 to ~50, often very different
    p = choice_probability(mean, sd, np.zeros(500, dtype=int))
    exact = norm.cdf((mean[:, 0] - mean[:, 1]) / np.hypot(sd[:, 0], sd[:, 1]))
    np.testing.assert_allclose(p, exact, atol=2e-5)
    big = exact > 1e-3
    np.testing.assert_allclose(p[big], exact[big], rtol=1e-3)
    # the other arm gets the rest
    q = choice_probability(mean, sd, np.ones(500, dtype=int))
    np.testing.assert_allclose(p + q, 1.0, atol=2e-5)


def test_many_arms_sum_to_one_and_agree_with_simulation():
    rng = np.random.default_rng(1)
    for _ in range(4):
        mean = rng.normal(0.6, 0.05, 7)
        sd = np.exp(rng.normal(-3.5, 1.0, 7))
        mean[2] = -np.inf  # not eligible
        p = np.array([choice_probability(mean, sd, k)[0] for k in range(7)])
        assert p[2] == 0.0
        assert p.sum() == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(p, monte_carlo(mean, sd, draws=400_000, seed=2), atol=4e-3)


def test_zero_sd_is_the_argmax():
    mean = np.array([[0.5, 0.7, -np.inf], [0.9, 0.7, 0.1]])
    sd = np.zeros((2, 3))
    np.testing.assert_allclose(choice_probability(mean, sd, [1, 0]), [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(choice_probability(mean, sd, [0, 2]), [0.0, 0.0], atol=1e-6)


def _router(explore: float = 0.5, seed: int = 0) -> Router:
    return Router([ModelSpec(f"m{i}", Price(0.5 + i, 1.0 + 2 * i), priors={"general": (0.5 + 0.05 * i, 5.0)})
                   for i in range(4)], BanditSettings(seed=seed, explore=explore, cost_weight=20.0),
                  categories=("general",))


def test_decision_moments_describe_its_draw():
    """The logged moments are the draw's: score mean = posterior mean − w·cost, score sd = explore × sd;
    and the choice frequencies of many decisions on one context are the computed propensities."""
    router = _router()
    rng = np.random.default_rng(3)
    x = np.r_[1.0, rng.random(router.dim - 1)]
    for _ in range(200):  # some learning, so the posteriors differ
        d = router.decide_features(np.r_[1.0, rng.random(router.dim - 1)], "general", 500)
        router.learn(d, float(rng.random() < 0.4 + 0.1 * d.arm))
    arms = router._cats["general"].arms
    d = router.decide_features(x, "general", 500)
    mean = arms.theta @ x
    np.testing.assert_allclose(d.score_mean, mean - d.cost_weight * np.asarray(d.costs), rtol=1e-12, atol=1e-12)
    sd = arms.sigma * np.sqrt(np.einsum("i,kij,j->k", x, arms.P, x))  # the sampler's cached posterior
    np.testing.assert_allclose(d.score_sd, 0.5 * sd, rtol=1e-9)
    exact = np.array([arms.get(k).predict(x)[1] for k in range(arms.k)])  # the exact one, refreshed lazily
    np.testing.assert_allclose(d.score_sd, 0.5 * exact, rtol=0.01)
    assert d.chosen == d.arm
    m = d.moments()
    assert m is not None and len(m) == 2 * arms.k + 1 and m[0] == d.arm
    # sample_moments is sample, bit for bit
    z = rng.standard_normal(arms.k)
    draw, _ = arms.sample_moments(x, z)
    assert np.array_equal(draw, arms.sample(x, z))
    # the empirical choice frequencies on a fixed posterior are the propensities
    n = 40_000
    counts = np.bincount([router.decide_features(x, "general", 500).arm for _ in range(n)], minlength=arms.k)
    p = np.array([choice_probability(d.score_mean, d.score_sd, k)[0] for k in range(arms.k)])
    assert p.sum() == pytest.approx(1.0, abs=1e-4)
    assert (np.abs(counts / n - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-3).all(), (counts / n, p)


def test_ineligible_arms_have_infinite_score_mean():
    router = _router()
    x = np.r_[1.0, np.zeros(router.dim - 1)]
    d = router.decide_features(x, "general", 100, eligible=np.array([True, False, True, True]))
    assert np.isneginf(d.score_mean[1]) and np.isfinite(d.score_mean[[0, 2, 3]]).all()
    forced = router.decide_features(x, "general", 100, eligible=np.array([False, False, True, False]), forced=True)
    assert forced.arm == 2
    assert choice_probability(forced.score_mean, forced.score_sd, 2)[0] == pytest.approx(1.0)


# -- the estimators on a synthetic log whose truth is known ----------------------------------------------
def _synthetic(n: int = 20_000, seed: int = 0):
    """A stochastic logging policy (independent normal scores, the largest chosen) over 3 arms in two
    categories; arm 2 is not eligible on a third of the requests. Rewards are Bernoulli(θ[c, a])."""
    rng = np.random.default_rng(seed)
    theta = np.array([[0.55, 0.80, 0.65], [0.70, 0.40, 0.90]])
    cat = rng.integers(0, 2, n)
    mean = rng.normal([0.6, 0.5, 0.55], 0.08, (n, 3))
    sd = np.exp(rng.normal(-2.2, 0.6, (n, 3)))
    mean[rng.random(n) < 1 / 3, 2] = -np.inf
    draws = np.where(np.isfinite(mean), mean + sd * rng.standard_normal((n, 3)), -np.inf)
    arm = draws.argmax(axis=1)
    reward = (rng.random(n) < theta[cat, arm]).astype(float)
    elig = np.isfinite(mean)
    best = np.array([1, 2])[cat]
    best = np.where(elig[np.arange(n), best], best, np.array([2, 0])[cat])  # next best: c0 -> arm 2, c1 -> arm 0
    truth = {"best_model": float(theta[cat, best].mean()),
             "uniform": float(((theta[cat] * elig).sum(axis=1) / elig.sum(axis=1)).mean())}
    return theta, cat, mean, sd, arm, reward, elig, best, truth


def test_ips_and_dr_recover_known_policy_values():
    theta, cat, mean, sd, arm, reward, elig, best, truth = _synthetic()
    n = len(arm)
    p = choice_probability(mean, sd, arm)
    assert p.min() > 0.001  # so the floor below clips nothing: the estimators are unbiased
    qhat = np.array([[reward[(cat == c) & (arm == a)].mean() for a in range(3)] for c in range(2)])[cat]
    rr = np.arange(n)
    targets = {"best_model": ((best == arm).astype(float), qhat[rr, best]),
               "uniform": (1.0 / elig.sum(axis=1), (qhat * elig).sum(axis=1) / elig.sum(axis=1))}
    for name, (tp, dmt) in targets.items():
        t = terms(reward, p, tp, dmt, qhat[rr, arm], floor=0.001)
        ci = bootstrap({e: (t.num[e], t.den[e]) for e in ("ips", "dr", "snips")}, reps=300, seed=1)
        for est in ("ips", "dr", "snips"):
            lo, hi = ci[est]
            assert lo <= truth[name] <= hi, (name, est, t.value(est), truth[name], ci[est])
            assert abs(t.value(est) - truth[name]) < 0.03
        assert t.clipped == 0
    # a badly wrong direct model: DR stays unbiased, DM does not
    t = terms(reward, p, targets["best_model"][0], np.full(n, 0.2), np.full(n, 0.2), floor=0.001)
    ci = bootstrap({"dr": (t.num["dr"], t.den["dr"])}, reps=300, seed=2)
    assert ci["dr"][0] <= truth["best_model"] <= ci["dr"][1]
    assert abs(t.value("dm") - truth["best_model"]) > 0.4


def test_analyse_recovers_known_values_from_a_log():
    """The whole analysis on a log of moments: arm names recovered from the chosen indices, the best
    model per category found from the data, IPS/DR within their CIs of the truth."""
    theta, cat, mean, sd, arm, reward, elig, best, truth = _synthetic(n=12_000, seed=5)
    n = len(arm)
    names = np.array(["alpha", "beta", "gamma"], dtype=object)
    moments = [np.concatenate(([float(a)], m, s)).tobytes() for a, m, s in zip(arm, mean, sd, strict=True)]
    log = Log(created=np.arange(n, dtype=float) + 1.7e9, category=np.array(["c0", "c1"], dtype=object)[cat],
              model=names[arm], learn=np.ones(n, dtype=bool), quality=reward, cost=np.full(n, 1e-3),
              prompt_tokens=np.full(n, 100), completion_tokens=np.full(n, 50.0),
              status=np.full(n, "completed", dtype=object), moments=moments)
    # a fallback: the row names another model than the chosen arm; it is left out
    log.model[0] = names[(arm[0] + 1) % 3]
    a = analyse(log, Options(reps=200, floor=0.001))
    s = a.summary
    assert s["best_model"]["c0"]["model"] == "beta" and s["best_model"]["c1"]["model"] == "gamma"
    assert s["decisions"]["fallback_or_unmatched"] == 1 and s["decisions"]["used_off_policy"] == n - 1
    o = s["off_policy"]["overall"]
    for tgt in ("best_model", "uniform"):
        for est in ("ips", "dr"):
            lo, hi = o["targets"][tgt][est]["ci95"]
            assert lo <= truth[tgt] <= hi, (tgt, est, o["targets"][tgt][est], truth[tgt])
    assert o["logged"]["value"] == pytest.approx(float(reward[1:].mean()))
    assert 0.0 < o["targets"]["best_model"]["best_model_unavailable_share"] < 0.5


# -- a real service's log ---------------------------------------------------------------------------------
@pytest_asyncio.fixture
async def stack(aiohttp_server, aiohttp_client, tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    sim = await aiohttp_server(make_simulator(seed=3))
    cfg = parse_config({
        "models": [{"name": n, "base_url": f"http://127.0.0.1:{sim.port}/v1", "input_price": p[0],
                    "output_price": p[1]} for n, p in zip(MODELS, ((2.5, 20.0), (5.0, 25.0), (2.0, 12.0), (1.0, 3.2)),
                                                         strict=True)],
        "bandit": {"seed": 1, "cost_weight": 5.0},
    })
    db = tmp_path / "router.db"
    app = make_app(cfg, db_path=db)
    client = await aiohttp_client(app)
    return client, app, db


async def _traffic(client, n: int) -> list[str]:
    cats = list(PROMPTS)
    ids = []
    for i in range(n):
        c = cats[i % len(cats)]
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": [
            {"role": "user", "content": PROMPTS[c]}]}, headers={"X-Router-Category": c})
        assert r.status == 200, await r.text()
        body = await r.json()
        text = body["choices"][0]["message"]["content"]
        score = 1.0 if text.rstrip().endswith("ANSWER: correct") else 0.0
        eid = r.headers["X-Router-Event-Id"]
        ids.append(eid)
        if i % 10 != 9:  # some decisions get no feedback
            fb = await client.post("/v1/feedback", json={"event_id": eid, "score": score})
            assert fb.status == 200, await fb.text()
    return ids


@pytest.mark.asyncio
async def test_report_end_to_end(stack, tmp_path):
    client, app, db = stack
    service = app[SERVICE]
    ids = await _traffic(client, 150)
    r = await client.post("/v1/chat/completions", json={"model": "glm-5", "messages": [
        {"role": "user", "content": PROMPTS["general"]}]})  # a pass-through
    assert r.status == 200
    await service.flush()
    row = await service.store.get_decision(ids[0])
    m = np.frombuffer(row.score_moments, dtype=np.float64)
    assert len(m) == 2 * len(MODELS) + 1 and MODELS[int(m[0])] == row.model
    out = tmp_path / "report"
    code = await asyncio.to_thread(main, ["report", "--db", str(db), "--out", str(out), "--bootstrap", "60",
                                          "--min-feedback", "3", "--json"])
    assert code == 0
    s = json.loads((out / "report.json").read_text())
    for f in ("traffic_share.png", "cumulative_cost.png", "quality_by_model.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = s["decisions"]
    assert d["total"] == 151 and d["pass_through"] == 1 and d["with_score_moments"] == 151
    assert d["with_feedback"] == 135
    assert 100 <= d["used_off_policy"] <= 135
    assert set(s["best_model"]) == set(PROMPTS) and all(b["model"] in MODELS for b in s["best_model"].values())
    o = s["off_policy"]["overall"]
    assert 0.0 <= o["logged"]["value"] <= 1.0
    for tgt in ("best_model", "uniform"):
        for est in ("ips", "snips", "dr", "dm"):
            v = o["targets"][tgt][est]
            assert v["value"] is not None and v["ci95"][0] <= v["ci95"][1]
        assert o["targets"][tgt]["dr"]["value"] == pytest.approx(o["targets"][tgt]["dr"]["value"])
    assert s["prices"]["glm-5"]["source"] == "fitted"
    assert s["cost"]["logged_total"] > 0 and s["cost"]["best_model_total"] > 0
    # the table output, with prices from the config
    cfg = tmp_path / "router.yaml"
    cfg.write_text(json.dumps({"models": [{"name": n, "base_url": "http://127.0.0.1:1/v1", "input_price": 1.0,
                                           "output_price": 2.0} for n in MODELS]}))
    code = await asyncio.to_thread(main, ["report", "--db", str(db), "--out", str(out), "--bootstrap", "30",
                                          "--config", str(cfg)])
    assert code == 0
    assert json.loads((out / "report.json").read_text())["prices"]["glm-5"]["source"] == "config"


def test_report_errors(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "o")]) == 2
    assert "no such database file" in capsys.readouterr().err


# -- stats against a live app -----------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_stats_live(stack, capsys, monkeypatch):
    client, app, db = stack
    await _traffic(client, 12)
    url = str(client.make_url("")).rstrip("/")
    assert STATS_TOKEN_ENV == ADMIN_TOKEN_ENV
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["stats", "--url", url]) == 0  # the token from the environment
    out = capsys.readouterr().out
    for name in (*MODELS, *PROMPTS, "closed", "± "):
        assert name in out, name
    assert await asyncio.to_thread(main, ["stats", "--url", url, "--category", "coding"]) == 0
    out = capsys.readouterr().out
    assert "coding" in out and "science" not in out
    assert await asyncio.to_thread(main, ["stats", "--url", url, "--category", "coding", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert list(body["categories"]) == ["coding"] and set(body["categories"]["coding"]) == set(MODELS)
    assert await asyncio.to_thread(main, ["stats", "--url", url, "--category", "nope"]) == 2
    assert "no category 'nope'" in capsys.readouterr().err
    # refused: a wrong token, and no token at all
    assert await asyncio.to_thread(main, ["stats", "--url", url, "--token", "wrong-token-0123456789"]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "401" in err
    monkeypatch.delenv(ADMIN_TOKEN_ENV)
    assert await asyncio.to_thread(main, ["stats", "--url", url]) == 2
    err = capsys.readouterr().err
    assert "401" in err and ADMIN_TOKEN_ENV in err
    # unreachable
    assert await asyncio.to_thread(main, ["stats", "--url", "http://127.0.0.1:9", "--timeout", "2"]) == 2
    assert "cannot reach the router" in capsys.readouterr().err


# -- the migration ----------------------------------------------------------------------------------------
def _old_db(path) -> None:
    """A database as schema version 1 wrote it (no score_moments column), with one decision."""
    db = Database(path)
    db["decisions"].create(
        {"event_id": str, "created": float, "category": str, "model": str, "x": bytes, "prompt_tokens": int,
         "expected_cost": float, "cost_weight": float, "learn": bool, "stamp": float, "quality": float,
         "cost_usd": float, "completion_tokens": int, "status": str, "tenant": str},
        pk="event_id", defaults={"status": "routed"},
        not_null={"created", "category", "model", "x", "prompt_tokens", "expected_cost", "cost_weight", "learn",
                  "status"})
    db["feedback"].create({"event_id": str, "source": str, "quality": float, "kind": str, "weight": float,
                           "raw": str, "created": float}, pk=("event_id", "source"))
    db["state"].create({"key": str, "value": bytes, "updated": float}, pk="key")
    db["decisions"].insert({"event_id": "old", "created": time.time(), "category": "general", "model": "m0",
                            "x": np.ones(3).tobytes(), "prompt_tokens": 10, "expected_cost": 0.001,
                            "cost_weight": 1.0, "learn": True, "quality": 1.0, "cost_usd": 0.001,
                            "completion_tokens": 20, "status": "completed"})
    db.execute("PRAGMA user_version = 1")
    db.close()


@pytest.mark.asyncio
async def test_old_database_gets_the_moments_column(tmp_path):
    path = tmp_path / "old.db"
    _old_db(path)
    log = read_log(path)  # the report reads an old file as it is (read-only)
    assert not log.has_moments_column and log.moments == [None] and len(log) == 1
    store = SQLiteStore(path)
    await store.start()
    try:
        old = await store.get_decision("old")
        assert old is not None and old.score_moments is None and old.quality == 1.0
        blob = np.r_[1.0, 0.5, 0.6, 0.1, 0.2].tobytes()
        store.record_decision(DecisionRow("new", time.time(), "general", "m1", np.ones(3).tobytes(), 10, 0.001, 1.0,
                                          True, score_moments=blob))
        await store.flush()
        assert (await store.get_decision("new")).score_moments == blob
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert "score_moments" in {r[1] for r in conn.execute("PRAGMA table_info(decisions)")}
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3  # (1 -> 3: the cache table too)
    assert "cache" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    log = read_log(path)
    assert log.has_moments_column and log.moments[0] is None and log.moments[1] == blob
    # opening again is a no-op
    store = SQLiteStore(path)
    await store.start()
    await store.close()
    with pytest.raises(TypeError, match="score_moments must be bytes"):
        decision_record(DecisionRow("bad", 1.0, "c", "m", b"x", 1, 0.0, 1.0, True, score_moments="x"))  # type: ignore[arg-type]
