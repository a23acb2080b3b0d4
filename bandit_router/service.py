"""The service's glue, free of HTTP: decide and log, call the provider, account the cost, take
feedback and make it durable. The aiohttp handlers validate input and call these methods.

request → Router.decide → DecisionRow (queued) → provider → cost (queued) → response
feedback → feedback.parse_feedback → combine per source → Router.learn → FeedbackRow + state
(one transaction; the caller is answered once it has committed)
"""

from __future__ import annotations

import base64
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from feedback import FeedbackSignal, combine
from feedback.graders import LLMJudgeGrader

from .books import Books
from .cache import CacheEntry, ResponseCache, cache_key, cacheable
from .calls import Calling
from .config import RouterConfig
from .features import Message
from .grading import Grading
from .locality import LocalityPolicy, SensitiveDataDetector
from .pacing import Pacers
from .policy import NoEligibleModel
from .providers.base import Provider
from .reliability import Breakers
from .router import Decision, Router
from .storage.base import CacheRow, DecisionRow, FeedbackRow, StateRow, Store, StoreOverloaded

log = logging.getLogger("bandit_router")


class _EventIds:
    """Unguessable event ids: the time in ms (12 hex digits, so ids sort by time and a new row
    lands at the right edge of the database index, not on a random page) and 144 random bits
    (24 characters of URL-safe base64). The random parts are made in bulk: 18 bytes are exactly 24
    characters, so one encoding of ``batch`` × 18 bytes of os.urandom yields ``batch`` of them."""

    def __init__(self, batch: int = 256) -> None:
        self.batch = batch
        self.buf = ""
        self.pos = 0

    def __call__(self, now: float) -> str:
        if self.pos >= len(self.buf):
            self.buf, self.pos = base64.urlsafe_b64encode(os.urandom(18 * self.batch)).decode(), 0
        pos = self.pos
        self.pos = pos + 24
        return f"{int(now * 1000):012x}{self.buf[pos:pos + 24]}"


_NONE = np.empty(0)


class UnknownEvent(LookupError):
    pass


class ExpiredEvent(LookupError):
    pass


@dataclass
class Hints:
    category: str | None = None
    cost_weight: float | None = None
    max_cost_usd: float | None = None
    max_output_tokens: int | None = None  # what the request asks for (max_tokens), for context fit
    reference: dict[str, Any] | None = None  # what graders compare the answer with (not stored)
    locality: str | None = None  # only models with this locality tag may see the request
    tenant: str = "default"  # the client's tenant: the cache is scoped, and a budget kept, by it
    latency_weight: float | None = None  # quality points per second of expected latency
    max_latency_s: float | None = None  # models expected to take longer are not eligible
    stream: bool = False  # the latency that counts is the time to first token, not the whole answer


@dataclass(slots=True)
class _Tracked:
    decision: Decision
    learn: bool
    signals: dict[str, FeedbackSignal] | None = None  # loaded lazily from the store
    created: float = field(default_factory=time.time)
    recorded: bool = True  # the decision row was written (False: it is written when the call ends)
    tenant: str | None = None
    locality: str | None = None  # the request was restricted to models with this tag


