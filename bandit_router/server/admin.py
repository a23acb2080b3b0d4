"""/admin handlers: arm statistics, deprecating and restoring models, health."""

from __future__ import annotations

import time
from collections import Counter

import orjson
from aiohttp import web

from .errors import error
from .keys import SERVICE


async def arms(request: web.Request) -> web.Response:
    """Per category, per model: decisions, feedback (total and by source), posterior mean and sd of
    quality, mean cost per request, traffic share over the last 1,000 decisions, enabled, prior, and
    the latency estimates (the configured quantile of time to first token and of the whole answer).
    Per model (``health``): breaker state, calls, failures, recent error rate and latency, fallbacks.
    ``storage``: the writer's queue depth, failed writes, decisions that could not be queued."""
    service = request.app[SERVICE]
    store = service.store
    await store.flush()
    decisions = await store.decision_counts()
    feedback = await store.feedback_counts()
    costs = await store.mean_costs()
    stats = service.router.arm_stats()
    out: dict[str, dict] = {}
    for category, models in stats.items():
        recent = await store.recent_decisions(category, 1000)
        share = Counter(m for m, _ in recent)
        rows = {}
        for model, s in models.items():
            by_source = {src: n for (c, m, src), n in feedback.items() if c == category and m == model}
            rows[model] = {
                "decisions": decisions.get((category, model), 0),
                "feedback": sum(by_source.values()),
                "feedback_by_source": by_source,
                "observations": s["observations"],
                "quality_mean": s["quality_mean"],
                "quality_sd": s["quality_sd"],
                "mean_cost_usd": costs.get((category, model)),
                "traffic_share": share[model] / len(recent) if recent else 0.0,
                "enabled": s["enabled"],
                "serves": s["serves"],
                "prior": {"quality": s["prior_quality"], "strength": s["prior_strength"]},
                "output_tokens": s["output_tokens"],
                "latency": {"ttft_s": s["ttft_s"], "total_s": s["latency_s"],
                            "quantile": service.router.settings.latency_quantile,
                            "observations": s["latency_observations"]},
            }
        out[category] = rows
    graders = {name: dict(c) for name, c in service.grading.stats.items()}
    storage = {"queue_depth": store.queue_depth, "failed_writes": store.failed_writes,
               "unrecorded_decisions": service.unrecorded}
    body = {"categories": out, "graders": graders, "health": service.breakers.snapshot(), "storage": storage}
    if service.cache is not None:
        body["cache"] = service.cache.stats()
    if service.pacers:
        body["budgets"] = service.pacers.snapshot(time.time())
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _set(request: web.Request, enabled: bool) -> web.Response:
    service = request.app[SERVICE]
    name = request.match_info["name"]
    if name not in service.router.index:
        return error(404, f"model: {name!r} is not configured", param="name", code="model_not_found")
    service.set_enabled(name, enabled)
    await service.store.flush()
    return web.Response(body=orjson.dumps({"model": name, "enabled": enabled}), content_type="application/json")


async def disable(request: web.Request) -> web.Response:
    return await _set(request, False)


async def enable(request: web.Request) -> web.Response:
    return await _set(request, True)


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.Response(body=orjson.dumps({"status": "ok", "models": len(service.router.models),
                                           "queue_depth": service.store.queue_depth}),
                        content_type="application/json")
