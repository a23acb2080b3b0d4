"""Upstream failure handling as plain state machines: circuit breakers, retry backoff, and the
per-model health numbers the admin API shows. No I/O and no asyncio: the service passes the clock.

A breaker per model::

    closed --(breaker_failures consecutive failures)--> open
    open   --(cooldown elapsed: the next request is let through as a probe)--> half_open
    half_open --(probe succeeds)--> closed        half_open --(probe fails)--> open (cooldown again)

While open (and while a probe is out), the model is not eligible: ``Breakers.allowed()`` is the
mask the router ANDs into eligibility.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, base_s × 2^attempt)]."""
    return rng.uniform(0.0, min(max_s, base_s * (2.0 ** attempt)))


def retry_wait(retry_after_s: float | None, attempt: int, base_s: float, max_s: float, retry_after_max_s: float,
               rng: random.Random) -> float | None:
    """How long to wait before retrying the same model, or None to fall back at once: a
    ``Retry-After`` is honoured when it is at most ``retry_after_max_s``, else the model is left
    for the next-best one."""
    if retry_after_s is not None:
        return retry_after_s if retry_after_s <= retry_after_max_s else None
    return backoff_delay(attempt, base_s, max_s, rng)


@dataclass
class ModelHealth:
    """One model's breaker and its recent outcomes (for the admin view)."""

    state: str = CLOSED
    consecutive_failures: int = 0
    opened_at: float = -math.inf
    probing: bool = False
    calls: int = 0
    failures: int = 0
    fallbacks_from: int = 0  # requests this model failed that another model then answered
    times_opened: int = 0
    last_error: str | None = None
    recent: deque[tuple[bool, float]] = field(default_factory=lambda: deque(maxlen=200))  # (ok, latency_s)

    def as_dict(self) -> dict[str, object]:
        lat = sorted(t for ok, t in self.recent if ok)
        n = len(self.recent)
        return {
            "breaker": self.state, "consecutive_failures": self.consecutive_failures, "calls": self.calls,
            "failures": self.failures, "error_rate_recent": (sum(not ok for ok, _ in self.recent) / n) if n else 0.0,
            "latency_p50_ms": _quantile(lat, 0.5), "latency_p99_ms": _quantile(lat, 0.99),
            "fallbacks_from": self.fallbacks_from, "times_opened": self.times_opened, "last_error": self.last_error,
        }


def _quantile(sorted_s: list[float], q: float) -> float | None:
    if not sorted_s:
        return None
    return round(1000.0 * sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))], 3)


class Breakers:
    """Circuit breakers for a list of models, by index."""

    def __init__(self, models: list[str], *, failures: int = 5, cooldown_s: float = 30.0) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError("breaker failures must be >= 1 and cooldown_s > 0")
        self.models = list(models)
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.health = [ModelHealth() for _ in self.models]
        self._mask = np.ones(len(self.models), dtype=bool)

    def add_model(self, name: str) -> None:
        self.models.append(name)
        self.health.append(ModelHealth())
        self._mask = np.append(self._mask, True)

    @property
    def all_closed(self) -> bool:
        return all(h.state == CLOSED for h in self.health)

    def allowed(self, now: float) -> np.ndarray:
        """Models that may take a request now. An open breaker whose cooldown has passed admits
        one probe: it is allowed until :meth:`acquire` marks the probe out."""
        for i, h in enumerate(self.health):
            if h.state == CLOSED:
                continue
            self._mask[i] = (h.state == OPEN and now - h.opened_at >= self.cooldown_s) or (
                h.state == HALF_OPEN and not h.probing)
        return self._mask

    def acquire(self, i: int, now: float) -> None:
        """A call to model ``i`` starts (after it was chosen): a cooled-down open breaker goes
        half-open and this call is its probe."""
        h = self.health[i]
        if h.state == OPEN and now - h.opened_at >= self.cooldown_s:
            h.state = HALF_OPEN
        if h.state == HALF_OPEN:
            h.probing = True
            self._mask[i] = False

    def success(self, i: int, latency_s: float) -> None:
        h = self.health[i]
        h.calls += 1
        h.recent.append((True, latency_s))
        h.consecutive_failures = 0
        if h.state != CLOSED:
            h.state, h.probing = CLOSED, False
            self._mask[i] = True

    def failure(self, i: int, now: float, error: str, latency_s: float) -> bool:
        """Record a failed call; returns True when this failure opened the breaker."""
        h = self.health[i]
        h.calls += 1
        h.failures += 1
        h.recent.append((False, latency_s))
        h.consecutive_failures += 1
        h.last_error = error[:200]
        if h.state == HALF_OPEN or (h.state == CLOSED and h.consecutive_failures >= self.threshold):
            h.state, h.opened_at, h.probing = OPEN, now, False
            h.times_opened += 1
            self._mask[i] = False
            return True
        return False

    def release(self, i: int) -> None:
        """A call ended without a verdict on the model (the client went away, the caller's own
        4xx): a probe slot is given back."""
        h = self.health[i]
        if h.state == HALF_OPEN and h.probing:
            h.probing = False
            self._mask[i] = True

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {m: h.as_dict() for m, h in zip(self.models, self.health, strict=True)}