class Service(Calling):
    def __init__(self, config: RouterConfig, router: Router, store: Store, providers: dict[str, Provider], *,
                 cache_size: int = 10_000) -> None:
        self.config = config
        self.grading = Grading.from_config(config.grading.graders, config.grading.policy, self.judge_complete)
        self.router = router
        self.store = store
        self.providers = providers
        self.cache_size = cache_size
        self._tracked: OrderedDict[str, _Tracked] = OrderedDict()
        self._inflight: dict[str, _Tracked] = {}  # decisions whose row is written when their call ends
        self._event_id = _EventIds()
        self.unrecorded = 0  # decisions whose row could not be queued (storage overloaded)
        r = config.reliability
        self.breakers = Breakers(router.models, failures=r.breaker_failures, cooldown_s=r.breaker_cooldown_s)
        self._rng = random.Random()
        sens = config.locality.sensitive
        self.locality = LocalityPolicy({m.name: m.locality for m in config.models}, sens.route_to,
                                       SensitiveDataDetector(sens.detect, sens.patterns) if sens.route_to else None)
        c = config.cache
        self.cache = ResponseCache(max_entries=c.max_entries, ttl_s=c.ttl_s) if c.enabled else None
        self.pacers = Pacers(config.budget.usd_per_day, config.budget.tenants)
        self.books = Books()  # what answers leave to do, off their path (see books.py)
        self.metrics: Any = None  # server.metrics.Metrics: decided(d, locality), cost(d, usd), feedback(source)

    # -- deciding ----------------------------------------------------------------------------
    def decide(self, messages: Sequence[Message], hints: Hints, *, model: str | None = None,
               record: bool = True) -> Decision:
        """Choose a model (or take the caller's: logged, not learned from) and log the decision.

        With ``record=False`` the decision row is written when the completion ends (one write per
        request instead of an insert and an update); see :meth:`account`."""
        now = time.time()
        event_id = self._event_id(now)
        local = None if hints.locality is None else self.locality.mask(self.router.models, hints.locality)
        ask: dict[str, Any] = {"category": hints.category, "cost_weight": self._cost_weight(hints, now),
                               "max_output_tokens": hints.max_output_tokens, "event_id": event_id, "timestamp": now,
                               "latency_weight": hints.latency_weight, "max_latency_s": hints.max_latency_s,
                               "stream": hints.stream}
        if model is None:
            closed = None if self.breakers.all_closed else self.breakers.allowed(now)
            allowed = local if closed is None else closed if local is None else closed & local
            try:
                d = self.router.decide(messages, max_cost_usd=hints.max_cost_usd, allowed=allowed, **ask)
            except NoEligibleModel as e:
                if closed is None:
                    raise self.locality.unavailable(hints.locality, e) if local is not None else e from None
                # every eligible model's breaker is open: fail open, to the best of them, rather than refuse
                try:
                    d = self.router.decide(messages, max_cost_usd=hints.max_cost_usd, allowed=local, **ask)
                except NoEligibleModel as e2:
                    raise self.locality.unavailable(hints.locality, e2) if local is not None else e2 from None
            learn = True
        else:
            if hints.locality is not None:
                self.locality.allows(model, hints.locality)
            d = self.router.decide(messages, model=model, **ask)
            learn = False
        t = _Tracked(d, learn, signals={}, created=now, recorded=record, tenant=hints.tenant,
                     locality=hints.locality)
        if record:
            self.store.record_decision(self._row(t))
        else:
            self._inflight[event_id] = t  # kept until its row is written, whatever the LRU evicts
        self._track(event_id, t)
        if self.metrics is not None:
            self.metrics.decided(d, hints.locality)
        return d

    @staticmethod
    def _row(t: _Tracked, **fields: Any) -> DecisionRow:
        d = t.decision
        return DecisionRow(event_id=d.event_id or "", created=d.timestamp or t.created, category=d.category,
                           model=d.model, x=d.x.tobytes(), prompt_tokens=d.prompt_tokens,
                           expected_cost=d.expected_cost, cost_weight=d.cost_weight, learn=t.learn,
                           stamp=d.stamp, quality=d.quality,
                           score_moments=None if (m := d.moments()) is None else m.tobytes(), tenant=t.tenant,
                           **fields)

    def _finish(self, d: Decision, **fields: Any) -> _Tracked | None:
        """Write the decision row with its outcome (or update it, when it was written at decision time).
        Returns the decision's entry (its tenant and locality), which it drops from the in-flight set."""
        t = self._inflight.pop(d.event_id or "", None) or self._tracked.get(d.event_id or "")
        try:
            if t is not None and not t.recorded:
                self.store.record_decision(self._row(t, **fields))
                t.recorded = True
            else:
                self.store.update_decision(d.event_id or "", **fields)
        except StoreOverloaded:  # the answer is already on its way; say so loudly, do not fail it
            self.unrecorded += 1
            log.warning("storage queue full: decision %s not recorded (%d so far)", d.event_id, self.unrecorded)
        # only a fallback and the logged moments needed these: keep the tracked decision small
        d.scores = d.costs = _NONE
        d.draw_sd = d.draw_z = None
        return t

    def _entry(self, event_id: str | None) -> _Tracked | None:
        """A decision this process still holds: in flight (kept whatever the LRU evicts) or recent."""
        return self._inflight.get(event_id or "") or self._tracked.get(event_id or "")

    def _track(self, event_id: str, t: _Tracked) -> None:
        self._tracked[event_id] = t
        if len(self._tracked) > self.cache_size:
            self._tracked.popitem(last=False)

    def _cost_weight(self, hints: Hints, now: float) -> float | None:
        """The request's cost weight (its own, else the configured one), plus its tenant's budget
        pacer's λ when the tenant has a budget."""
        if not self.pacers:
            return hints.cost_weight
        base = self.router.settings.cost_weight if hints.cost_weight is None else hints.cost_weight
        return self.pacers.cost_weight(hints.tenant, base, now)

    def _charge(self, t: _Tracked | None, usd: float) -> None:
        """An upstream call's cost, against its tenant's budget (``t``: the decision's entry)."""
        if self.pacers:
            self.pacers.spend(t.tenant if t is not None and t.tenant else "default", usd, time.time())

    def budget(self, tenant: str) -> dict[str, Any] | None:
        """The tenant's budget today (None: no budget)."""
        snap = self.pacers.tenant_snapshot(tenant, time.time()) if self.pacers else None
        return None if snap is None else {"tenant": tenant, **snap}

    # -- locality ----------------------------------------------------------------------------
    def restrict(self, payload: Any, hints: Hints) -> list[str]:
        """Apply the sensitive-data detector to the request (everything sent upstream): when it finds
        personal data, the request is restricted to ``locality.sensitive.route_to`` (raises
        :class:`LocalityError` when it asked for another locality). Returns what it found."""
        hints.locality, found = self.locality.restrict(payload, hints.locality)
        return found

    def _judge_allowed(self, t: _Tracked | None) -> Any:
        """For a restricted request: only graders that send nothing outside its locality (a judge
        sends the request to its model or an alternate). A decision whose entry is unknown fails
        closed: no LLM judge sees it."""
        if t is None:
            return lambda g: not isinstance(g, LLMJudgeGrader)
        if t.locality is None:
            return None
        locality = t.locality
        return lambda g: not isinstance(g, LLMJudgeGrader) or self.locality.within(locality, (g.model, *g.alternates))

    # -- the response cache ------------------------------------------------------------------
    def cache_key(self, d: Decision, body: dict[str, Any], tenant: str) -> str | None:
        """The cache key of a deterministic request (None: not cacheable, or no cache). Its eligible
        model set is what the request's own constraints allow (category, locality, enablement, the
        model it named), not what breakers or a deadline allow at this moment."""
        if self.cache is None or not cacheable(body, all_requests=self.config.cache.all_requests):
            return None
        t = self._entry(d.event_id)
        if t is not None and not t.learn:
            eligible = [d.model]
        else:
            serving = self.router.serving(d.category)
            if t is not None and t.locality is not None:
                serving &= self.locality.mask(self.router.models, t.locality)
            eligible = [m for m, ok in zip(self.router.models, serving, strict=True) if ok]
        return cache_key(tenant, body, eligible)  # (bodies nest at most requests.MAX_DEPTH deep: encodable)

    def abandon(self, d: Decision) -> None:
        """A request that failed on our side before its call ended: its decision is written as failed
        (a no-op once the call has ended)."""
        if (d.event_id or "") in self._inflight:
            self._finish(d, status="failed")

    def cache_lookup(self, d: Decision, key: str, accept: Any = None) -> CacheEntry | None:
        """A hit answers the decision: it becomes a logged answer from the cache (no upstream call,
        $0, not learned from); feedback on it is recorded but teaches nothing. ``accept(entry)``:
        whether the caller can use the entry (a stream cannot replay tool calls)."""
        assert self.cache is not None
        e = self.cache.get(key, time.time(), lambda e: e.model in self.router.index and (accept is None or accept(e)))
        if e is None:
            return None
        t = self._entry(d.event_id)
        if t is not None:
            t.learn = False
        d.model, d.arm, d.expected_cost = e.model, self.router.index[e.model], 0.0
        self._finish(d, cost_usd=0.0, completion_tokens=0, status="cached")
        return e

    def cache_store(self, key: str, d: Decision, body: bytes, tenant: str) -> None:
        assert self.cache is not None
        e = self.cache.entry(key, tenant, d.model, d.category, body, time.time())
        evicted = self.cache.put(e)
        try:
            self.store.save_cache(CacheRow(e.key, e.tenant, e.model, e.category, e.body, e.created, e.expires))
            self.store.delete_cache(evicted)
        except StoreOverloaded:  # the entry still serves from memory; it is just not durable
            log.warning("storage queue full: cache entry not stored")

    def candidates(self, d: Decision) -> list[dict[str, Any]]:
        rows = []
        for k, m in enumerate(self.router.models):
            score = float(d.scores[k]) if len(d.scores) else float("nan")
            row = {"model": m, "expected_cost_usd": float(d.costs[k]),
                   "score": score if np.isfinite(score) else None, "eligible": bool(np.isfinite(score))}
            if d.latencies is not None:
                row["expected_latency_ms"] = round(float(d.latencies[k]) * 1000, 1)
            rows.append(row)
        return rows

    # -- feedback ----------------------------------------------------------------------------
    async def _lookup(self, event_id: str) -> _Tracked:
        t = self._entry(event_id)
        if t is None:
            row = await self.store.get_decision(event_id)
            if row is None or row.model not in self.router.index:
                raise UnknownEvent(f"event_id: {event_id!r} was not issued by this router (or has expired)")
            x = np.frombuffer(row.x, dtype=np.float64).copy()
            d = Decision(row.category, row.model, self.router.index[row.model], x, row.prompt_tokens,
                         row.expected_cost, row.cost_weight, np.empty(0), np.empty(0), row.event_id, row.created,
                         row.quality, row.stamp)
            t = self._tracked.setdefault(event_id, _Tracked(d, row.learn, None, row.created))
        if t.signals is None:
            rows = await self.store.feedback_for(event_id)
            if t.signals is None:
                t.signals = {r.source: FeedbackSignal(r.quality, r.source, r.kind, r.weight) for r in rows}  # type: ignore[arg-type]
        return t

    async def feedback(self, event_id: str, signal: FeedbackSignal, raw: dict[str, Any]) -> dict[str, Any]:
        """Fold a signal into its decision; returns once it is durable."""
        t = await self._lookup(event_id)
        now = time.time()
        if now - t.created > self.config.feedback.window_s:
            raise ExpiredEvent(f"event_id: {event_id!r} is past the feedback window "
                               f"({self.config.feedback.window_s:g} s)")
        assert t.signals is not None
        if not self.store.has_room(3):  # checked before learning: a 503 must leave the posterior as it was
            raise StoreOverloaded("storage write queue is full")
        d = t.decision
        if not t.recorded:  # feedback during the call (a stream): the decision row goes first
            self.store.record_decision(self._row(t))
            t.recorded = True
        t.signals[signal.source] = signal
        quality = combine(t.signals.values())
        state: list[StateRow] = []
        if t.learn:
            self.router.learn(d, quality, now=now)
            state = [StateRow(k, v, now) for k, v in self.router.dirty_states(d).items()]
            self.store.update_decision(event_id, stamp=d.stamp, quality=quality)
        await self.store.record_feedback(
            FeedbackRow(event_id, signal.source, signal.quality, signal.kind, signal.weight,
                        orjson.dumps(raw).decode(), now), state=state)
        if self.metrics is not None:
            self.metrics.feedback(signal.source)
        return {"event_id": event_id, "source": signal.source, "quality": signal.quality,
                "decision_quality": quality, "model": d.model, "category": d.category, "learned": t.learn}

    # -- state -------------------------------------------------------------------------------
    async def settle(self) -> None:
        """What the answers so far left to do is done: the books run, and the graders they started end."""
        self.books.run()
        await self.grading.drain()

    async def flush(self) -> None:
        """Everything answered so far is durable: the books run, then the store's queue is written."""
        self.books.run()
        await self.store.flush()

    def checkpoint(self) -> None:
        self.books.run()
        now = time.time()
        rows = [StateRow(k, v, now) for k, v in self.router.dirty_states().items()]
        rows += [StateRow(f"budget:{t}", orjson.dumps(p.export()), now) for t, p in self.pacers.pacers.items()]
        self.store.save_state(rows)

    def restore(self) -> int:
        n = self.router.import_state(self.store.load_state())
        for key, blob in self.store.load_state("model:").items():
            name = key.partition(":")[2]
            if name in self.router.index:
                self.router.set_enabled(name, blob == b"1")
        budgets = {}  # today's spend survives a restart
        for key, blob in self.store.load_state("budget:").items():
            try:
                budgets[key.partition(":")[2]] = orjson.loads(blob)
            except orjson.JSONDecodeError:
                log.warning("state %s is damaged: skipped", key)
        self.pacers.restore(budgets, time.time())
        if self.cache is not None:
            now = time.time()
            rows = self.store.load_cache(now)
            dropped = self.cache.load((CacheEntry(r.key, r.tenant, r.model, r.category, r.body, r.created, r.expires)
                                       for r in rows), now)
            self.store.delete_cache(dropped)
        return n

    def set_enabled(self, model: str, enabled: bool) -> None:
        self.router.set_enabled(model, enabled)
        self.store.save_state([StateRow(f"model:{model}", b"1" if enabled else b"0", time.time())])

    def forget(self) -> None:
        self.router.forget(time.time())
        self.checkpoint()

    async def expire(self) -> int:
        cutoff = time.time() - self.config.feedback.window_s
        for eid in [e for e, t in self._tracked.items() if t.created < cutoff]:
            del self._tracked[eid]
        if self.cache is not None:
            self.store.delete_cache(self.cache.expire(time.time()))
        return await self.store.expire_decisions(cutoff)
