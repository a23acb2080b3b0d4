"""The aiohttp application: app factory, typed app keys, cleanup contexts and routes.

    app = make_app(config, db_path="./bandit_router.db")
    web.run_app(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ..categories import CategoryClassifier
from ..config import RouterConfig
from ..providers import OpenAICompatProvider, Provider
from ..providers.anthropic import AnthropicProvider
from ..providers.http import HttpClient
from ..router import Router
from ..service import Service
from ..storage import open_store
from . import admin, dashboard, handlers, metrics
from .auth import AuthSettings, log_summary
from .guard import make_guard
from .keys import CONFIG, DB_PATH, SCHEDULER, SERVICE
from .openapi import add_openapi

log = logging.getLogger("bandit_router")


def build_router(config: RouterConfig) -> Router:
    c = config.categories
    rules = c.rules if c.rules is not None else None
    classifier = (CategoryClassifier(rules=rules, fallback=c.fallback, min_score=c.min_score) if rules is not None
                  else CategoryClassifier(fallback=c.fallback, min_score=c.min_score))
    return Router([m.spec() for m in config.models], config.bandit.settings(), categories=c.names,
                  classifier=classifier)


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = open_store(app[DB_PATH])
    await store.start()
    client = HttpClient(limit_per_host=500)
    adapters = {"openai": OpenAICompatProvider, "anthropic": AnthropicProvider}
    providers: dict[str, Provider] = {
        m.name: adapters[m.provider](client, name=m.name, base_url=m.base_url, upstream_model=m.upstream_model,
                                     api_key=m.api_key(), timeout_s=m.timeout_s, connect_timeout_s=m.connect_timeout_s,
                                     first_byte_timeout_s=m.first_byte_timeout_s)
        for m in config.models
    }
    service = Service(config, build_router(config), store, providers)
    restored = service.restore()
    log.info("restored %d arms from %s", restored, app[DB_PATH])
    app[SERVICE] = service
    try:
        yield
    finally:
        await service.settle()
        service.checkpoint()
        await store.close()
        await client.close()


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    cfg = app[CONFIG].scheduler
    scheduler = AsyncIOScheduler()

    # Coroutines, so they run on the event loop: apscheduler runs a plain function on a worker
    # thread, where it would race the handlers over the posteriors.
    async def checkpoint() -> None:
        service.checkpoint()

    async def forget() -> None:
        service.forget()

    scheduler.add_job(checkpoint, "interval", seconds=cfg.checkpoint_s, id="checkpoint")
    scheduler.add_job(service.expire, "interval", seconds=cfg.expiry_s, id="expire")
    if app[CONFIG].bandit.half_life_seconds is not None:
        scheduler.add_job(forget, "interval", seconds=cfg.forget_s, id="forget")
    app[SCHEDULER] = scheduler
    scheduler.start()
    try:
        yield
    finally:
        scheduler.shutdown(wait=False)


def make_app(config: RouterConfig, *, db_path: str | Path | None = None,
             admin_local_only: bool = False) -> web.Application:
    """The router as an aiohttp application (state opens and closes with the app).

    ``/admin/*`` needs the bearer token of ``BANDIT_ROUTER_ADMIN_TOKEN`` or ``admin.token``; with
    neither it is refused, unless ``admin_local_only`` (then loopback peers need no token; serve it
    on a loopback host only). ``/v1/*`` needs a client key when any is configured (see ``auth``)."""
    auth = AuthSettings.from_config(config, admin_local_only=admin_local_only)
    log_summary(auth, config)
    app = web.Application(client_max_size=config.server.max_body_bytes,
                          middlewares=[make_guard(auth)])
    app[CONFIG] = config
    app[DB_PATH] = str(db_path or config.storage.path)
    app.cleanup_ctx.append(_service_ctx)
    app.cleanup_ctx.append(_scheduler_ctx)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/route", handlers.route)
    app.router.add_post("/v1/feedback", handlers.feedback)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/admin/arms", admin.arms)
    app.router.add_post("/admin/models/{name}/disable", admin.disable)
    app.router.add_post("/admin/models/{name}/enable", admin.enable)
    app.router.add_get("/healthz", admin.healthz)
    dashboard.setup(app)  # GET /admin/dashboard, GET /admin/timeline
    metrics.setup(app)  # GET /metrics (admin auth), after the service's cleanup context
    add_openapi(app)
    return app
