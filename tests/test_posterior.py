"""Closed-form checks of bandit_router.posterior: ridge regression with a diagonal prior,
the Sherman-Morrison decision cache, category-wide forgetting and change detection.

Every expected value is computed independently with np.linalg.solve / inv on the raw data.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandit_router.posterior import CHANGE_KEEP, ArmPosteriors, Posterior


def closed_form(x: np.ndarray, r: np.ndarray, m0: np.ndarray, a0: np.ndarray,
                w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """θ̂ = (diag(a0) + Xᵀ W X)⁻¹ (a0∘m0 + Xᵀ W r), and A⁻¹."""
    w = np.ones(len(r)) if w is None else w
    a = np.diag(a0) + (x * w[:, None]).T @ x
    b = a0 * m0 + (x * w[:, None]).T @ r
    return np.linalg.solve(a, b), np.linalg.inv(a)


def noise_var(x, r, m0, a0, w=None) -> float:
    """The plug-in noise variance of the module docstring, from the raw data."""
    w = np.ones(len(r)) if w is None else w
    theta, _ = closed_form(x, r, m0, a0, w)
    b = a0 * m0 + (x * w[:, None]).T @ r
    rr = float(w @ r**2) + float(a0 @ m0**2)
    beta = 0.25 + 0.5 * max(rr - float(theta @ b), 0.0)
    return beta / (1.0 + 0.5 * w.sum())


def dataset(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(n), rng.uniform(-1, 1, (n, d - 1))])
    true = rng.normal(0, 0.3, d)
    true[0] = 0.6
    r = np.clip(x @ true + rng.normal(0, 0.2, n), 0, 1)
    return x, r


def arms_with(x, r, m0, a0, **kw) -> ArmPosteriors:
    arms = ArmPosteriors(len(m0), change_threshold=None, **kw)
    arms.add_arm(m0, a0)
    for xi, ri in zip(x, r, strict=True):
        arms.update(0, xi, float(ri))
    return arms


# ---------------------------------------------------------------- Posterior (the sums)


def test_posterior_mean_is_ridge_regression_with_prior():
    x, r = dataset(1, 40, 5)
    m0 = np.array([0.5, 0.1, -0.2, 0.0, 0.3])
    a0 = np.array([2.0, 10.0, 5.0, 1.0, 20.0])
    post = Posterior.empty(m0, a0)
    for xi, ri in zip(x, r, strict=True):
        post.add(xi, float(ri))
    expected, _ = closed_form(x, r, m0, a0)
    np.testing.assert_allclose(post.mean(), expected, rtol=0, atol=1e-12)
    assert post.n == 40 and post.count == 40
    assert post.noise_var() == pytest.approx(noise_var(x, r, m0, a0), rel=1e-12)


def test_posterior_mean_with_zero_prior_mean_is_plain_ridge():
    x, r = dataset(2, 30, 4)
    lam = 3.0
    post = Posterior.empty(np.zeros(4), np.full(4, lam))
    for xi, ri in zip(x, r, strict=True):
        post.add(xi, float(ri))
    ridge = np.linalg.solve(x.T @ x + lam * np.eye(4), x.T @ r)
    np.testing.assert_allclose(post.mean(), ridge, rtol=0, atol=1e-12)


def test_posterior_predict_sd_matches_closed_form():
    x, r = dataset(3, 25, 3)
    m0, a0 = np.array([0.5, 0, 0]), np.array([1.0, 4.0, 4.0])
    post = Posterior.empty(m0, a0)
    for xi, ri in zip(x, r, strict=True):
        post.add(xi, float(ri))
    q = np.array([1.0, 0.4, -0.7])
    theta, a_inv = closed_form(x, r, m0, a0)
    mean, sd = post.predict(q)
    assert mean == pytest.approx(theta @ q, abs=1e-12)
    assert sd == pytest.approx(np.sqrt(noise_var(x, r, m0, a0) * q @ a_inv @ q), rel=1e-10)


def test_merged_halves_equal_posterior_of_all_data():
    x, r = dataset(4, 50, 4)
    m0, a0 = np.array([0.5, 0, 0, 0]), np.full(4, 2.0)
    first, second, whole = (Posterior.empty(m0, a0) for _ in range(3))
    for i, (xi, ri) in enumerate(zip(x, r, strict=True)):
        (first if i < 20 else second).add(xi, float(ri))
        whole.add(xi, float(ri))
    merged = first.merged(second)
    np.testing.assert_allclose(merged.xx, whole.xx, atol=1e-12)
    np.testing.assert_allclose(merged.xr, whole.xr, atol=1e-12)
    assert (merged.rr, merged.n, merged.count) == (pytest.approx(whole.rr), 50.0, 50)
    np.testing.assert_allclose(merged.mean(), closed_form(x, r, m0, a0)[0], atol=1e-12)
    # the prior is counted once, not twice
    np.testing.assert_array_equal(merged.prior_precision, a0)


# ---------------------------------------------------------------- the decision cache


@pytest.mark.parametrize("refresh_every", [256, 10**9], ids=["periodic-rebuild", "pure-sherman-morrison"])
def test_cache_after_many_rank_one_updates_matches_closed_form(refresh_every):
    x, r = dataset(5, 1000, 6)
    m0 = np.array([0.5, 0.0, 0.1, 0.0, 0.0, -0.1])
    a0 = np.array([1.0, 10.0, 10.0, 3.0, 10.0, 10.0])
    arms = arms_with(x, r, m0, a0, refresh_every=refresh_every)
    theta, a_inv = closed_form(x, r, m0, a0)
    np.testing.assert_allclose(arms.theta[0], theta, rtol=0, atol=1e-8)
    np.testing.assert_allclose(arms.P[0], a_inv, rtol=0, atol=1e-8)
    assert arms.sigma[0] ** 2 == pytest.approx(noise_var(x, r, m0, a0), rel=1e-8)


def test_sample_mean_and_spread_are_the_closed_form():
    d = 4
    arms = ArmPosteriors(d, change_threshold=None)
    data = []
    for k in range(3):
        x, r = dataset(10 + k, 60 + 30 * k, d)
        m0, a0 = np.array([0.3 + 0.2 * k, 0, 0, 0]), np.array([1.0 + k, 10, 10, 10])
        arms.add_arm(m0, a0)
        for xi, ri in zip(x, r, strict=True):
            arms.update(k, xi, float(ri))
        data.append((x, r, m0, a0))
    q = np.array([1.0, 0.5, -0.25, 0.8])
    means = np.array([closed_form(*dk)[0] @ q for dk in data])
    sds = np.array([np.sqrt(noise_var(*dk) * q @ closed_form(*dk)[1] @ q) for dk in data])
    np.testing.assert_allclose(arms.sample(q, np.zeros(3)), means, atol=1e-10)
    np.testing.assert_allclose(arms.sample(q, np.ones(3)) - means, sds, rtol=1e-8)
    z = np.array([-1.5, 0.3, 2.0])
    np.testing.assert_allclose(arms.sample(q, z, explore=0.5) - means, 0.5 * z * sds, rtol=1e-8, atol=1e-12)
    assert np.all(sds > 0.005)  # the spread is real, so the checks above are not 0 == 0


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.floats(-2, 2), st.floats(-2, 2), st.floats(0, 1)), min_size=0, max_size=20),
    m0=st.tuples(st.floats(0, 1), st.floats(-1, 1), st.floats(-1, 1)),
    a0=st.tuples(st.floats(0.2, 50), st.floats(0.2, 50), st.floats(0.2, 50)),
)
def test_cache_equals_closed_form_on_random_small_data(rows, m0, a0):
    m0, a0 = np.array(m0), np.array(a0)
    x = np.array([[1.0, u, v] for u, v, _ in rows]).reshape(len(rows), 3)
    r = np.array([q for _, _, q in rows])
    arms = arms_with(x, r, m0, a0, refresh_every=10**9)
    theta, a_inv = closed_form(x, r, m0, a0)
    np.testing.assert_allclose(arms.theta[0], theta, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(arms.P[0], a_inv, rtol=1e-9, atol=1e-9)


def test_get_set_round_trip_under_a_pending_scale():
    x, r = dataset(6, 40, 3)
    m0, a0 = np.array([0.5, 0, 0]), np.array([1.0, 5, 5])
    arms = ArmPosteriors(3, change_threshold=None)
    arms.add_arm(m0, a0)
    arms.add_arm(m0, a0)
    for xi, ri in zip(x, r, strict=True):
        arms.decay(0.99)
        arms.update(0, xi, float(ri))
    assert arms.s > 1.3  # the stored sums really are scaled
    post = arms.get(0)
    arms.set(1, post)
    back = arms.get(1)
    np.testing.assert_allclose(back.xx, post.xx, rtol=1e-12)
    np.testing.assert_allclose(back.xr, post.xr, rtol=1e-12)
    assert (back.n, back.rr, back.count) == (pytest.approx(post.n), pytest.approx(post.rr), 40)
    np.testing.assert_allclose(arms.theta[1], post.mean(), atol=1e-10)


# ---------------------------------------------------------------- forgetting


def test_an_observation_weighs_half_after_one_half_life():
    h = 50
    g = 0.5 ** (1 / h)
    arms = ArmPosteriors(3, change_threshold=None)
    arms.add_arm(np.array([0.5, 0, 0]), np.ones(3))
    rng = np.random.default_rng(7)
    # the oldest observation alone uses direction e2, so its weight can be read off the sums
    xs = [np.array([0.0, 0.0, 1.0])] + [np.array([1.0, rng.uniform(-1, 1), 0.0]) for _ in range(h)]
    rs = [1.0] + list(rng.uniform(0, 1, h))
    for xi, ri in zip(xs, rs, strict=True):
        arms.decay(g)  # as Router does: decay, then fold in the event
        arms.update(0, xi, ri)
    post = arms.get(0)
    assert post.xx[2, 2] == pytest.approx(0.5, abs=1e-9)
    assert post.xr[2] == pytest.approx(0.5, abs=1e-9)
    # and every other observation carries g^age
    w = g ** np.arange(h, -1, -1)
    x, r = np.array(xs), np.array(rs)
    np.testing.assert_allclose(post.xx, (x * w[:, None]).T @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(post.xr, (x * w[:, None]).T @ r, rtol=1e-12, atol=1e-12)
    assert post.n == pytest.approx(w.sum(), rel=1e-12)
    assert post.count == h + 1


def test_router_half_life_in_events_halves_the_oldest_observation():
    from bandit_router.costs import Price
    from bandit_router.router import BanditSettings, ModelSpec, Router

    h = 40
    router = Router([ModelSpec("m", Price(1, 1))], BanditSettings(half_life_events=h), categories=["c"], dim=2)
    router.observe("c", 0, np.array([0.0, 1.0]), 1.0)
    for _ in range(h):
        router.observe("c", 0, np.array([1.0, 0.0]), 0.0)
    assert router.posterior("c", "m").xx[1, 1] == pytest.approx(0.5, abs=1e-9)


def test_forgetting_never_goes_below_the_prior():
    d = 3
    x, r = dataset(8, 200, d)
    m0, a0 = np.array([0.7, 0.1, -0.1]), np.array([2.0, 8.0, 4.0])
    h = 1000
    g = 0.5 ** (1 / h)
    arms = ArmPosteriors(d, change_threshold=None)
    arms.add_arm(m0, a0)
    for xi, ri in zip(x, r, strict=True):
        arms.decay(g)
        arms.update(0, xi, float(ri))
    assert np.linalg.norm(arms.get(0).mean() - m0) > 0.05  # the data moved it away from the prior
    for _ in range(100 * h):  # 100 half-lives of events with no feedback on this arm
        arms.decay(g)
    post = arms.get(0)
    np.testing.assert_allclose(post.precision(), np.diag(a0), rtol=0, atol=1e-25)
    np.testing.assert_allclose(post.mean(), m0, atol=1e-25)
    arms.refresh_all()
    np.testing.assert_allclose(arms.P[0], np.diag(1 / a0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(arms.theta[0], m0, atol=1e-12)
    for _ in range(20):  # drastic decay: the scale is renormalised and nothing overflows
        arms.decay(1e-30)
    assert np.isfinite(arms.s) and arms.s <= 1e131
    post = arms.get(0)
    np.testing.assert_array_equal(post.xx, 0.0)
    np.testing.assert_array_equal(post.precision(), np.diag(a0))


def test_cache_under_forgetting_is_exact_after_refresh_and_close_before():
    d = 4
    h = 2000  # slow forgetting: ~40 events between batched rebuilds, so the cache really lags
    g = 0.5 ** (1 / h)
    a0 = np.array([1.0, 10.0, 10.0, 10.0])
    m0 = np.array([0.5, 0, 0, 0])
    arms = ArmPosteriors(d, change_threshold=None, refresh_every=10**9)  # only the batched rebuilds
    for _ in range(3):
        arms.add_arm(m0, a0)
    rng = np.random.default_rng(9)
    p_true = np.array([0.2, 0.6, 0.9])
    worst = 0.0
    lagging = 0
    for _ in range(1500):
        k = int(rng.integers(3))
        xi = np.concatenate([[1.0], rng.normal(0, 0.1, d - 1)])
        arms.decay(g)
        arms.update(k, xi, float(rng.random() < p_true[k]))
        lagging += arms.pending < 1.0
        assert arms.pending >= 0.98  # never more than 2% behind the true forgetting
        post = arms.get(k)
        worst = max(worst, float(np.abs(arms.theta[k] - post.mean()).max()))
        # however the cache lags, the precision never drops below the prior's
        assert np.linalg.eigvalsh(arms.P[k]).max() <= 1 / a0.min() * (1 + 1e-9)
    assert lagging > 1000  # most steps were taken with decay pending
    assert 1e-6 < worst < 0.05
    arms.refresh_all()
    assert arms.pending == 1.0
    for k in range(3):
        post = arms.get(k)
        np.testing.assert_allclose(arms.theta[k], post.mean(), atol=1e-10)
        np.testing.assert_allclose(arms.P[k], np.linalg.inv(post.precision()), atol=1e-10)
        assert arms.sigma[k] ** 2 == pytest.approx(post.noise_var(), rel=1e-9)
        assert abs(arms.theta[k][0] - p_true[k]) < 0.1


def test_pending_decay_moves_an_intercept_mean_by_at_most_its_bound():
    """d=1: the cache and the truth are weighted means of the same values in [0, 1], with weight
    ratios in [1, 1/0.98], so they differ by at most (√C−1)/(√C(1+√C)) ≈ 0.005 with C = 1/0.98."""
    g = 0.5 ** (1 / 1000)  # a batched rebuild every ~29 events
    arms = ArmPosteriors(1, change_threshold=None, refresh_every=10**9)  # only the batched rebuilds
    arms.add_arm(np.array([0.5]), np.array([1.0]))
    worst = 0.0
    for t in range(3000):
        arms.decay(g)
        arms.update(0, np.ones(1), float((t // 50) % 2))  # blocks of 1s and 0s: old and new data disagree
        worst = max(worst, abs(float(arms.theta[0, 0]) - float(arms.get(0).mean()[0])))
    c = 1 / 0.98
    assert 1e-4 < worst <= (c**0.5 - 1) / (c**0.5 * (1 + c**0.5))


# ---------------------------------------------------------------- change detection


def bernoulli_arm(seed: int, ps: list[tuple[float, int]]) -> tuple[ArmPosteriors, list[int]]:
    """Feed an intercept-only arm with Bernoulli outcomes; returns it and the counts at each detection."""
    arms = ArmPosteriors(1)
    arms.add_arm(np.array([0.5]), np.array([1.0]))
    rng = np.random.default_rng(seed)
    detected_at = []
    t = 0
    for p, n in ps:
        for _ in range(n):
            before = int(arms.changes[0])
            n_before = arms.get(0).n
            arms.update(0, np.ones(1), float(rng.random() < p))
            t += 1
            if arms.changes[0] > before:
                detected_at.append(t)
                # on a change the arm keeps CHANGE_KEEP of its data, then adds the new observation
                assert arms.get(0).n == pytest.approx(CHANGE_KEEP * n_before + 1, rel=1e-12)
    return arms, detected_at


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_abrupt_drop_is_detected_quickly(seed):
    arms, detected = bernoulli_arm(seed, [(0.9, 300), (0.3, 200)])
    assert arms.changes[0] >= 1
    assert 300 < detected[0] <= 360
    assert abs(arms.get(0).mean()[0] - 0.3) < 0.12  # and re-learned


def test_no_false_alarm_on_a_stationary_arm():
    arms, detected = bernoulli_arm(123, [(0.9, 20_000)])
    assert detected == []
    assert arms.get(0).mean()[0] == pytest.approx(0.9, abs=0.01)


def test_change_detection_can_be_switched_off():
    arms = ArmPosteriors(1, change_threshold=None)
    arms.add_arm(np.array([0.5]), np.array([1.0]))
    for t in range(500):
        arms.update(0, np.ones(1), 1.0 if t < 300 else 0.0)
    assert arms.changes[0] == 0
    assert arms.get(0).n == 500
