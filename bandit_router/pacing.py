"""Budget pacing: a primal–dual pacer that raises the cost weight when spend runs ahead of its
budget and relaxes it when spend is under pace. Pure: numbers in, numbers out, no I/O.

The router maximises sampled quality − w × expected cost. A budget is a constraint on the
realised spend; its Lagrange multiplier λ ≥ 0 (quality points per dollar) is added to the cost
weight, ``w = base + λ``, and updated by projected dual (sub)gradient steps:

* :class:`RequestPacer` — a budget of ``b`` dollars per request (the replay's ``--budget``). After
  each request with realised cost ``c``::

      μ ← clip(μ + η · (c / b − 1), μ_min, μ_max),    λ = max(μ, 0) / b

  μ is λ in units of "quality points per budget-sized request", so the step ``η`` (default 0.02)
  is unit-free whatever the prices. Spending more than ``b`` on a request pushes the weight up,
  less pulls it down, and it never goes below ``base``. μ may go a little below 0 (``μ_min`` = −1):
  underspend while λ is already 0 is remembered as a bounded credit, so noise around λ = 0 does not
  bias the run towards spending less than the budget (projecting μ at 0 did: 1–3% under on
  RouterBench), and a budget that does not bind cannot wind the pacer up without limit.

* :class:`DayPacer` — a budget of ``B`` dollars per UTC day for one tenant (the service). The pace
  is the share of the day gone by: ``pace = B × (elapsed / day + slack)``, ``slack`` (default 2%)
  so the day's first requests are not over pace. After each spend::

      μ ← clip(μ + η · (spent − pace) / (slack × B), 0, μ_max),    λ = μ / b̂

  where ``b̂`` = the budget left over the requests expected in the rest of the day (from the
  request rate seen so far today), so λ is in the same units as in the per-request pacer. Ahead of
  pace by a whole ``slack`` of the budget, μ grows by η per request; under pace it shrinks back to
  0. A new UTC day starts again from zero spend (μ is kept: yesterday's price of a dollar is the
  best guess for today's). With ``spent ≥ B`` the budget is exhausted: λ is at its cap, so only the
  cheapest eligible models are chosen (the service reports it; it does not refuse requests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DayPacer", "Pacers", "RequestPacer"]

DAY_S = 86_400.0


def _check_cost(usd: float) -> float:
    if not isinstance(usd, int | float) or not math.isfinite(usd) or usd < 0:
        raise ValueError(f"spend: {usd!r} must be a finite number of dollars >= 0")
    return float(usd)


@dataclass
class RequestPacer:
    """A budget of ``budget_usd`` per request (see the module docstring)."""

    budget_usd: float
    step: float = 0.02
    mu_max: float = 50.0
    mu_min: float = -1.0  # bounded credit for underspend (anti-windup); λ itself never goes below 0
    mu: float = 0.0
    spent: float = 0.0
    requests: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget_usd) and self.budget_usd > 0):
            raise ValueError(f"budget: {self.budget_usd!r} must be a positive number of dollars per request")
        if not (self.step > 0 and self.mu_max > 0):
            raise ValueError("pacer: step and mu_max must be > 0")

    @property
    def lam(self) -> float:
        """λ, quality points per dollar added to the cost weight."""
        return max(self.mu, 0.0) / self.budget_usd

    def cost_weight(self, base: float = 0.0) -> float:
        return base + self.lam

    def spend(self, usd: float) -> None:
        c = _check_cost(usd)
        self.spent += c
        self.requests += 1
        self.mu = min(max(self.mu + self.step * (c / self.budget_usd - 1.0), self.mu_min), self.mu_max)

    @property
    def ratio(self) -> float:
        """Spend per request over the budget (1.0: on budget)."""
        return self.spent / max(self.requests, 1) / self.budget_usd


@dataclass
class DayPacer:
    """A budget of ``usd_per_day`` per UTC day (see the module docstring)."""

    usd_per_day: float
    step: float = 0.05
    slack: float = 0.02
    mu_max: float = 50.0
    mu: float = 0.0
    day: int = -1  # the UTC day (days since the epoch) ``spent`` belongs to
    spent: float = 0.0
    requests: int = 0  # requests charged today

    def __post_init__(self) -> None:
        if not (math.isfinite(self.usd_per_day) and self.usd_per_day > 0):
            raise ValueError(f"budget: {self.usd_per_day!r} must be a positive number of dollars per day")
        if not (0 < self.slack < 1 and self.step > 0 and self.mu_max > 0):
            raise ValueError("pacer: step and mu_max must be > 0 and slack in (0, 1)")

    def _roll(self, now: float) -> float:
        """Start a new day when ``now`` is in one; returns the fraction of today gone by."""
        day = int(now // DAY_S)
        if day != self.day:
            self.day, self.spent, self.requests = day, 0.0, 0
        return (now - day * DAY_S) / DAY_S

    def pace(self, now: float) -> float:
        """Dollars that may be spent by ``now`` today."""
        frac = self._roll(now)
        return self.usd_per_day * min(frac + self.slack, 1.0)

    def _per_request(self, now: float) -> float:
        """b̂: the budget left over the requests expected in the rest of the day."""
        frac = self._roll(now)
        left = max(self.usd_per_day - self.spent, 0.0)
        rate = self.requests / max(frac, 1e-6)  # requests per day, at today's rate so far
        expected = max(rate * (1.0 - frac), 1.0)
        return max(left / expected, self.usd_per_day * 1e-6)

    def lam(self, now: float) -> float:
        return self.mu / self._per_request(now)

    def cost_weight(self, base: float, now: float) -> float:
        return base + self.lam(now)

    def spend(self, usd: float, now: float) -> None:
        c = _check_cost(usd)
        pace = self.pace(now)  # rolls the day first
        self.spent += c
        self.requests += 1
        err = (self.spent - pace) / (self.slack * self.usd_per_day)
        self.mu = min(max(self.mu + self.step * err, 0.0), self.mu_max)
        if self.spent >= self.usd_per_day:
            self.mu = self.mu_max

    def exhausted(self, now: float) -> bool:
        self._roll(now)
        return self.spent >= self.usd_per_day

    def snapshot(self, now: float) -> dict[str, Any]:
        pace = self.pace(now)
        frac = self._roll(now)
        projected = self.spent / frac if frac > 0 else None
        return {"usd_per_day": self.usd_per_day, "spent_today_usd": self.spent, "pace_usd": pace,
                "requests_today": self.requests, "lambda": self.lam(now), "mu": self.mu,
                "exhausted": self.spent >= self.usd_per_day,
                "projected_day_usd": projected}

    def export(self) -> dict[str, float]:
        return {"mu": self.mu, "day": self.day, "spent": self.spent, "requests": self.requests}

    def restore(self, state: Mapping[str, float]) -> None:
        self.mu = min(max(float(state["mu"]), 0.0), self.mu_max)
        self.day, self.spent, self.requests = int(state["day"]), float(state["spent"]), int(state["requests"])


class Pacers:
    """The day pacers of every tenant with a budget: ``default`` for any tenant, ``tenants`` per name
    (a tenant with neither is not paced)."""

    def __init__(self, default: float | None = None, tenants: Mapping[str, float] | None = None, *,
                 max_tenants: int = 10_000) -> None:
        self.default = default
        self.budgets = dict(tenants or {})
        self.max_tenants = max_tenants
        self.pacers: dict[str, DayPacer] = {}

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.budgets)

    def get(self, tenant: str) -> DayPacer | None:
        p = self.pacers.get(tenant)
        if p is None:
            budget = self.budgets.get(tenant, self.default)
            if budget is None or (len(self.pacers) >= self.max_tenants and tenant not in self.budgets):
                return None
            p = self.pacers[tenant] = DayPacer(budget)
        return p

    def cost_weight(self, tenant: str, base: float, now: float) -> float:
        p = self.get(tenant)
        return base if p is None else p.cost_weight(base, now)

    def spend(self, tenant: str, usd: float, now: float) -> None:
        p = self.get(tenant)
        if p is not None:
            p.spend(usd, now)

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        return {t: p.snapshot(now) for t, p in sorted(self.pacers.items())}
