"""Off-policy estimators on plain arrays: what a target policy π would have scored on the logged
contexts, from the rewards of the logging policy μ's choices.

Per logged decision i (context x_i, logged arm a_i, reward r_i, propensity μ(a_i|x_i) = p_i) and a
direct model q̂(x, a) of the reward:

* IPS    V̂ = 1/n Σ w_i r_i,                      w_i = π(a_i|x_i) / max(p_i, floor)
* SNIPS  V̂ = Σ w_i r_i / Σ w_i                   (self-normalised: bounded by the rewards)
* DM     V̂ = 1/n Σ Σ_a π(a|x_i) q̂(x_i, a)
* DR     V̂ = 1/n Σ [Σ_a π(a|x_i) q̂(x_i, a) + w_i (r_i − q̂(x_i, a_i))]

IPS and DR are unbiased when every p_i is exact and above the floor (DR also when q̂ is wrong);
flooring trades a little bias for bounded variance. Confidence intervals: a Poisson bootstrap
over decisions (each resample weighs decision i by an independent Poisson(1) count), percentile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

ESTIMATORS = ("ips", "snips", "dm", "dr")


@dataclass
class Terms:
    """Per-decision terms of every estimator for one target policy: each estimate is
    Σ num / Σ den over the decisions (den is 1 except for SNIPS)."""

    num: dict[str, np.ndarray]
    den: dict[str, np.ndarray]
    weights: np.ndarray  # the importance weights w_i
    clipped: int  # decisions with π(a_i|x_i) > 0 whose propensity was raised to the floor

    def value(self, name: str) -> float:
        d = float(self.den[name].sum())
        return float(self.num[name].sum()) / d if d > 0 else float("nan")

    @property
    def ess(self) -> float:
        """Kish's effective sample size of the weights, (Σw)²/Σw²: how many logged decisions the
        estimate is really worth."""
        s2 = float((self.weights ** 2).sum())
        return float(self.weights.sum()) ** 2 / s2 if s2 > 0 else 0.0


def terms(reward: np.ndarray, propensity: np.ndarray, target_prob: np.ndarray, dm_target: np.ndarray,
          dm_logged: np.ndarray, *, floor: float = 0.01) -> Terms:
    """The estimators' per-decision terms.

    ``reward`` r_i; ``propensity`` μ(a_i|x_i); ``target_prob`` π(a_i|x_i); ``dm_target``
    Σ_a π(a|x_i) q̂(x_i, a); ``dm_logged`` q̂(x_i, a_i)."""
    r = np.asarray(reward, float)
    p = np.maximum(np.asarray(propensity, float), floor)
    tp = np.asarray(target_prob, float)
    w = tp / p
    ones = np.ones_like(r)
    dm_t = np.asarray(dm_target, float)
    num = {"ips": w * r, "snips": w * r, "dm": dm_t, "dr": dm_t + w * (r - np.asarray(dm_logged, float))}
    den = {"ips": ones, "snips": w, "dm": ones, "dr": ones}
    clipped = int(((np.asarray(propensity, float) < floor) & (tp > 0)).sum())
    return Terms(num, den, w, clipped)


def bootstrap(stats: Mapping[str, tuple[np.ndarray, np.ndarray]], *, reps: int = 500, seed: int = 0,
              level: float = 0.95, max_cells: int = 20_000_000) -> dict[str, tuple[float, float]]:
    """Percentile CIs of ratio statistics Σ num / Σ den, all on the SAME resamples (so differences
    between statistics get honest intervals too). ``stats``: name -> (num, den), arrays over
    the same decisions."""
    names = list(stats)
    if not names:
        return {}
    n = len(next(iter(stats.values()))[0])
    if n == 0 or reps <= 0:
        return {k: (float("nan"), float("nan")) for k in names}
    num = np.stack([np.asarray(stats[k][0], float) for k in names], axis=1)  # (n, S)
    den = np.stack([np.asarray(stats[k][1], float) for k in names], axis=1)
    rng = np.random.default_rng(seed)
    out = np.empty((reps, len(names)))
    step = max(1, min(reps, max_cells // max(n, 1)))
    for lo in range(0, reps, step):
        hi = min(lo + step, reps)
        c = rng.poisson(1.0, size=(hi - lo, n)).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:hi] = (c @ num) / (c @ den)
    a = (1.0 - level) / 2.0
    lo_q = np.nanquantile(out, a, axis=0)
    hi_q = np.nanquantile(out, 1.0 - a, axis=0)
    return {k: (float(lo_q[j]), float(hi_q[j])) for j, k in enumerate(names)}
