"""The one middleware every request passes: who may call what (:mod:`.auth`), errors as OpenAI
error objects (:mod:`.errors`), and the chat path's metrics (:mod:`.metrics`).

One middleware, not three: aiohttp wraps every request in one more coroutine per middleware, and
on this path that costs more than the checks themselves (about 10 µs a layer at one connection,
``benchmarks/overhead.py``). What it does, from the outside in:

1. ``POST /v1/chat/completions`` is timed, with its upstream calls (``metrics.UPSTREAM_TIMES``),
   and counted with the service's books (``books.py``), once the answer has gone out. Any other
   request runs the books first, so what it reads is up to date.
2. A caller who may not make the request is refused (``auth.refuse``).
3. An error body never carries a configured secret (``auth.scrub``).
4. aiohttp's own refusals (404, 405, 413) and anything a handler raised become error objects: a
   bug is a logged 500 with nothing of it in the body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from .auth import AuthSettings, refuse, scrub
from .errors import error, http_error
from .keys import SERVICE
from .metrics import CHAT_PATH, METRICS, UPSTREAM_TIMES, count_request

log = logging.getLogger("bandit_router")


def make_guard(settings: AuthSettings) -> Any:
    """The middleware, for :func:`~bandit_router.server.app.make_app` (``settings``: who may call what)."""
    secrets = settings.secrets

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        timed = request.path == CHAT_PATH
        service = request.app.get(SERVICE)
        if not timed and service is not None:
            service.books.run()  # what earlier answers left to do, before anything reads it
        if timed:
            acc: list[float] = []
            token = UPSTREAM_TIMES.set(acc)
            t0 = time.perf_counter()
        status = 500
        resp: web.StreamResponse | None = None
        try:
            resp = refuse(request, settings)
            if resp is None:
                resp = await handler(request)
            resp = scrub(resp, secrets)
        except web.HTTPException as e:
            if e.status < 400:
                status = e.status
                raise
            resp = scrub(http_error(request, e), secrets)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            resp = error(500, "internal error (logged)")
        finally:
            if timed:
                UPSTREAM_TIMES.reset(token)
                total = time.perf_counter() - t0
                if resp is not None:
                    status = resp.status
                args = (request.app[METRICS], resp, status, total, acc)
                if service is not None:
                    service.books.add(count_request, *args)
                else:
                    asyncio.get_running_loop().call_soon(count_request, *args)
        return resp

    return guard
