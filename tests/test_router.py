"""The Router end to end on a seeded synthetic world: convergence, drift, known costs,
model lifecycle, priors, delayed feedback, limits, determinism and warm starts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.costs import Price
from bandit_router.features import estimate_tokens, featurize
from bandit_router.router import BanditSettings, ModelSpec, NoEligibleModel, Router

# Utility = quality − 10 × $/request; every model answers 256 tokens by default, so the output
# price sets the cost: big ≈ $0.036 (−0.36), coder ≈ $0.0005, thinker ≈ $0.001, tiny ≈ $0.00003.
PRICES = {
    "big": Price(1.0, 140.0),
    "coder": Price(0.5, 2.0),
    "thinker": Price(0.5, 4.0),
    "tiny": Price(0.05, 0.1),
}
QUALITY = {  # true Bernoulli success rates per category
    "A": {"big": 0.98, "coder": 0.85, "thinker": 0.45, "tiny": 0.25},
    "B": {"big": 0.98, "coder": 0.35, "thinker": 0.85, "tiny": 0.25},
}
BEST = {"A": "coder", "B": "thinker"}  # in utility; big is best in quality everywhere
PROMPTS = {
    "A": ["Write a Python function that reverses a linked list.",
          "Fix the bug in this loop:\n```\nfor i in range(n): total += i\n```",
          "Implement binary search in Rust and add unit tests.",
          "Refactor this JavaScript method to use async/await."],
    "B": ["Prove that the sum of two even numbers is even.",
          "If all bloops are razzies and some razzies are lazzies, are some bloops lazzies?",
          "Explain step by step why the harmonic series diverges.",
          "A bat and a ball cost $1.10 in total. How much does the ball cost?"],
}


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def make_router(seed: int = 0, models=("big", "coder", "thinker", "tiny"), **settings) -> Router:
    specs = [ModelSpec(m, PRICES[m]) for m in models]
    return Router(specs, BanditSettings(seed=seed, **settings), categories=("A", "B"))


class World:
    """Seeded outcomes for the synthetic problem; ``quality`` may be changed to make drift."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.quality = {c: dict(q) for c, q in QUALITY.items()}

    def run(self, router: Router, n: int, cats=("A", "B"), **decide_kw) -> dict[str, list[str]]:
        """n rounds; each round one request per category, decided and learned at once."""
        chosen: dict[str, list[str]] = {c: [] for c in cats}
        for t in range(n):
            for c in cats:
                d = router.decide(msgs(PROMPTS[c][t % len(PROMPTS[c])]), category=c, **decide_kw)
                router.learn(d, float(self.rng.random() < self.quality[c][d.model]))
                chosen[c].append(d.model)
        return chosen


def share(seq: list[str], model: str) -> float:
    return seq.count(model) / len(seq)


def trained_router(seed: int = 0, rounds: int = 800) -> tuple[Router, World]:
    """A router after ``rounds`` requests per category with bandit feedback: it knows the models
    it chose well, and the expensive ``big`` hardly at all."""
    router, world = make_router(seed), World(seed)
    world.run(router, rounds)
    return router, world


