"""When to grade: per-category sampling rates and a dollar budget per hour for graders that cost money.

Pure: no clock and no randomness of its own. Sampling is a hash of the event id (and a salt), so the same
event always gets the same decision, across processes and restarts; time is passed in as ``now`` (seconds,
any monotonic origin).

The budget is a token bucket in dollars: it refills at ``usd_per_hour / 3600`` per second up to ``burst_usd``
(default: a tenth of an hour's budget) and starts full. Spending over any window of ``T`` hours is therefore at
most ``burst_usd + usd_per_hour * T`` (plus the overshoot of the last grade when actual costs exceed their
estimates: :meth:`GradingPolicy.spend` may take the bucket below zero, and later grades wait until it refills).

A paid grade reserves its maximum expected cost with :meth:`GradingPolicy.take` *before* the call, and
:meth:`GradingPolicy.settle` turns the reservation into the actual cost after it, so concurrent grades cannot all
pass the check and overshoot together. ``max_concurrent`` and ``max_waiting`` bound how many gradings run at
once and how many may wait for a slot (beyond that they are skipped as ``overloaded``).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Mapping
from typing import Any

from feedback.graders.base import GraderSpecError

__all__ = ["DEFAULT_MAX_CONCURRENT", "DEFAULT_MAX_WAITING", "GradingPolicy"]

DEFAULT_MAX_CONCURRENT = 4
DEFAULT_MAX_WAITING = 64
_EPS = 1e-12  # dollars: float dust must not refuse a reservation that exactly fits


def _rate(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise GraderSpecError(field, f"expected a rate in [0, 1], got {value!r:.40}")
    return float(value)


def _count(value: Any, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GraderSpecError(field, f"expected an integer >= {minimum}, got {value!r:.40}")
    return value


def _money(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise GraderSpecError(field, f"expected a finite amount >= 0 in USD, got {value!r:.40}")
    return float(value)


class GradingPolicy:
    """Which answers to grade, and whether a paid grade fits the budget.

    ``rates`` maps a category to the share of its answers to grade (``{"coding": 0.1}`` grades 10%);
    other categories (and ``None``) use ``default_rate``. ``usd_per_hour=None`` means no budget cap.
    ``max_concurrent`` gradings run at once and up to ``max_waiting`` more wait for a slot.
    """

    def __init__(self, rates: Mapping[str, float] | None = None, *, default_rate: float = 1.0,
                 usd_per_hour: float | None = None, burst_usd: float | None = None, salt: str = "",
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT, max_waiting: int = DEFAULT_MAX_WAITING) -> None:
        self.rates = {str(k): _rate(v, f"rates.{k}") for k, v in (rates or {}).items()}
        self.default_rate = _rate(default_rate, "default_rate")
        self.usd_per_hour = None if usd_per_hour is None else _money(usd_per_hour, "usd_per_hour")
        if burst_usd is not None:
            _money(burst_usd, "burst_usd")
        if burst_usd is not None and self.usd_per_hour is None:
            raise GraderSpecError("burst_usd", "needs usd_per_hour")
        self.burst_usd = (self.usd_per_hour or 0.0) / 10 if burst_usd is None else float(burst_usd)
        self.salt = salt
        self.max_concurrent = _count(max_concurrent, "max_concurrent", 1)
        self.max_waiting = _count(max_waiting, "max_waiting", 0)
        self._tokens = self.burst_usd
        self._last: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, where: str = "") -> GradingPolicy:
        """From ``{"rates": {"coding": 0.1}, "default_rate": 1.0, "usd_per_hour": 2.0, "burst_usd": 0.2,
        "salt": "v1", "max_concurrent": 4, "max_waiting": 64}`` (every key optional)."""
        allowed = ("rates", "default_rate", "usd_per_hour", "burst_usd", "salt", "max_concurrent", "max_waiting")
        prefix = f"{where}." if where else ""
        for key in spec:
            if key not in allowed:
                raise GraderSpecError(f"{prefix}{key}", f"unknown key (allowed: {', '.join(allowed)})")
        rates = spec.get("rates") or {}
        if not isinstance(rates, Mapping):
            got = type(rates).__name__
            raise GraderSpecError(f"{prefix}rates", f"expected a mapping of category to rate, got {got}")
        salt = spec.get("salt", "")
        if not isinstance(salt, str):
            raise GraderSpecError(f"{prefix}salt", f"expected a string, got {type(salt).__name__}")
        try:
            return cls(rates, default_rate=spec.get("default_rate", 1.0), usd_per_hour=spec.get("usd_per_hour"),
                       burst_usd=spec.get("burst_usd"), salt=salt,
                       max_concurrent=spec.get("max_concurrent", DEFAULT_MAX_CONCURRENT),
                       max_waiting=spec.get("max_waiting", DEFAULT_MAX_WAITING))
        except GraderSpecError as exc:
            raise GraderSpecError(prefix + exc.field, exc.reason) from None

    def rate(self, category: str | None) -> float:
        return self.rates.get(category, self.default_rate) if category is not None else self.default_rate

    def should_grade(self, event_id: str, category: str | None = None) -> bool:
        """Deterministic sampling: ``True`` for a ``rate(category)`` share of event ids."""
        rate = self.rate(category)
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        digest = hashlib.blake2b(f"{self.salt}\x00{event_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64 < rate

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last and self.usd_per_hour is not None:
            self._tokens = min(self.burst_usd, self._tokens + (now - self._last) * self.usd_per_hour / 3600.0)
        if self._last is None or now > self._last:
            self._last = now  # time going backwards (a clock step) refills nothing

    def available(self, now: float) -> float:
        """Dollars that may be spent at ``now`` (``inf`` without a budget)."""
        if self.usd_per_hour is None:
            return math.inf
        with self._lock:
            self._refill(now)
            return self._tokens

    def allow(self, cost_estimate: float, now: float) -> bool:
        """Whether a grade estimated to cost ``cost_estimate`` dollars fits the budget now (spends nothing)."""
        cost = _money(cost_estimate, "cost_estimate")
        return cost == 0.0 or cost <= self.available(now)

    def spend(self, cost: float, now: float) -> None:
        """Record a grade's actual cost; the bucket may go below zero (later grades wait for the refill)."""
        amount = _money(cost, "cost")
        if self.usd_per_hour is None:
            return
        with self._lock:
            self._refill(now)
            self._tokens -= amount

    def take(self, cost_estimate: float, now: float) -> bool:
        """:meth:`allow` and :meth:`spend` in one step (atomic across threads): reserve the estimate if it fits."""
        cost = _money(cost_estimate, "cost_estimate")
        if self.usd_per_hour is None:
            return True
        with self._lock:
            self._refill(now)
            if cost > 0.0 and cost > self._tokens + _EPS:
                return False
            self._tokens -= cost
            return True

    def settle(self, reserved: float, actual: float, now: float) -> None:
        """Turn a :meth:`take` reservation of ``reserved`` into the ``actual`` cost: refund the difference (up to
        the burst) or charge the excess (the bucket may go below zero)."""
        held = _money(reserved, "reserved")
        cost = _money(actual, "actual")
        if self.usd_per_hour is None:
            return
        with self._lock:
            self._refill(now)
            self._tokens = min(self.burst_usd, self._tokens + held - cost)
