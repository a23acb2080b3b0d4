"""Bayesian linear models of quality, one per (category, model), stacked per category.

The truth is a set of sufficient statistics per arm, which add up and decay:

    n  = Σ w            (decayed count)         XX = Σ w x xᵀ
    XR = Σ w r x                                RR = Σ w r²

plus a prior: a mean vector ``m0`` and a diagonal precision ``a0`` (in
pseudo-observations). The posterior is ridge regression with that prior::

    A = diag(a0) + XX        b = a0 ∘ m0 + XR        θ̂ = A⁻¹ b
    σ² = (β0 + ½(RR + m0ᵀ diag(a0) m0 − θ̂ᵀ b)) / (α0 + n/2)      (noise, plug-in NIG)
    θ·x | data ~ Normal(θ̂·x, σ² xᵀA⁻¹x)

**Forgetting.** With every feedback event in a category, the data sums of *all*
its arms are multiplied by ``g = 2^(-1/half_life_events)`` (and/or by
``2^(-Δt/half_life_seconds)`` as time passes), so after one half-life an old
observation weighs half. Arms that stop being chosen drift back towards their
prior and get explored again, which is how a model that improves is noticed.
Only the data decays: the prior never does, so precision never falls below
``diag(a0)``. Decay is one scalar per category: the sums are stored multiplied
by a scale ``s`` (true sums = stored / s), so decaying costs a division.

**The decision cache.** Deciding must not invert anything, so each arm keeps
``P = A⁻¹`` and ``θ̂`` in one stacked matrix ``W = [θ̂₁…θ̂_K; P₁…P_K]``: one
mat-vec gives every arm's mean and ``P x``. New observations update ``P`` by a
Sherman-Morrison rank-one step. Decay is not rank-one (the prior does not
decay), so the cache defers it: the cache is the exact posterior under *block*
forgetting, and all arms of the category are rebuilt from the sums (one batched
inversion) once the decay pending since the last rebuild falls below
``refresh_below`` (default 0.98: the cache is never more than 2% behind the true
forgetting); an arm is also rebuilt after ``refresh_every`` rank-one steps, for
numerical hygiene. The sums stay exact at every step; persistence and statistics
use them.

**Abrupt changes.** Slow forgetting follows gradual drift cheaply but reacts to a
sudden regression only after a good part of a half-life. Each arm therefore also
runs a two-sided Page-Hinkley (CUSUM) test on its standardised residuals
``(r − θ̂·x)/σ``, clipped at ``CHANGE_CLIP`` sds (a [0,1] quality is far from
Gaussian: one wrong answer from a 90% model is a 3-sd residual), ignoring shifts
under ``CHANGE_DRIFT`` sds. When the sum crosses ``change_threshold`` (default 15;
the false-alarm rate and the detection delay measured on RouterBench are in the
README), the arm keeps only ``CHANGE_KEEP`` of its old data and is re-learned
from fresh feedback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg.blas import daxpy as _axpy
from scipy.linalg.blas import dger as _ger

NOISE_A0 = 1.0  # α0: the noise prior counts as one pseudo-observation pair
NOISE_VAR0 = 0.25  # prior noise variance: a fair coin, the widest a [0,1] quality can be
CHANGE_DRIFT = 0.5  # the change detector ignores shifts smaller than half a noise sd
CHANGE_CLIP = 2.0  # residuals are clipped at 2 sds: one wrong answer from a 90% model is not a change
CHANGE_MIN_N = 30.0  # ... and watches an arm only once it has this many (decayed) observations
CHANGE_KEEP = 0.05  # on a detected change, an arm keeps this share of its old data


@dataclass
class Posterior:
    """One arm's prior and decayed sufficient statistics (the persistent truth).

    ``count`` is the undecayed number of observations (for display only).
    """

    prior_mean: np.ndarray
    prior_precision: np.ndarray
    xx: np.ndarray
    xr: np.ndarray
    rr: float = 0.0
    n: float = 0.0
    count: int = 0

    @classmethod
    def empty(cls, prior_mean: np.ndarray, prior_precision: np.ndarray) -> Posterior:
        d = len(prior_mean)
        return cls(np.asarray(prior_mean, float).copy(), np.asarray(prior_precision, float).copy(),
                   np.zeros((d, d)), np.zeros(d))

    def precision(self) -> np.ndarray:
        return np.diag(self.prior_precision) + self.xx

    def b(self) -> np.ndarray:
        return self.prior_precision * self.prior_mean + self.xr

    def mean(self) -> np.ndarray:
        """θ̂: the posterior mean (ridge regression towards the prior mean)."""
        return np.linalg.solve(self.precision(), self.b())

    def noise_var(self) -> float:
        theta = self.mean()
        rr = self.rr + float(self.prior_precision @ (self.prior_mean**2))
        beta = NOISE_A0 * NOISE_VAR0 + 0.5 * max(rr - float(theta @ self.b()), 0.0)
        return max(beta / (NOISE_A0 + 0.5 * self.n), 1e-6)

    def predict(self, x: np.ndarray) -> tuple[float, float]:
        """Mean and standard deviation of θ·x."""
        theta = self.mean()
        v = float(x @ np.linalg.solve(self.precision(), x))
        return float(theta @ x), float(np.sqrt(self.noise_var() * max(v, 0.0)))

    def add(self, x: np.ndarray, r: float, decay: float = 1.0) -> None:
        """Decay the data sums by ``decay``, then add one observation."""
        self.scale(decay)
        self.xx += np.outer(x, x)
        self.xr += r * x
        self.rr += r * r
        self.n += 1.0
        self.count += 1

    def scale(self, factor: float) -> None:
        if factor != 1.0:
            self.xx *= factor
            self.xr *= factor
            self.rr *= factor
            self.n *= factor

    def merged(self, other: Posterior) -> Posterior:
        """Sums from two sources (processes, hosts) folded together; the prior is kept once."""
        return Posterior(self.prior_mean.copy(), self.prior_precision.copy(), self.xx + other.xx,
                         self.xr + other.xr, self.rr + other.rr, self.n + other.n, self.count + other.count)


class ArmPosteriors:
    """The K arms (models) of one category, stacked for vectorised Thompson sampling."""

    def __init__(self, dim: int, *, refresh_below: float = 0.98, refresh_every: int = 256,
                 change_threshold: float | None = 15.0) -> None:
        d = self.d = dim
        self.change_threshold = change_threshold
        self.k = 0
        self.refresh_below = refresh_below
        self.refresh_every = refresh_every
        self.s = 1.0  # the stored sums are the true sums times s
        self.log_decay = 0.0  # Σ log(decay factors) so far: dates observations for later revision
        self.epoch = 0  # bumped when every arm's stored sums are rewritten (renormalised or reset)
        self.pending = 1.0  # decay not yet applied to the cache
        self.a0 = np.zeros((0, d))
        self.m0 = np.zeros((0, d))
        self.xx = np.zeros((0, d, d))
        self.xr = np.zeros((0, d))
        self.rr = np.zeros(0)
        self.n = np.zeros(0)
        self.count = np.zeros(0, dtype=np.int64)
        # the decision cache: W = [θ̂ rows; P rows], and per-arm noise
        self.W = np.zeros((0, d))
        self.theta = self.W[:0]
        self.P = self.W[0:].reshape(0, d, d)
        self._draw_buffers()
        self.sse: list[float] = []  # residual sum of squares, prior included
        self.nc: list[float] = []  # count
        self.sigma = np.zeros(0)  # noise sd, used by every decision
        self.since: list[int] = []  # rank-one steps since the arm's last rebuild
        self.cusum_up: list[float] = []  # change detector (Page-Hinkley on standardised residuals)
        self.cusum_down: list[float] = []
        self.changes = np.zeros(0, dtype=np.int64)  # changes detected per arm
        self.log_keep: list[float] = []  # Σ log(CHANGE_KEEP) over the arm's detected changes

    # -- lifecycle ---------------------------------------------------------------------------
    def add_arm(self, prior_mean: np.ndarray, prior_precision: np.ndarray) -> int:
        """Append an arm with the given prior; returns its index."""
        d, k = self.d, self.k
        grow = lambda a, row: np.concatenate([a, row[None]])  # noqa: E731
        self.a0 = grow(self.a0, np.asarray(prior_precision, float))
        self.m0 = grow(self.m0, np.asarray(prior_mean, float))
        self.xx = grow(self.xx, np.zeros((d, d)))
        self.xr = grow(self.xr, np.zeros(d))
        self.rr = np.append(self.rr, 0.0)
        self.n = np.append(self.n, 0.0)
        self.count = np.append(self.count, 0)
        old_theta, old_p = self.theta, self.P
        self.W = np.zeros(((k + 1) * (d + 1), d))
        self.theta = self.W[: k + 1]
        self.P = self.W[k + 1 :].reshape(k + 1, d, d)
        self.theta[:k] = old_theta
        self.P[:k] = old_p
        self._draw_buffers()
        self.sse.append(0.0)
        self.nc.append(0.0)
        self.sigma = np.append(self.sigma, 0.0)
        self.since.append(0)
        self.cusum_up.append(0.0)
        self.cusum_down.append(0.0)
        self.changes = np.append(self.changes, 0)
        self.log_keep.append(0.0)
        self.k = k + 1
        self.refresh(k)
        return k

    def _draw_buffers(self) -> None:
        """Scratch space for :meth:`sample_moments`, shaped like ``W`` (rebuilt when an arm is added):
        ``W x`` lands in ``_wx``, viewed as every arm's mean and every arm's ``P x``."""
        k, d = len(self.W) // (self.d + 1), self.d
        self._wx = np.empty(len(self.W))
        self._wx_mean = self._wx[:k]
        self._wx_px = self._wx[k:].reshape(k, d)
        self._zeros = np.zeros(k)

    def get(self, i: int) -> Posterior:
        """Arm i's prior and true (decayed) sums."""
        inv_s = 1.0 / self.s
        return Posterior(self.m0[i].copy(), self.a0[i].copy(), self.xx[i] * inv_s, self.xr[i] * inv_s,
                         float(self.rr[i] * inv_s), float(self.n[i] * inv_s), int(self.count[i]))

    def set(self, i: int, post: Posterior) -> None:
        self.m0[i], self.a0[i] = post.prior_mean, post.prior_precision
        s = self.s
        self.xx[i], self.xr[i] = post.xx * s, post.xr * s
        self.rr[i], self.n[i], self.count[i] = post.rr * s, post.n * s, post.count
        self.refresh(i)

    # -- learning ----------------------------------------------------------------------------
    def refresh(self, i: int) -> None:
        """Rebuild arm i's cache exactly from its sums (one d×d inversion)."""
        inv_s = 1.0 / self.s
        a = self.xx[i] * inv_s
        a[np.diag_indices(self.d)] += self.a0[i]
        self.P[i] = np.linalg.inv(a)
        b = self.a0[i] * self.m0[i] + self.xr[i] * inv_s
        self.theta[i] = self.P[i] @ b
        rr = self.rr[i] * inv_s + self.a0[i] @ (self.m0[i] ** 2)
        self.sse[i] = max(float(rr - self.theta[i] @ b), 0.0)
        self.nc[i] = float(self.n[i] * inv_s)
        self.sigma[i] = _sigma(self.sse[i], self.nc[i])
        self.since[i] = 0

    def refresh_all(self) -> None:
        """Rebuild every arm's cache from the sums (one batched inversion); clears pending decay."""
        if self.s > 1e100:
            self._renormalise()
        k, d = self.k, self.d
        if k:
            inv_s = 1.0 / self.s
            a = self.xx * inv_s
            a[:, np.arange(d), np.arange(d)] += self.a0
            self.P[:] = np.linalg.inv(a)
            b = self.a0 * self.m0 + self.xr * inv_s
            self.theta[:] = np.einsum("kij,kj->ki", self.P, b)
            rr = self.rr * inv_s + np.einsum("kd,kd->k", self.a0, self.m0**2)
            sse = np.maximum(rr - np.einsum("kd,kd->k", self.theta, b), 0.0)
            self.sse = sse.tolist()
            self.nc = (self.n * inv_s).tolist()
            self.sigma[:] = [_sigma(e, n) for e, n in zip(self.sse, self.nc, strict=True)]
            self.since = [0] * k
        self.pending = 1.0

    # -- persistence -------------------------------------------------------------------------
    # The exact learning state, as flat float64 arrays. Stored sums stay in the category's scale,
    # so an observation changes the bytes of one arm and of the category, nothing else.
    def export_category(self) -> np.ndarray:
        return np.array([self.s, self.log_decay, float(self.epoch)])

    def export_arm(self, i: int) -> np.ndarray:
        head = [self.rr[i], self.n[i], self.count[i], self.cusum_up[i], self.cusum_down[i],
                self.log_keep[i], self.changes[i]]
        return np.concatenate([head, self.m0[i], self.a0[i], self.xr[i], self.xx[i].ravel()])

    def import_category(self, v: np.ndarray) -> None:
        self.s, self.log_decay = float(v[0]), float(v[1])

    def import_arm(self, i: int, v: np.ndarray) -> None:
        """Load an arm exported by :meth:`export_arm` (call :meth:`refresh_all` afterwards)."""
        d = self.d
        if len(v) != 7 + 3 * d + d * d:
            raise ValueError(f"arm state: {len(v)} numbers, expected {7 + 3 * d + d * d} for d={d}")
        self.rr[i], self.n[i], self.count[i] = v[0], v[1], int(v[2])
        self.cusum_up[i], self.cusum_down[i], self.log_keep[i] = float(v[3]), float(v[4]), float(v[5])
        self.changes[i] = int(v[6])
        o = 7
        self.m0[i], self.a0[i], self.xr[i] = v[o:o + d], v[o + d:o + 2 * d], v[o + 2 * d:o + 3 * d]
        self.xx[i] = v[o + 3 * d:].reshape(d, d)

    def _renormalise(self) -> None:
        self.epoch += 1  # every arm's stored bytes change: persistence must rewrite them all
        inv_s = 1.0 / self.s
        self.xx *= inv_s
        self.xr *= inv_s
        self.rr *= inv_s
        self.n *= inv_s
        self.s = 1.0

    def decay(self, factor: float, log_factor: float | None = None) -> None:
        """Multiply every arm's data sums by ``factor`` (forgetting); the prior is untouched."""
        if factor != 1.0:
            if log_factor is None:
                log_factor = math.log(factor) if factor > 0.0 else -math.inf
            self.log_decay += log_factor
            if factor < 1e-200:  # everything is forgotten (a long idle gap): back to the prior
                self.epoch += 1
                self.xx[:] = 0.0
                self.xr[:] = 0.0
                self.rr[:] = 0.0
                self.n[:] = 0.0
                self.s = 1.0
                self.refresh_all()
                return
            self.s /= factor
            self.pending *= factor
            if self.pending < self.refresh_below:
                self.refresh_all()

    def update(self, i: int, x: np.ndarray, r: float) -> None:
        """Observe quality ``r`` for features ``x`` on arm ``i``."""
        e = r - float(self.theta[i] @ x)
        if self.change_threshold is not None and self.nc[i] >= CHANGE_MIN_N:
            zs = min(max(e / self.sigma[i], -CHANGE_CLIP), CHANGE_CLIP)
            up = self.cusum_up[i] = max(0.0, self.cusum_up[i] + zs - CHANGE_DRIFT)
            down = self.cusum_down[i] = max(0.0, self.cusum_down[i] - zs - CHANGE_DRIFT)
            if up > self.change_threshold or down > self.change_threshold:
                self._changed(i)
                e = r - float(self.theta[i] @ x)
        s = self.s
        _ger(s, x, x, a=self.xx[i].T, overwrite_a=True)  # in place: xx += s x xᵀ (BLAS)
        _axpy(x, self.xr[i], a=r * s)  # in place: xr += r s x
        self.rr[i] += s * r * r
        self.n[i] += s
        self.count[i] += 1
        self.since[i] += 1
        if self.since[i] >= self.refresh_every:
            self.refresh(i)
            return
        # recursive least squares on the cache: Sherman-Morrison for P, the innovation for θ̂,
        # and the residual sum of squares grows by e²/(1 + xᵀPx)
        p = self.P[i]
        px = p @ x
        denom = 1.0 + float(x @ px)
        _ger(-1.0 / denom, px, px, a=p.T, overwrite_a=True)  # in place: P -= P x xᵀ P / denom
        _axpy(px, self.theta[i], a=e / denom)  # in place: θ̂ += P x e / denom
        sse = self.sse[i] = self.sse[i] + e * e / denom
        n = self.nc[i] = self.nc[i] + 1.0
        self.sigma[i] = math.sqrt(max((NOISE_A0 * NOISE_VAR0 + 0.5 * sse) / (NOISE_A0 + 0.5 * n), 1e-6))

    def _changed(self, i: int) -> None:
        """A change was detected on arm i: keep only ``CHANGE_KEEP`` of its old data, so it is re-learned."""
        self.xx[i] *= CHANGE_KEEP
        self.xr[i] *= CHANGE_KEEP
        self.rr[i] *= CHANGE_KEEP
        self.n[i] *= CHANGE_KEEP
        self.cusum_up[i] = self.cusum_down[i] = 0.0
        self.changes[i] += 1
        self.log_keep[i] += math.log(CHANGE_KEEP)
        self.refresh(i)

    def stamp(self, i: int) -> float:
        """The date of an observation made now on arm i, in log-weight units (see :meth:`revise`)."""
        return self.log_decay + self.log_keep[i]

    def revise(self, i: int, x: np.ndarray, stamp: float, old: float, new: float) -> None:
        """Replace the quality of an earlier observation (same x, dated ``stamp``) by ``new``.

        The observation keeps its weight, which forgetting has shrunk by exp(stamp_now − stamp),
        so a decision never counts as more than one observation however often it is revised.
        Only XR and RR change (XX does not depend on the quality)."""
        age = self.stamp(i) - stamp
        w = math.exp(min(age, 0.0)) if age == age else 0.0  # nan when both are -inf: forgotten
        if w < 1e-12:
            return
        sw = self.s * w
        self.xr[i] += (sw * (new - old)) * x
        self.rr[i] += sw * (new * new - old * old)
        self.refresh(i)

    # -- deciding ----------------------------------------------------------------------------
    def sample(self, x: np.ndarray, z: np.ndarray, explore: float = 1.0) -> np.ndarray:
        """One Thompson draw of θ_k·x for every arm k, given standard normals ``z`` (shape K)."""
        return self.sample_moments(x, z if explore == 1.0 else z * explore)[0]

    def sample_moments(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`sample` (the same arithmetic, so the same draw), and the per-arm sd of θ_k·x:
        ``(draw, sd)`` with ``draw = θ̂_k·x + sd * z``."""
        np.dot(self.W, x, out=self._wx)  # every arm's θ̂·x and P x, in one mat-vec
        sd = np.dot(self._wx_px, x)
        np.maximum(sd, self._zeros, out=sd)
        np.sqrt(sd, out=sd)
        sd *= self.sigma
        v = sd * z
        v += self._wx_mean
        return v, sd

    def draw_moments(self, x: np.ndarray) -> tuple[list[float], list[float]]:
        """Every arm's ``(θ̂_k·x, sd_k)`` as lists of floats: what :meth:`sample_moments` draws from,
        for a decision that does its per-arm arithmetic in Python floats (with a handful of arms,
        cheaper than a numpy call per step). ``θ̂_k·x + sd_k * z_k`` is, bit for bit, its draw."""
        np.dot(self.W, x, out=self._wx)
        xpx = np.dot(self._wx_px, x).tolist()
        sqrt = math.sqrt
        return self._wx_mean.tolist(), [sqrt(max(v, 0.0)) * s for v, s in zip(xpx, self.sigma.tolist(), strict=True)]

    def mean_quality(self, i: int, x: np.ndarray | None = None) -> tuple[float, float]:
        """Exact posterior mean and sd of quality on arm i, at ``x`` or at the arm's mean features."""
        post = self.get(i)
        if x is None:
            x = post.xx[0] / post.xx[0, 0] if post.xx[0, 0] > 1e-9 else _unit(self.d)
        return post.predict(x)


def _sigma(sse: float, n: float) -> float:
    return math.sqrt(max((NOISE_A0 * NOISE_VAR0 + 0.5 * sse) / (NOISE_A0 + 0.5 * n), 1e-6))


def _unit(d: int) -> np.ndarray:
    e = np.zeros(d)
    e[0] = 1.0
    return e
