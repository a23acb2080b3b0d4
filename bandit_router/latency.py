"""Latency estimates: per (category, model), a robust quantile (p90 by default) of the time to first
token and of the total latency, with forgetting. Pure: numpy arrays in, arrays out, no I/O.

Each model keeps, per metric, a histogram of weights over log-spaced buckets from 1 ms to 10 min
(80 buckets, each about 18% wide). An observation adds weight 1 to its bucket after the data
weights of the whole category are multiplied by the forgetting factor ``decay`` (the per-event
half-life of the quality posteriors, ``bandit.half_life_events``, counted in timed answers of the
category), so recent answers count more and a model that slows down is followed. The category
forgets as a whole, like the quality sums: a model that stops being chosen keeps losing weight and
drifts back towards its prior, and is explored again. :meth:`LatencyEstimates.forget` applies
time-based forgetting (``bandit.half_life_seconds``) the same way. A quantile is read off the
cumulative weights, interpolated in log space within its bucket: exact up to the bucket width, and
robust (one 60 s outlier moves a p90 by at most one observation's weight, not by its size).

The prior: each model has ``prior_weight`` pseudo-observations spread log-normally (sd
``prior_sigma`` in log space) around its configured typical value, so the prior p90 is typical ×
exp(1.28 × prior_sigma). Like the quality prior, it is kept apart from the data and never decays: a
quantile reads prior + data. Its weight is 1 because a quantile near the top is held by whatever
sits above the data: ``w`` pseudo-observations above the real ones hold a p90 for about ``w``/0.1
answers, so weight 1 gives way after about ten.

Exploration: a deadline decided on point estimates alone would never try a model whose estimate
starts above it (a streamed model's first-token time is only seen when it streams). So decisions use
a Thompson-style draw: the quantile × exp(``uncertainty`` × z / √(1 + n)), z ~ N(0, 1), n the
model's (decayed) data weight for that metric: wide while a model is unknown, the point estimate once
it is well measured, and wider again as old measurements are forgotten.

The data weights add up: two processes' histograms of the same model are merged by adding them
(:meth:`LatencyEstimates.merged`; the prior is kept once).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BUCKETS", "TOTAL", "TTFT", "LatencyEstimates", "bucket_of", "quantile"]

LO_S, HI_S = 1e-3, 600.0
BUCKETS = 80
_LOG_LO = math.log(LO_S)
_STEP = (math.log(HI_S) - _LOG_LO) / BUCKETS
_CENTERS = _LOG_LO + (np.arange(BUCKETS) + 0.5) * _STEP  # log-seconds
TTFT, TOTAL = 0, 1


def bucket_of(seconds: float) -> int:
    """The bucket of a latency (clipped to the range)."""
    if not seconds > LO_S:
        return 0
    return min(int((math.log(seconds) - _LOG_LO) / _STEP), BUCKETS - 1)


def quantile(weights: np.ndarray, q: float) -> np.ndarray:
    """Per row of ``weights`` (shape (..., BUCKETS)): the ``q`` quantile in seconds, interpolated in
    log space within its bucket (NaN for a row with no weight)."""
    cum = np.cumsum(weights, axis=-1)
    total = cum[..., -1]
    target = q * total
    idx = np.minimum((cum < target[..., None]).sum(axis=-1), BUCKETS - 1)
    before = np.where(idx > 0, np.take_along_axis(cum, np.maximum(idx - 1, 0)[..., None], -1)[..., 0], 0.0)
    inside = np.take_along_axis(weights, idx[..., None], -1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip(np.where(inside > 0, (target - before) / inside, 0.5), 0.0, 1.0)
    out = np.exp(_LOG_LO + (idx + frac) * _STEP)
    return np.where(total > 0, out, np.nan)


def _prior_row(typical_s: float, sigma: float, weight: float) -> np.ndarray:
    """``weight`` pseudo-observations, log-normal around ``typical_s`` (its median)."""
    if not typical_s > 0 or not math.isfinite(typical_s):
        raise ValueError(f"latency prior: typical latency {typical_s!r} must be a finite number > 0 (seconds)")
    z = (_CENTERS - math.log(typical_s)) / sigma
    w = np.exp(-0.5 * z * z)
    return weight * w / w.sum()


class LatencyEstimates:
    """The latency histograms of one category: ``h`` (the decayed data) and ``prior`` have shape
    (2, models, BUCKETS), metric first (``TTFT``, ``TOTAL``); ``n`` counts observations (undecayed,
    for display)."""

    def __init__(self, *, quantile: float = 0.9, decay: float = 1.0, prior_weight: float = 1.0,
                 prior_sigma: float = 0.5, uncertainty: float = 1.0) -> None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"latency quantile: {quantile!r} must be in (0, 1)")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"latency decay: {decay!r} must be in (0, 1]")
        if not prior_weight > 0:
            raise ValueError(f"latency prior weight: {prior_weight!r} must be > 0")
        self.q = quantile
        self.decay = decay
        self.prior_weight = prior_weight
        self.prior_sigma = prior_sigma
        self.uncertainty = uncertainty
        self.h = np.zeros((2, 0, BUCKETS))
        self.prior = np.zeros((2, 0, BUCKETS))
        self.n = np.zeros((2, 0))
        # (quantiles, data weights, the draws' log-sd), each (2, models), until the next observation
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add_model(self, ttft_s: float, total_s: float) -> None:
        rows = np.stack([_prior_row(ttft_s, self.prior_sigma, self.prior_weight),
                         _prior_row(total_s, self.prior_sigma, self.prior_weight)])
        self.prior = np.concatenate([self.prior, rows[:, None, :]], axis=1)
        self.h = np.concatenate([self.h, np.zeros((2, 1, BUCKETS))], axis=1)
        self.n = np.concatenate([self.n, np.zeros((2, 1))], axis=1)
        self._cache = None

    def observe(self, k: int, ttft_s: float | None, total_s: float) -> None:
        """One answer of model ``k``: its total latency and, for a streamed one, its time to first
        token. Forgets first (every model of the category, as quality does), then adds."""
        for v in (ttft_s, total_s):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(f"latency: {v!r} must be a finite number >= 0 (seconds)")
        if self.decay < 1.0:
            self.h *= self.decay
        self.h[TOTAL, k, bucket_of(total_s)] += 1.0
        self.n[TOTAL, k] += 1
        if ttft_s is not None:
            self.h[TTFT, k, bucket_of(ttft_s)] += 1.0
            self.n[TTFT, k] += 1
        self._cache = None

    def forget(self, factor: float) -> None:
        """Multiply every data weight by ``factor`` in (0, 1] (time-based forgetting)."""
        if factor < 1.0:
            self.h *= factor
            self._cache = None

    def _stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._cache is None:
            w = self.h.sum(axis=-1)
            self._cache = quantile(self.h + self.prior, self.q), w, self.uncertainty / np.sqrt(1.0 + w)
        return self._cache

    def quantiles(self) -> np.ndarray:
        """(2, models): the configured quantile of time to first token and of total latency."""
        return self._stats()[0]

    def weights(self) -> np.ndarray:
        """(2, models): the data's decayed weight (effective observations), prior excluded."""
        return self._stats()[1]

    def expected(self, stream: bool) -> np.ndarray:
        """Per model, the latency that matters to a request: time to first token when it streams,
        else the whole answer."""
        return self._stats()[0][TTFT if stream else TOTAL]

    def sample(self, stream: bool, z: np.ndarray) -> np.ndarray:
        """A draw of each model's latency for one decision (``z``: standard normals, one per model)."""
        m = TTFT if stream else TOTAL
        q, _, sd = self._stats()
        return q[m] * np.exp(z * sd[m])

    def merged(self, other: LatencyEstimates) -> LatencyEstimates:
        """Another process's estimates of the same models folded in: data weights and counts add,
        the prior is kept once."""
        if other.h.shape != self.h.shape:
            raise ValueError(f"latency merge: shapes differ ({self.h.shape} vs {other.h.shape})")
        out = LatencyEstimates(quantile=self.q, decay=self.decay, prior_weight=self.prior_weight,
                               prior_sigma=self.prior_sigma, uncertainty=self.uncertainty)
        out.prior, out.h, out.n = self.prior.copy(), self.h + other.h, self.n + other.n
        return out

    # -- state ---------------------------------------------------------------------------------
    def export_model(self, k: int) -> np.ndarray:
        """Model ``k``'s state as float64: [count ttft, count total, ttft weights × BUCKETS, total
        weights × BUCKETS] (the data only: the prior comes from the configuration)."""
        return np.concatenate([self.n[:, k], self.h[TTFT, k], self.h[TOTAL, k]])

    def import_model(self, k: int, v: np.ndarray) -> None:
        if len(v) != 2 + 2 * BUCKETS:
            raise ValueError(f"latency state: expected {2 + 2 * BUCKETS} numbers, got {len(v)}")
        if not (np.isfinite(v).all() and (v >= 0).all()):
            raise ValueError("latency state: weights must be finite and >= 0")
        self.n[:, k] = v[:2]
        self.h[TTFT, k] = v[2:2 + BUCKETS]
        self.h[TOTAL, k] = v[2 + BUCKETS:]
        self._cache = None
