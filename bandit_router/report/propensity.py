"""The choice probability of a Thompson-sampling decision, from its logged moments.

A decision drew, for every eligible arm i independently, ``s_i ~ N(μ_i, σ_i²)`` (the score mean and
sd the router logs) and chose the largest. So the propensity of arm k is

    P(k) = ∫ φ((t − μ_k)/σ_k)/σ_k · Π_{i≠k} Φ((t − μ_i)/σ_i) dt,

a 1-D integral with no closed form beyond two arms (where it is Φ((μ_k − μ_j)/√(σ_k² + σ_j²))).

It is integrated on the union of per-arm grids, ``G`` nodes over μ_i ± 8σ_i for every eligible
arm i, with a 3-point Gauss-Legendre rule on each interval between nodes (beyond the outermost
nodes: arm k's tail mass times the CDF product there). So each feature of the integrand, arm k's
density (width σ_k) and every other arm's CDF step (width σ_i), gets nodes at its own scale,
however different the scales are (a well-known arm's σ can be 100× smaller than a new one's).
The sd is floored at 1e-12, so σ = 0 (``explore: 0``) gives 0 or 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import ndtr

SD_FLOOR = 1e-12
SPAN = 8.0  # each arm's grid covers ±SPAN sd
NODES = 17  # per arm (every interval between nodes gets a 3-point Gauss-Legendre rule)


def choice_probability(mean: np.ndarray, sd: np.ndarray, arm: np.ndarray | int, *, nodes: int = NODES,
                       chunk: int = 2048, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """P(arm k has the largest of independent draws N(mean_i, sd_i²)), per row.

    ``mean``, ``sd``: (n, K) (or (K,) for one row); an arm with a non-finite mean is not eligible
    (the router logs −inf). ``arm``: (n,) arm indices (or one int). Returns (n,) probabilities
    (0 for an ineligible ``arm``)."""
    mean = np.atleast_2d(np.asarray(mean, dtype=float))
    sd = np.atleast_2d(np.asarray(sd, dtype=float))
    n, k = mean.shape
    if sd.shape != mean.shape:
        raise ValueError(f"mean {mean.shape} and sd {sd.shape} differ in shape")
    arm = np.broadcast_to(np.asarray(arm, dtype=np.int64), (n,))
    if n and (arm.min() < 0 or arm.max() >= k):
        raise ValueError(f"arm index out of range for {k} arms")
    out = np.zeros(n)
    u = np.linspace(-SPAN, SPAN, nodes)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        out[lo:hi] = _chunk(mean[lo:hi], sd[lo:hi], arm[lo:hi], u)
        if progress is not None:
            progress(hi, n)
    return out


_GL_X, _GL_W = np.polynomial.legendre.leggauss(3)
_GL_X, _GL_W = (_GL_X + 1.0) / 2.0, _GL_W / 2.0  # on [0, 1]


def _chunk(mean: np.ndarray, sd: np.ndarray, arm: np.ndarray, u: np.ndarray) -> np.ndarray:
    n, k = mean.shape
    rows = np.arange(n)
    ok = np.isfinite(mean)
    chosen_ok = ok[rows, arm]
    sd = np.where(ok, np.maximum(np.nan_to_num(sd, nan=0.0), SD_FLOOR), 1.0)
    mu_k = np.where(chosen_ok, mean[rows, arm], 0.0)
    sd_k = np.where(chosen_ok, sd[rows, arm], 1.0)
    others = ok & (np.arange(k) != arm[:, None])
    # nodes: the grids of arm k and of every other eligible arm, merged and sorted (n, K·G);
    # an ineligible arm's nodes collapse onto arm k's centre (zero-width intervals)
    centre = np.where(ok, mean, mu_k[:, None])
    scale = np.where(ok, sd, 0.0)
    t = (centre[:, :, None] + scale[:, :, None] * u).reshape(n, -1)
    t.sort(axis=1)
    # 3-point Gauss-Legendre on every interval between nodes
    a, w = t[:, :-1], t[:, 1:] - t[:, :-1]
    pts = (a[:, :, None] + w[:, :, None] * _GL_X).reshape(n, -1)
    g = _others_cdf(pts, mean, sd, others)
    zk = (pts - mu_k[:, None]) / sd_k[:, None]
    f = np.exp(-0.5 * zk * zk) / (np.sqrt(2.0 * np.pi) * sd_k[:, None]) * g
    p = ((f.reshape(n, -1, 3) * _GL_W).sum(axis=2) * w).sum(axis=1)
    # beyond the outermost nodes: arm k's tail mass times the product there
    ends = _others_cdf(t[:, [0, -1]], mean, sd, others)
    p += ends[:, 0] * ndtr((t[:, 0] - mu_k) / sd_k) + ends[:, 1] * ndtr((mu_k - t[:, -1]) / sd_k)
    return np.where(chosen_ok, np.clip(p, 0.0, 1.0), 0.0)


def _others_cdf(t: np.ndarray, mean: np.ndarray, sd: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Π over the other eligible arms i of Φ((t − μ_i)/σ_i), at points t (n, P)."""
    m = np.where(others, mean, -np.inf)  # Φ(+∞) = 1: arm k itself and ineligible arms drop out
    g = np.ones_like(t)
    for i in range(mean.shape[1]):
        if others[:, i].any():
            g *= ndtr((t - m[:, i][:, None]) / sd[:, i][:, None])
    return g


def monte_carlo(mean: np.ndarray, sd: np.ndarray, *, draws: int = 200_000, seed: int = 0) -> np.ndarray:
    """Every arm's choice probability for ONE decision by simulation (a check of the quadrature)."""
    mean, sd = np.asarray(mean, float), np.asarray(sd, float)
    ok = np.isfinite(mean)
    rng = np.random.default_rng(seed)
    s = np.where(ok, mean, -np.inf) + np.where(ok, sd, 0.0) * rng.standard_normal((draws, len(mean)))
    return np.bincount(s.argmax(axis=1), minlength=len(mean)) / draws