def warm_records(seed: int, rows: int = 200):
    """Full-information records (every model's outcome on every row), alternating categories."""
    rng = np.random.default_rng(seed)
    for i in range(rows):
        cat = "AB"[i % 2]
        x = featurize(msgs(PROMPTS[cat][i // 2 % 4]))
        yield (cat, x, {m: float(rng.random() < q) for m, q in QUALITY[cat].items()},
               {m: 256.0 for m in QUALITY[cat]})


def known_router(seed: int = 0) -> Router:
    """A router warm-started with full information: it knows every model's quality."""
    router = make_router(seed)
    router.warm_start(warm_records(seed, 400))
    return router


# ---------------------------------------------------------------- learning and drift


def test_converges_to_the_best_utility_model_per_category_then_follows_a_drop():
    router, world = make_router(seed=3), World(3)
    chosen = world.run(router, 2000)
    for cat in ("A", "B"):
        assert share(chosen[cat][-500:], BEST[cat]) > 0.8, (cat, chosen[cat][-500:].count(BEST[cat]))
    # the coder regresses on A: big (0.98 − 0.36) is now the best in utility there
    world.quality["A"]["coder"] = 0.2
    after = world.run(router, 600)
    assert share(after["A"][300:], "big") > 0.8
    first_good = next(i for i in range(len(after["A"])) if share(after["A"][i:i + 50], "big") > 0.8)
    assert first_good < 200
    assert share(after["B"][300:], "thinker") > 0.8  # B is unaffected


def test_learned_quality_is_close_to_the_truth_for_the_chosen_models():
    router, _ = trained_router(rounds=1500)
    stats = router.arm_stats()
    assert stats["A"]["coder"]["quality_mean"] == pytest.approx(0.85, abs=0.04)
    assert stats["B"]["thinker"]["quality_mean"] == pytest.approx(0.85, abs=0.04)
    assert stats["A"]["coder"]["observations"] > 1000
    assert stats["A"]["big"]["observations"] < 300  # expensive: explored, not exploited


# ---------------------------------------------------------------- costs are known, not learned


def test_price_change_acts_on_the_very_next_decision():
    router, _ = trained_router()
    before = [router.decide(msgs(PROMPTS["A"][0]), category="A").model for _ in range(50)]
    assert share(before, "coder") > 0.8
    counts = {c: {m: s["observations"] for m, s in r.items()} for c, r in router.arm_stats().items()}
    router.set_price("coder", Price(50.0, 200.0))  # 100× the output price: −0.5 utility
    after = [router.decide(msgs(PROMPTS["A"][0]), category="A") for _ in range(200)]
    assert all(d.model != "coder" for d in after)
    coder_cost = after[0].costs[router.index["coder"]]
    assert coder_cost == pytest.approx(
        (estimate_tokens(msgs(PROMPTS["A"][0])) * 50.0 + 256 * 200.0) / 1e6, rel=1e-12)
    # nothing was learned in between
    assert {c: {m: s["observations"] for m, s in r.items()} for c, r in router.arm_stats().items()} == counts


def test_cost_weight_zero_picks_the_highest_quality_model():
    router = known_router()
    for cat in ("A", "B"):
        picks = [router.decide(msgs(PROMPTS[cat][1]), category=cat, cost_weight=0.0).model for _ in range(200)]
        assert share(picks, "big") > 0.9, cat
        cheap = [router.decide(msgs(PROMPTS[cat][1]), category=cat).model for _ in range(200)]
        assert share(cheap, "big") < 0.1, cat


# ---------------------------------------------------------------- model lifecycle


def test_disabled_model_is_never_chosen_and_can_come_back():
    router, world = trained_router(seed=1)
    router.set_enabled("coder", False)
    chosen = world.run(router, 1000)  # 2000 decisions
    assert all(m != "coder" for m in chosen["A"] + chosen["B"])
    assert share(chosen["A"][-300:], "big") > 0.6  # the next best in A takes over
    assert router.arm_stats()["A"]["coder"]["enabled"] is False
    router.set_enabled("coder", True)
    back = world.run(router, 200)
    assert share(back["A"][-100:], "coder") > 0.8


def test_model_added_later_starts_from_its_prior_is_explored_and_takes_over():
    router, world = trained_router(seed=2)
    n_before = router.arm_stats()["A"]["coder"]["observations"]
    router.add_model(ModelSpec("newbie", Price(0.1, 0.5)))
    stats = router.arm_stats()
    assert stats["A"]["newbie"]["observations"] == 0
    assert stats["A"]["newbie"]["quality_mean"] == pytest.approx(0.5, abs=1e-12)
    assert stats["A"]["coder"]["observations"] == n_before  # existing arms untouched
    for cat in ("A", "B"):
        world.quality[cat]["newbie"] = 0.95  # cheap and better than everything: the new best
    chosen = world.run(router, 800)
    for cat in ("A", "B"):
        first = chosen[cat][:100]
        assert first.count("newbie") >= 3, cat  # explored early
        assert share(chosen[cat][-300:], "newbie") > 0.8, cat
    with pytest.raises(ValueError, match="already known"):
        router.add_model(ModelSpec("newbie", Price(1, 1)))


def test_a_mediocre_new_model_is_explored_but_not_adopted():
    router, world = trained_router(seed=4)
    router.add_model(ModelSpec("meh", Price(0.1, 0.5)))
    for cat in ("A", "B"):
        world.quality[cat]["meh"] = 0.3
    chosen = world.run(router, 600)
    for cat in ("A", "B"):
        assert 1 <= chosen[cat].count("meh") < 60, cat
        assert share(chosen[cat][-200:], BEST[cat]) > 0.8


# ---------------------------------------------------------------- priors


def test_model_priors_show_in_arm_stats_before_any_feedback():
    specs = [ModelSpec("strong", Price(1, 1), priors={"coding": (0.8, 20.0)}),
             ModelSpec("plain", Price(1, 1))]
    router = Router(specs, BanditSettings(prior_quality=0.4, prior_strength=2.0))
    stats = router.arm_stats()
    s = stats["coding"]["strong"]
    assert (s["observations"], s["prior_quality"], s["prior_strength"]) == (0, 0.8, 20.0)
    assert s["quality_mean"] == pytest.approx(0.8, abs=1e-12)
    assert s["quality_sd"] == pytest.approx(math.sqrt(0.25 / 20.0), rel=1e-9)
    # other categories and models fall back to the settings' prior
    for cat, model in (("general", "strong"), ("coding", "plain")):
        assert stats[cat][model]["prior_quality"] == 0.4
        assert stats[cat][model]["quality_mean"] == pytest.approx(0.4, abs=1e-12)
        assert stats[cat][model]["quality_sd"] == pytest.approx(math.sqrt(0.25 / 2.0), rel=1e-9)


def test_a_strong_prior_decides_before_any_feedback():
    specs = [ModelSpec("known_good", Price(1, 1), priors={"A": (0.9, 50.0)}),
             ModelSpec("unknown", Price(1, 1))]
    router = Router(specs, BanditSettings(seed=5), categories=("A",))
    picks = [router.decide(msgs("hello"), category="A").model for _ in range(200)]
    assert share(picks, "known_good") > 0.9


@pytest.mark.parametrize("prior", [(1.2, 5.0), (-0.1, 5.0), (0.5, 0.0)])
def test_invalid_priors_are_rejected(prior):
    with pytest.raises(ValueError, match=r"models\.m\.priors\.A"):
        Router([ModelSpec("m", Price(1, 1), priors={"A": prior})], categories=("A",))


# ---------------------------------------------------------------- decisions and feedback


def test_decision_carries_what_learning_needs():
    router = make_router()
    m = msgs("Write a Python function that parses ISO dates.")
    d = router.decide(m)  # category inferred
    assert d.category == "coding"
    np.testing.assert_array_equal(d.x, featurize(m))
    assert d.model in router.models and router.models[d.arm] == d.model
    pt = estimate_tokens(m)
    assert d.prompt_tokens == pt
    p = PRICES[d.model]
    assert d.expected_cost == pytest.approx((pt * p.input + 256 * p.output) / 1e6, rel=1e-12)
    assert d.cost_weight == 10.0
    assert d.scores[d.arm] == max(d.scores)


def test_delayed_feedback_updates_exactly_its_own_arm():
    router = make_router(seed=6)
    stored = router.decide(msgs(PROMPTS["A"][2]), category="A")
    others = [router.decide(msgs(PROMPTS[c][0]), category=c) for c in ("A", "B", "B")]
    counts_before = {(c, m): s["observations"] for c, rows in router.arm_stats().items() for m, s in rows.items()}
    assert sum(counts_before.values()) == 0
    router.learn(stored, 1.0)
    counts = {(c, m): s["observations"] for c, rows in router.arm_stats().items() for m, s in rows.items()}
    changed = {key for key in counts if counts[key] != counts_before[key]}
    assert changed == {("A", stored.model)}
    post = router.posterior("A", stored.model)
    np.testing.assert_allclose(post.xx, np.outer(stored.x, stored.x), atol=1e-12)
    np.testing.assert_allclose(post.xr, stored.x, atol=1e-12)
    # the other decisions can still be learned later, each on its own arm
    for d in others:
        router.learn(d, 0.0)
    counts = {(c, m): s["observations"] for c, rows in router.arm_stats().items() for m, s in rows.items()}
    assert sum(counts.values()) == 4
    assert sum(v for (c, _), v in counts.items() if c == "B") == 2


@pytest.mark.parametrize("q", [-0.01, 1.01, float("nan"), float("inf"), -float("inf")])
def test_learn_rejects_quality_out_of_range(q):
    router = make_router()
    d = router.decide(msgs("hi"), category="A")
    with pytest.raises(ValueError, match="quality"):
        router.learn(d, q)
    assert router.arm_stats()["A"][d.model]["observations"] == 0


@pytest.mark.parametrize("q", [0.0, 1.0, 0.5])
def test_learn_accepts_the_bounds(q):
    router = make_router()
    d = router.decide(msgs("hi"), category="A")
    router.learn(d, q)
    assert router.posterior("A", d.model).xr[0] == pytest.approx(q)


def test_max_cost_excludes_expensive_models():
    router = known_router(1)
    m = msgs(PROMPTS["B"][0])
    costs = np.asarray(router.decide(m, category="B").costs)
    limit = float(np.sort(costs)[1]) * 1.0001  # only the two cheapest fit
    allowed = {router.models[i] for i in np.flatnonzero(costs <= limit)}
    assert allowed == {"tiny", "coder"}
    picks = {router.decide(m, category="B", max_cost_usd=limit, cost_weight=0.0).model for _ in range(300)}
    assert picks <= allowed and picks  # thinker and big (better in quality) are over the limit
    assert router.decide(m, category="B", max_cost_usd=limit).expected_cost <= limit
    with pytest.raises(NoEligibleModel):
        router.decide(m, category="B", max_cost_usd=float(costs.min()) / 2)


def test_nothing_eligible_raises():
    router = make_router(models=("big", "coder"))
    with pytest.raises(NoEligibleModel):
        router.decide(msgs("hi"), category="A", exclude=["big", "coder"])
    router.set_enabled("big", False)
    assert router.decide(msgs("hi"), category="A").model == "coder"
    router.set_enabled("coder", False)
    with pytest.raises(NoEligibleModel):
        router.decide(msgs("hi"), category="A")
    with pytest.raises(KeyError, match="nope"):
        router.set_enabled("nope", True)


def test_same_seed_same_decisions():
    def trace(seed: int) -> list[str]:
        router, world = make_router(seed), World(0)
        chosen = world.run(router, 150)
        return chosen["A"] + chosen["B"]

    a, b, c = trace(11), trace(11), trace(12)
    assert a == b
    assert a != c


def test_warm_start_with_full_information_picks_the_best_at_once():
    router = make_router(seed=7)
    records = [(cat, x, q | {"ghost": 1.0}, out) for cat, x, q, out in warm_records(7)]
    assert router.warm_start(records) == 800  # 4 known models × 200 rows; "ghost" is ignored
    assert router.arm_stats()["A"]["big"]["observations"] == 100
    for cat in ("A", "B"):
        first = [router.decide(msgs(PROMPTS[cat][t % 4]), category=cat).model for t in range(20)]
        assert first == [BEST[cat]] * 20, (cat, first)


def test_long_idle_gap_with_time_based_forgetting_resets_to_prior():
    router = make_router(half_life_seconds=60.0)
    router.learn(router.decide(msgs("hi"), category="A"), 1.0, now=0.0)
    router.learn(router.decide(msgs("hi"), category="A"), 1.0, now=70_000.0)  # ~19 h later
    assert router.arm_stats()["A"]["big"]["effective_observations"] <= 1.0


def test_a_second_signal_revises_the_decision_instead_of_adding_one():
    """learn() twice on one decision: as if the final quality had been learned the first time,
    at the weight forgetting has left it (here half: one half-life of events in between)."""
    msg = msgs(PROMPTS["A"][0])
    x_other = featurize(msgs(PROMPTS["A"][1]))
    routers = [make_router(seed=8, half_life_events=6.0) for _ in range(2)]
    decisions = [r.decide(msg, category="A") for r in routers]
    assert decisions[0].model == decisions[1].model
    k = decisions[0].arm
    routers[0].learn(decisions[0], 0.0)  # a first, provisional signal ...
    routers[1].learn(decisions[1], 0.75)
    for r in routers:
        for t in range(6):  # one half-life of other events, on another arm
            r.observe("A", (k + 1) % 4, x_other, float(t % 2))
    routers[0].learn(decisions[0], 0.25)
    routers[0].learn(decisions[0], 0.75)  # ... revised twice by later ones
    for model in routers[0].models:
        a, b = routers[0].posterior("A", model), routers[1].posterior("A", model)
        np.testing.assert_allclose(a.xx, b.xx, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(a.xr, b.xr, rtol=1e-12, atol=1e-15)
        assert (a.rr, a.n, a.count) == (pytest.approx(b.rr, rel=1e-12), pytest.approx(b.n, rel=1e-12), b.count)
    post = routers[0].posterior("A", decisions[0].model)
    np.testing.assert_allclose(post.xr, 0.5 * 0.75 * decisions[0].x, rtol=1e-12, atol=1e-15)
    assert post.rr == pytest.approx(0.5 * 0.75**2, rel=1e-12)
    assert (post.n, post.count) == (pytest.approx(0.5, rel=1e-12), 1)  # revisions add no observation


def test_expected_cost_follows_the_observed_output_length():
    router = make_router(models=("coder", "thinker"))
    m = msgs("Explain recursion.")
    d = router.decide(m, category="A")
    for _ in range(30):
        router.observe_output(d, 2000.0)
    tokens = router.expected_output_tokens("A", d.model)
    assert 1700 < tokens < 2000
    after = router.decide(m, category="A").costs[d.arm]
    p = PRICES[d.model]
    assert after == pytest.approx((estimate_tokens(m) * p.input + tokens * p.output) / 1e6, rel=1e-12)
    assert after > 6 * d.costs[d.arm]


def test_warm_start_output_tokens_reach_the_expected_cost():
    router = make_router(models=("coder", "thinker"))
    x = featurize(msgs("Explain recursion."))
    router.warm_start([("A", x, {"coder": 1.0, "thinker": 1.0}, {"coder": 2000.0, "thinker": 2000.0})] * 30)
    tokens = router.expected_output_tokens("A", "coder")
    assert tokens > 1700
    d = router.decide(msgs("Explain recursion."), category="A")
    assert d.costs[router.index["coder"]] == pytest.approx(
        (estimate_tokens(msgs("Explain recursion.")) * 0.5 + tokens * 2.0) / 1e6, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), forced=st.booleans())
def test_the_decision_in_python_floats_is_numpy_arithmetic_bit_for_bit(k, seed, forced):
    """decide_features does its per-model arithmetic in Python floats (policy.choose): every score,
    cost and draw equals the vectorised formula's, computed with numpy from the same state, to the
    last bit, and the choice is numpy's argmax."""
    rng = np.random.default_rng(seed)
    specs = [ModelSpec(f"m{i}", Price(float(rng.uniform(0, 20)), float(rng.uniform(0, 80))),
                       categories=None if i == 0 or rng.random() < 0.8 else ("A",)) for i in range(k)]
    router = Router(specs, BanditSettings(seed=seed, explore=float(rng.uniform(0.1, 2))), categories=("A", "B"))
    for _ in range(int(rng.integers(0, 60))):  # some learning, output lengths, a price change
        d = router.decide_features(np.r_[1.0, rng.random(router.dim - 1)], "B", float(rng.integers(1, 5000)))
        router.learn(d, float(rng.random()))
        router.observe_output(d, float(rng.integers(1, 2000)))
    router.scale_price(f"m{int(rng.integers(k))}", float(rng.uniform(0.1, 3)))
    if k > 1 and rng.random() < 0.5:
        router.set_enabled(f"m{int(rng.integers(1, k))}", False)
    for _ in range(20):
        x = np.r_[1.0, rng.normal(size=router.dim - 1)]
        tokens, w = float(rng.integers(1, 20000)), float(rng.uniform(0, 100))
        eligible = rng.random(k) < 0.8 if rng.random() < 0.5 else None
        cat = router._cats["B"]
        costs = tokens * router.prices.input_per_token
        costs += cat.out.mean * router.prices.output_per_token
        limit = float(rng.choice(costs)) if rng.random() < 0.3 else None  # at a model's cost: <= counts
        try:
            d = router.decide_features(x, "B", tokens, cost_weight=w, eligible=eligible, max_cost_usd=limit,
                                       forced=forced and eligible is not None)
        except NoEligibleModel:
            d = None
        z = np.asarray(router._z[router._zi - 1])
        draw, sd = cat.arms.sample_moments(x, z)  # the vectorised formula (numpy)
        ok = np.ones(k, dtype=bool) if eligible is None else eligible.copy()
        if limit is not None:
            ok &= costs <= limit
        serves = np.where(router.enabled & cat.serves, 0.0, -np.inf)
        penalty = np.where(ok, 0.0 if forced and eligible is not None else serves, -np.inf)
        score = costs * -w
        score += draw
        score += penalty
        if d is None:
            assert not np.isfinite(score).any()
            continue
        assert d.arm == int(score.argmax()) and d.costs == costs.tolist() and d.expected_cost == costs[d.arm]
        assert d.scores == score.tolist() and d.draw_sd == sd.tolist() and d.draw_z == z.tolist()
