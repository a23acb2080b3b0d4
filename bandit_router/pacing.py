"""Budget pacing: primal–dual pacers that raise the cost weight while spend runs ahead of its budget
and relax it when spend is under pace. Pure: numbers in, numbers out; no I/O, no clock, no randomness
(the caller passes the time).

The router maximises sampled quality − w × expected cost. A budget is a constraint on realised
spend; its Lagrange multiplier λ ≥ 0 (quality points per dollar) is added to the cost weight,
``w = base + λ``. Both pacers set λ from the *overspend*, the dollars spent beyond what the budget
allowed so far, counted in units of the per-request budget ``b`` so that the step is unit-free::

    μ = η × overspend / b          (quality points per budget-sized request)
    λ = min(max(μ, 0), μ_max) / b  (and at most 1e9)

η (``step``) is the one tuning knob: each request-budget of overspend adds η quality points per
request-budget to the weight. Default 0.01, tuned on RouterBench (``benchmarks/replay_budget.py``,
12 seeds): 0.005 and 0.01 beat 0.02 on mean quality at the same spend at every budget tried (a larger
step makes λ noisier); a smaller step takes longer to find λ and to follow a change. Spend
ahead of the budget raises λ; spend under it lowers λ, down to 0 (the weight is then the base weight,
never below it). ``μ_max`` (50) caps λ at 50 quality points per request-budget, which in practice
leaves only the cheapest eligible models.

* :class:`RequestPacer` (the replay's ``--budget``): a budget of ``b`` dollars per request. After
  each request with realised cost ``c`` this is the projected dual (sub)gradient step ::

      μ ← clip(μ + η · (c / b − 1), μ_min, μ_max)

  i.e. μ = η × (spent − b × requests) / b while no bound is hit. ``μ_min`` (−5, a credit of
  |μ_min| / η = 500 request-budgets) remembers underspend while λ is 0, so noise around λ = 0 does not
  leave the run under budget (projecting μ at 0 did: 1–3% under on RouterBench), and a budget that
  does not bind cannot bank credit without limit.

* :class:`DayPacer` (the service): a budget of ``B`` dollars per UTC day for one tenant. The pace is
  the share of the day gone by, plus a burst allowance that shrinks to nothing at midnight::

      pace(t) = B × min(f + slack × (1 − f), 1),   f = the fraction of the UTC day gone by at t
      b̂ = B / N̂,    μ(t) = η × (spent − pace(t)) / b̂

  N̂ is the number of requests expected today: those seen, plus the rate seen today (with
  yesterday's count as a one-hour prior) times the time left. μ is computed from the position, not
  accumulated, so λ relaxes by itself as the day goes by while spend is under pace, the allowance
  (``slack``, 2% of the day's budget) lets the first requests of a day through at the base weight,
  and no credit is lost to clipping: spend ends the day at the budget when traffic allows. A new UTC
  day starts from zero spend. With ``spent ≥ B`` the budget is exhausted and λ sits at its cap until
  midnight (the service reports it; it does not refuse requests). The pace is by time, not traffic:
  with traffic that is quiet at the end of the day the budget is not all spent, and traffic that
  bursts is held to the time pace (see the README's budget section). The first version accumulated
  μ from (spent − pace) each request (an integral of the position: it oscillates), counted the slack
  all day long and pinned μ at its cap on exhaustion, carrying it into the next day; on a simulated
  day of 5,000 even requests it ran out at 23:31 and scored 0.015–0.02 below this one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DAY_S", "LAMBDA_MAX", "OVERFLOW", "DayPacer", "Pacers", "RequestPacer", "dual_lambda", "dual_step"]

DAY_S = 86_400.0
HOUR_S = 3_600.0
OVERFLOW = "(overflow)"  # the pacer shared by tenants beyond Pacers.max_tenants
LAMBDA_MAX = 1e9  # quality points per dollar: far beyond any real trade-off, far from overflow


def _check_cost(usd: Any) -> float:
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not math.isfinite(usd) or usd < 0:
        raise ValueError(f"spend: {usd!r} must be a finite number of dollars >= 0")
    return float(usd)


def _check_now(now: Any) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now) or now < 0:
        raise ValueError(f"time: {now!r} must be finite seconds since the epoch (UTC)")
    return float(now)


def _check_base(base: Any) -> float:
    if isinstance(base, bool) or not isinstance(base, int | float) or not math.isfinite(base) or base < 0:
        raise ValueError(f"cost weight: {base!r} must be a finite number >= 0")
    return float(base)


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: {v!r} must be a finite number > 0")
    return float(v)


def dual_step(mu: float, overspend: float, step: float, mu_min: float, mu_max: float) -> float:
    """One projected dual step: ``clip(mu + step × overspend, mu_min, mu_max)``, ``overspend`` in
    request-budgets (``c / b − 1`` for one request of cost ``c`` against a budget ``b``)."""
    return min(max(mu + step * overspend, mu_min), mu_max)


def dual_lambda(mu: float, unit_usd: float, mu_max: float) -> float:
    """λ from μ: ``min(max(μ, 0), μ_max) / unit``, at most :data:`LAMBDA_MAX`."""
    return min(min(max(mu, 0.0), mu_max) / unit_usd, LAMBDA_MAX)


@dataclass
class RequestPacer:
    """A budget of ``budget_usd`` per request (see the module docstring)."""

    budget_usd: float
    step: float = 0.01
    mu_max: float = 50.0
    mu_min: float = -5.0  # bounded credit for underspend (anti-windup); λ itself never goes below 0
    mu: float = 0.0
    spent: float = 0.0
    requests: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.budget_usd, bool) or not isinstance(self.budget_usd, int | float) or not (
                math.isfinite(self.budget_usd) and self.budget_usd > 0):
            raise ValueError(f"budget: {self.budget_usd!r} must be a positive number of dollars per request")
        _positive("pacer step", self.step)
        _positive("pacer mu_max", self.mu_max)
        if not (math.isfinite(self.mu_min) and self.mu_min <= 0):
            raise ValueError(f"pacer mu_min: {self.mu_min!r} must be a finite number <= 0")

    @property
    def lam(self) -> float:
        """λ, quality points per dollar added to the cost weight."""
        return dual_lambda(self.mu, self.budget_usd, self.mu_max)

    def cost_weight(self, base: float = 0.0) -> float:
        """The effective cost weight: ``base + λ``."""
        return _check_base(base) + self.lam

    def spend(self, usd: float) -> None:
        """A request's realised cost: one dual step."""
        c = _check_cost(usd)
        self.spent += c
        self.requests += 1
        self.mu = dual_step(self.mu, c / self.budget_usd - 1.0, self.step, self.mu_min, self.mu_max)

    @property
    def ratio(self) -> float:
        """Spend per request over the budget (1.0: on budget)."""
        return self.spent / max(self.requests, 1) / self.budget_usd

    def snapshot(self) -> dict[str, Any]:
        return {"usd_per_request": self.budget_usd, "requests": self.requests, "spent_usd": self.spent,
                "spend_per_request_usd": self.spent / max(self.requests, 1), "spend_ratio": self.ratio,
                "lambda": self.lam, "mu": self.mu}

    def export(self) -> dict[str, float]:
        return {"mu": self.mu, "spent": self.spent, "requests": self.requests}

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Take over an :meth:`export`; a damaged state is ignored (returns False)."""
        try:
            mu, spent, n = float(state["mu"]), float(state["spent"]), int(state["requests"])
        except (KeyError, TypeError, ValueError, OverflowError):
            return False
        if not (math.isfinite(mu) and math.isfinite(spent) and spent >= 0 and n >= 0):
            return False
        self.mu, self.spent, self.requests = min(max(mu, self.mu_min), self.mu_max), spent, n
        return True

    import_ = restore


@dataclass
class DayPacer:
    """A budget of ``usd_per_day`` per UTC day (see the module docstring)."""

    usd_per_day: float
    step: float = 0.01
    slack: float = 0.02
    mu_max: float = 50.0
    day: int = -1  # the UTC day (days since the epoch) ``spent`` belongs to
    spent: float = 0.0
    requests: int = 0  # requests charged today
    since: float = 0.0  # since when today's requests were seen: midnight, or the pacer's first use today
    prior_requests: float = 0.0  # yesterday's requests (0: unknown), the request rate's prior

    def __post_init__(self) -> None:
        if isinstance(self.usd_per_day, bool) or not isinstance(self.usd_per_day, int | float) or not (
                math.isfinite(self.usd_per_day) and self.usd_per_day > 0):
            raise ValueError(f"budget: {self.usd_per_day!r} must be a positive number of dollars per day")
        _positive("pacer step", self.step)
        _positive("pacer mu_max", self.mu_max)
        if not 0 <= self.slack < 1:
            raise ValueError(f"pacer slack: {self.slack!r} must be in [0, 1)")

    # -- the day -----------------------------------------------------------------------------
    def _roll(self, now: float) -> float:
        """Start a new day when ``now`` is in one; returns the fraction of today gone by. A time in
        an earlier day than the current one (a clock step back) counts as the start of today."""
        now = _check_now(now)
        day = int(now // DAY_S)
        if day > self.day:
            seen_midnight = day == self.day + 1
            # yesterday's requests, scaled up to a whole day when the pacer saw only part of it
            seen_s = max((self.day + 1) * DAY_S - self.since, HOUR_S)
            self.prior_requests = self.requests * min(DAY_S / seen_s, 24.0) if seen_midnight else 0.0
            self.since = day * DAY_S if seen_midnight else now
            self.day, self.spent, self.requests = day, 0.0, 0
        return min(max((now - self.day * DAY_S) / DAY_S, 0.0), 1.0)

    def pace(self, now: float) -> float:
        """Dollars that may be spent by ``now`` today."""
        f = self._roll(now)
        return self.usd_per_day * min(f + self.slack * (1.0 - f), 1.0)

    def expected_requests(self, now: float) -> float:
        """N̂: today's requests so far, plus the rate seen today (yesterday's count as a one-hour
        prior) times the rest of the day; at least 1."""
        f = self._roll(now)
        seen_s = max(now - self.since, 0.0)
        rate = (self.requests + self.prior_requests * HOUR_S / DAY_S) / (seen_s + HOUR_S)
        return max(self.requests + rate * (1.0 - f) * DAY_S, 1.0)

    def per_request(self, now: float) -> float:
        """b̂: the day's budget over the requests expected today."""
        return self.usd_per_day / self.expected_requests(now)

    def mu(self, now: float) -> float:
        """μ = η × (spent − pace) / b̂: negative under pace, capped at ``mu_max``."""
        return min(self.step * (self.spent - self.pace(now)) / self.per_request(now), self.mu_max)

    def lam(self, now: float) -> float:
        """λ, quality points per dollar added to the cost weight (at its cap once the budget is spent)."""
        unit = self.per_request(now)
        return dual_lambda(self.mu_max if self.spent >= self.usd_per_day else self.mu(now), unit, self.mu_max)

    def cost_weight(self, base: float, now: float) -> float:
        """The effective cost weight at ``now``: ``base + λ``."""
        return _check_base(base) + self.lam(now)

    def spend(self, usd: float, now: float) -> None:
        """Charge a call's cost at ``now`` to the day it falls in."""
        c = _check_cost(usd)
        self._roll(now)
        self.spent += c
        self.requests += 1

    def exhausted(self, now: float) -> bool:
        self._roll(now)
        return self.spent >= self.usd_per_day

    def snapshot(self, now: float, base: float | None = None) -> dict[str, Any]:
        """Budget, spend and pace today, λ, the projection; with ``base``, the effective weight and
        its multiplier over the base."""
        pace, lam, mu, n_hat = self.pace(now), self.lam(now), self.mu(now), self.expected_requests(now)
        exhausted = self.spent >= self.usd_per_day
        day_end = (self.day + 1) * DAY_S
        rate = self.spent / max(now - self.since, 60.0)  # $ per second, today so far
        projected_at = None
        if not exhausted and rate > 0:
            t = now + (self.usd_per_day - self.spent) / rate
            projected_at = t if t < day_end else None
        out = {"usd_per_day": self.usd_per_day, "spent_today_usd": self.spent, "pace_usd": pace,
               "requests_today": self.requests, "expected_requests_today": n_hat,
               "lambda": lam, "mu": mu, "exhausted": exhausted,
               "projected_day_usd": self.spent + rate * max(day_end - now, 0.0),
               "projected_exhausted_at": projected_at}
        if base is not None:
            w = _check_base(base) + lam
            out["cost_weight"] = w
            out["multiplier"] = w / base if base > 0 else None
        return out

    def export(self) -> dict[str, float]:
        return {"v": 2, "day": self.day, "spent": self.spent, "requests": self.requests, "since": self.since,
                "prior_requests": self.prior_requests}

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Take over an :meth:`export` (also the first version's, whose ``mu`` is not needed); a
        damaged state is ignored (returns False)."""
        try:
            day, spent, n = int(state["day"]), float(state["spent"]), int(state["requests"])
            since = float(state.get("since", day * DAY_S))
            prior = float(state.get("prior_requests", 0.0))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            return False
        if not (day >= 0 and math.isfinite(spent) and spent >= 0 and n >= 0 and math.isfinite(since)
                and math.isfinite(prior) and prior >= 0):
            return False
        self.day, self.spent, self.requests = day, spent, n
        self.since = min(max(since, day * DAY_S), (day + 1) * DAY_S)
        self.prior_requests = prior
        return True

    import_ = restore


class Pacers:
    """The day pacers of every tenant with a budget: ``default`` for any tenant, ``tenants`` per name
    (a tenant with neither is not paced).

    A tenant gets its pacer at its first charge (reading a weight creates nothing: a tenant that
    has spent nothing today is at λ = 0). At most ``max_tenants`` pacers are kept for tenants paced
    by the default budget; named tenants always get theirs. At the cap, pacers that have spent
    nothing since yesterday are dropped (checked at most once a minute), and tenants beyond it share
    one pacer, :data:`OVERFLOW` (one default budget between them): a flood of new tenant names
    cannot buy unpaced spend."""

    SWEEP_S = 60.0

    def __init__(self, default: float | None = None, tenants: Mapping[str, float] | None = None, *,
                 max_tenants: int = 10_000, **pacer: Any) -> None:
        for name, usd in [("default", default), *dict(tenants or {}).items()]:
            if usd is not None:
                try:
                    DayPacer(usd, **pacer)  # a bad budget is refused now, not at a tenant's first request
                except ValueError as e:
                    raise ValueError(f"tenant {name!r}: {e}") from None
        self.default = default
        self.budgets = dict(tenants or {})
        self.max_tenants = max_tenants
        self.options = pacer  # step, slack, mu_max for every pacer
        self.pacers: dict[str, DayPacer] = {}
        self._swept = -math.inf

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.budgets)

    def budget(self, tenant: str) -> float | None:
        return self.budgets.get(tenant, self.default)

    def _full(self, tenant: str) -> bool:
        """Whether a new pacer for ``tenant`` would go beyond the cap (named tenants never do)."""
        return tenant not in self.budgets and tenant != OVERFLOW and len(self.pacers) >= self.max_tenants

    def find(self, tenant: str) -> DayPacer | None:
        """The pacer that paces ``tenant`` now, without creating one (None: it has none yet, or no budget)."""
        p = self.pacers.get(tenant)
        if p is None and self.budget(tenant) is not None and self._full(tenant):
            p = self.pacers.get(OVERFLOW)
        return p

    def get(self, tenant: str, now: float) -> DayPacer | None:
        """The tenant's pacer, created if it has a budget (the shared one beyond the cap)."""
        p = self.pacers.get(tenant)
        if p is not None:
            return p
        budget = self.budget(tenant)
        if budget is None:
            return None
        if self._full(tenant):
            self._sweep(now)
            if self._full(tenant):
                tenant = OVERFLOW
                if (p := self.pacers.get(OVERFLOW)) is not None:
                    return p
        p = self.pacers[tenant] = DayPacer(budget, **self.options)
        return p

    def _sweep(self, now: float) -> None:
        """Drop the pacers of tenants with no charge since yesterday (at most once a minute)."""
        if now - self._swept < self.SWEEP_S:
            return
        self._swept = now
        today = int(_check_now(now) // DAY_S)
        for t in [t for t, p in self.pacers.items() if p.day < today - 1 and t != OVERFLOW]:
            del self.pacers[t]

    def cost_weight(self, tenant: str, base: float, now: float) -> float:
        p = self.find(tenant)
        return _check_base(base) if p is None else p.cost_weight(base, now)

    def spend(self, tenant: str, usd: float, now: float) -> None:
        p = self.get(tenant, now)
        if p is None:
            _check_cost(usd)
        else:
            p.spend(usd, now)

    def snapshot(self, now: float, base: float | None = None) -> dict[str, dict[str, Any]]:
        return {t: p.snapshot(now, base) for t, p in sorted(self.pacers.items())}

    def tenant_snapshot(self, tenant: str, now: float) -> dict[str, Any] | None:
        """The tenant's budget today (None: no budget); a tenant with no charge yet reads as a fresh day."""
        p = self.find(tenant)
        if p is None:
            budget = self.budget(tenant)
            if budget is None:
                return None
            p = DayPacer(budget, **self.options)
        return p.snapshot(now)

    def export(self) -> dict[str, dict[str, float]]:
        return {t: p.export() for t, p in self.pacers.items()}

    def restore(self, states: Mapping[str, Mapping[str, Any]], now: float | None = None) -> int:
        """Take over :meth:`export`; returns how many tenants' states were restored. Skipped: tenants
        that no longer have a budget, damaged states, states from before yesterday or after today
        (with ``now``), and tenants beyond the cap (a tenant's state never lands in the shared pacer)."""
        today = None if now is None else int(_check_now(now) // DAY_S)
        n = 0
        for tenant, state in states.items():
            budget = self.budget(tenant)
            if budget is None or (tenant not in self.pacers and self._full(tenant)):
                continue
            if today is not None:
                try:
                    day = int(state["day"])
                except (KeyError, TypeError, ValueError, OverflowError):
                    continue
                if not today - 1 <= day <= today:
                    continue
            p = self.pacers.get(tenant) or DayPacer(budget, **self.options)
            if p.restore(state):
                self.pacers[tenant] = p
                n += 1
        return n

    import_ = restore
