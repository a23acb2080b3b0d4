"""``GET /metrics``: the router's Prometheus metrics (text format), from a per-app registry.

On the request path (cheap: a dict increment or one histogram observation):

* ``bandit_router_requests_total{model,category,status,fallback}``: ``/v1/chat/completions`` requests,
  from the response's ``X-Router-*`` headers (``model``/``category`` are ``none`` when the request
  failed before or without them; ``fallback`` is ``true`` when another model answered).
* ``bandit_router_request_duration_seconds{stream}``: the whole request, as the router serves it.
* ``bandit_router_upstream_duration_seconds{model}``: each non-streamed upstream call (every attempt,
  and judge calls), timed around the provider's ``complete``.
* ``bandit_router_upstream_first_chunk_seconds{model}``: each streamed upstream call, to its first chunk.
* ``bandit_router_overhead_seconds``: router overhead = request time − upstream time, for non-streamed
  requests answered by a single upstream call (no retry, no fallback), so backoff waits never count.
* ``bandit_router_decisions_total{category,model}``, ``bandit_router_cost_usd_total{category,model}``,
  ``bandit_router_feedback_total{source}``: counted by the service's hooks.

At scrape time (no per-request cost): ``bandit_router_traffic_share{category,model}`` (decisions since
start), ``bandit_router_posterior_quality_mean{category,model}``, ``bandit_router_breaker_state{model}``
(0 closed, 1 half-open, 2 open), ``bandit_router_storage_queue_depth``, and with the response cache on,
``bandit_router_cache_requests{result}`` (hit, miss, bypass) and ``bandit_router_cache_entries``.
Counted by the service's hooks too: ``bandit_router_deadline_decisions{met}`` (requests with a latency
deadline) and ``bandit_router_locality_decisions{locality}`` (requests restricted to a locality).

Labels are bounded: models are the configured ones, categories are bounded by the router, statuses are
HTTP codes, and feedback sources map to ``user``, ``grader:<configured grader>``, ``grader:other`` or
``other``. No event id or prompt is ever a label.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..reliability import CLOSED, HALF_OPEN, OPEN
from .keys import SERVICE

CHAT_PATH = "/v1/chat/completions"
BREAKER_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
MAX_SOURCES = 20
LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1)

# upstream call times of the request being served (set by the guard, appended by the providers)
UPSTREAM_TIMES: ContextVar[list[float] | None] = ContextVar("bandit_router_upstream", default=None)


class _TimedProvider:
    """A provider whose calls are timed: ``complete`` whole, ``stream`` to its first chunk."""

    def __init__(self, inner: Any, hist: Any, first_chunk: Any) -> None:
        self._inner = inner
        self._hist = hist
        self._first = first_chunk

    async def stream(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        first = True
        gen = self._inner.stream(*args, **kwargs)
        try:
            async for chunk in gen:
                if first:
                    self._first.observe(time.perf_counter() - t0)
                    first = False
                yield chunk
        finally:
            await gen.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await self._inner.complete(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            asyncio.get_running_loop().call_soon(self._hist.observe, dt)  # off the answer's path
            acc = UPSTREAM_TIMES.get()
            if acc is not None:
                acc.append(dt)


class Metrics:
    """One app's metrics: its registry, the request-path instruments and the service hooks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("bandit_router_requests", "Chat completion requests by the model that answered, "
                                "category, HTTP status and whether it fell back",
                                ["model", "category", "status", "fallback"], registry=self.registry)
        self.duration = Histogram("bandit_router_request_duration_seconds", "Chat completion request time "
                                  "(whole request)", ["stream"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.upstream = Histogram("bandit_router_upstream_duration_seconds", "Upstream call time (non-streamed "
                                  "calls, every attempt)", ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_chunk = Histogram("bandit_router_upstream_first_chunk_seconds", "Streamed upstream calls: "
                                     "time to the first chunk", ["model"], buckets=LATENCY_BUCKETS,
                                     registry=self.registry)
        self.overhead = Histogram("bandit_router_overhead_seconds", "Router overhead: request time minus upstream "
                                  "time, non-streamed requests answered by one upstream call",
                                  buckets=OVERHEAD_BUCKETS, registry=self.registry)
        self.decisions: dict[tuple[str, str], int] = {}
        self.deadlines = {True: 0, False: 0}  # decisions with a deadline: met / missed
        self.localities: dict[str, int] = {}  # decisions restricted to a locality
        self.costs: dict[tuple[str, str], float] = {}
        self.feedbacks: dict[str, int] = {}
        self.known_sources: frozenset[str] = frozenset({"user"})
        self.service: Any = None
        self.registry.register(_ScrapeCollector(self))
        # the request path's labelled children, kept (``labels()`` costs a lock and a validation a call)
        self._requests: dict[tuple[str, str, int, bool], Any] = {}
        self._durations: dict[bool, Any] = {}

    def request_done(self, model: str, category: str, status: int, fallback: bool, streamed: bool,
                     seconds: float) -> None:
        """One ``/v1/chat/completions`` request served: counted and timed."""
        key = (model, category, status, fallback)
        counter = self._requests.get(key)
        if counter is None:  # label values are bounded (see the module docstring), and so is this
            counter = self._requests[key] = self.requests.labels(model, category, str(status),
                                                                 "true" if fallback else "false")
        counter.inc()
        hist = self._durations.get(streamed)
        if hist is None:
            hist = self._durations[streamed] = self.duration.labels("true" if streamed else "false")
        hist.observe(seconds)

    # -- service hooks (called by Service when ``service.metrics`` is set) ---------------------
    def decided(self, d: Any, locality: str | None = None) -> None:
        key = (d.category, d.model)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        if d.deadline_met is not None:
            self.deadlines[d.deadline_met] += 1
        if locality is not None:  # a configured tag: the decision fails before this for any other
            self.localities[locality] = self.localities.get(locality, 0) + 1

    def cost(self, d: Any, usd: float) -> None:
        key = (d.category, d.model)
        self.costs[key] = self.costs.get(key, 0.0) + usd

    def feedback(self, source: str) -> None:
        label = self.source_label(source)
        self.feedbacks[label] = self.feedbacks.get(label, 0) + 1

    def source_label(self, source: str) -> str:
        if source in self.known_sources:
            return source
        return "grader:other" if source.startswith("grader:") else "other"

    # -- wiring ------------------------------------------------------------------------------
    def attach(self, service: Any) -> None:
        self.service = service
        names = {"user"}
        for graders in service.grading.graders.values():
            names.update(f"grader:{g.name}" for g in graders if getattr(g, "name", None))
        self.known_sources = frozenset(sorted(names)[:MAX_SOURCES - 2])  # + grader:other, other
        service.providers = {m: _TimedProvider(p, self.upstream.labels(m), self.first_chunk.labels(m))
                             for m, p in service.providers.items()}
        service.metrics = self


class _ScrapeCollector(Collector):
    """What is computed when Prometheus scrapes: the hooks' counts and the service's live state."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time only

    def collect(self) -> Iterator[Metric]:
        m = self.m
        dec = CounterMetricFamily("bandit_router_decisions", "Routing decisions by category and chosen model",
                                  labels=["category", "model"])
        share = GaugeMetricFamily("bandit_router_traffic_share", "Share of a category's decisions per model "
                                  "(since start)", labels=["category", "model"])
        totals: dict[str, int] = {}
        for (cat, _), n in m.decisions.items():
            totals[cat] = totals.get(cat, 0) + n
        for (cat, model), n in sorted(m.decisions.items()):
            dec.add_metric([cat, model], n)
            share.add_metric([cat, model], n / totals[cat])
        cost = CounterMetricFamily("bandit_router_cost_usd", "Upstream cost in US dollars",
                                   labels=["category", "model"])
        for (cat, model), usd in sorted(m.costs.items()):
            cost.add_metric([cat, model], usd)
        fb = CounterMetricFamily("bandit_router_feedback", "Feedback signals by source", labels=["source"])
        for source, n in sorted(m.feedbacks.items()):
            fb.add_metric([source], n)
        dl = CounterMetricFamily("bandit_router_deadline_decisions", "Decisions asked for a latency deadline, by "
                                 "whether an eligible model was expected to meet it", labels=["met"])
        for met, n in m.deadlines.items():
            dl.add_metric(["true" if met else "false"], n)
        loc = CounterMetricFamily("bandit_router_locality_decisions", "Decisions restricted to a locality "
                                  "(asked for, or personal data detected)", labels=["locality"])
        for tag, n in sorted(m.localities.items()):
            loc.add_metric([tag], n)
        yield from (dec, share, cost, fb, dl, loc)
        service = m.service
        if service is None:
            return
        quality = GaugeMetricFamily("bandit_router_posterior_quality_mean", "Posterior mean quality",
                                    labels=["category", "model"])
        for cat, rows in service.router.arm_stats().items():
            for model, row in rows.items():
                quality.add_metric([cat, model], float(row["quality_mean"]))
        breaker = GaugeMetricFamily("bandit_router_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                                    labels=["model"])
        for model, h in zip(service.breakers.models, service.breakers.health, strict=True):
            breaker.add_metric([model], BREAKER_VALUE.get(h.state, 2))
        depth = GaugeMetricFamily("bandit_router_storage_queue_depth", "Storage writer queue depth")
        depth.add_metric([], service.store.queue_depth)
        yield from (quality, breaker, depth)
        if service.cache is not None:
            c = service.cache
            lookups = CounterMetricFamily("bandit_router_cache_requests", "Cacheable chat completion requests by "
                                          "what the response cache did (hit: answered at $0, no upstream call)",
                                          labels=["result"])
            for result, n in (("hit", c.hits), ("miss", c.misses), ("bypass", c.bypasses)):
                lookups.add_metric([result], n)
            entries = GaugeMetricFamily("bandit_router_cache_entries", "Entries in the response cache")
            entries.add_metric([], len(c))
            yield from (lookups, entries)


METRICS = web.AppKey("metrics", Metrics)


def count_request(m: Metrics, resp: web.StreamResponse | None, status: int, total: float, acc: list[float]) -> None:
    """One chat request served (by :mod:`.guard`, once the answer is out): ``total`` seconds in all,
    ``acc`` its upstream calls' times."""
    h = resp.headers if resp is not None else {}
    streamed = resp is not None and not isinstance(resp, web.Response)
    m.request_done(h.get("X-Router-Model", "none"), h.get("X-Router-Category", "none"), status,
                   "X-Router-Fallback" in h, streamed, total)
    if not streamed and status == 200 and len(acc) == 1:
        m.overhead.observe(max(0.0, total - acc[0]))


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _attach_ctx(app: web.Application) -> AsyncIterator[None]:
    app[METRICS].attach(app[SERVICE])
    yield


def setup(app: web.Application) -> None:
    """Add ``GET /metrics`` and the per-app registry; call after the service's cleanup context."""
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_attach_ctx)
    app.router.add_get("/metrics", metrics_handler)
