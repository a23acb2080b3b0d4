"""The admin dashboard: one self-contained HTML page and the JSON it polls.

* ``GET /admin/dashboard``: the page. Its CSS and JS (``static/``) are inlined, so it is one
  response with no other asset to fetch (no CDN, no build step) and a strict Content-Security-Policy
  allows exactly those two inline blocks (by SHA-256) and fetches to this origin. The page holds
  no data and no secret: it is code only.
* ``GET /admin/timeline?bucket_s=60&window_s=3600``: decisions per category, model and time bucket
  (from the store), and the recent breaker and drift events (see :class:`EventLog`).
* The page also polls ``GET /admin/arms`` (posterior quality, cost per request, health).

Auth: both JSON endpoints are ordinary ``/admin/*`` routes behind the bearer-token check (``guard``). The
page's script takes the token from the URL fragment (``/admin/dashboard#token=...``, never sent to
the server, and removed from the address bar and history at once) or from its sign-in form, keeps it
in ``sessionStorage`` (this tab only, gone when the tab closes) and sends it as
``Authorization: Bearer`` on each fetch. Nothing sets a cookie, so no admin request is authorised by
ambient credentials (no CSRF). A 401 clears the stored token and shows the form again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

import orjson
from aiohttp import web

from ..reliability import CLOSED
from ..router import Router
from .errors import error
from .keys import SERVICE

log = logging.getLogger("bandit_router")

DASHBOARD_PATH = "/admin/dashboard"
TIMELINE_PATH = "/admin/timeline"
MAX_BUCKETS = 1440  # e.g. a day in minutes
MAX_WINDOW_S = 7 * 86400
DEFAULT_BUCKET_S, DEFAULT_WINDOW_S = 60, 3600
SAMPLE_S = 1.0  # how often breaker states and drift counters are compared for events
MAX_EVENTS = 500


# -- the page ----------------------------------------------------------------------------------------

def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@cache
def page() -> tuple[bytes, str]:
    """The HTML with its CSS and JS inlined, and the Content-Security-Policy that admits exactly them."""
    static = resources.files(__package__).joinpath("static")
    html = static.joinpath("dashboard.html").read_text(encoding="utf-8")
    css = static.joinpath("dashboard.css").read_text(encoding="utf-8")
    js = static.joinpath("dashboard.js").read_text(encoding="utf-8")
    if "</" in css or "</script" in js.lower():  # would end the inline block early
        raise ValueError("dashboard assets must not contain '</' (css) or '</script' (js)")
    html = html.replace("<!-- dashboard.css -->", f"<style>{css}</style>", 1)
    html = html.replace("<!-- dashboard.js -->", f"<script>{js}</script>", 1)
    csp = ("default-src 'none'; "
           f"script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode("utf-8"), csp


async def dashboard(request: web.Request) -> web.Response:
    body, csp = page()
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": csp, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"})


# -- events ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Event:
    t: float
    kind: str  # "breaker" | "drift"
    model: str
    category: str | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"t": self.t, "kind": self.kind, "model": self.model, "category": self.category,
                "message": self.message}


def drift_changes(router: Router) -> dict[tuple[str, str], int]:
    """Per (category, model): how many abrupt quality changes the arm's change detector has found
    (each one makes the arm re-learn; see ``posterior``). The counters live in the router's
    per-category arms, which ``Router.arm_stats`` does not show."""
    out: dict[tuple[str, str], int] = {}
    for name, cat in getattr(router, "_cats", {}).items():
        changes = getattr(cat.arms, "changes", ())
        for k, model in enumerate(router.models[:len(changes)]):
            out[(name, model)] = int(changes[k])
    return out


class EventLog:
    """Breaker transitions and detected drifts, found by comparing snapshots every ``SAMPLE_S``: the
    service keeps counters and states, not a history. A breaker that opens and recovers between two
    samples still shows (``times_opened`` went up). Timestamps are the sample's (within ``SAMPLE_S``)."""

    def __init__(self, maxlen: int = MAX_EVENTS) -> None:
        self.events: deque[Event] = deque(maxlen=maxlen)
        self._breakers: dict[str, dict[str, object]] | None = None
        self._drift: dict[tuple[str, str], int] | None = None

    def sample(self, health: dict[str, dict[str, object]], drift: dict[tuple[str, str], int],
               now: float | None = None) -> list[Event]:
        now = time.time() if now is None else now
        new: list[Event] = []
        if self._breakers is not None:
            for model, h in health.items():
                before = self._breakers.get(model, {"breaker": CLOSED, "times_opened": 0})
                state, was = str(h["breaker"]), str(before["breaker"])
                opened = int(h["times_opened"]) - int(before["times_opened"])  # type: ignore[call-overload]
                if state == was and opened <= 0:
                    continue
                moves = f"{was} → {state}" if state != was else f"still {state}"
                msg = f"breaker {moves}"
                if opened > 0:
                    msg += f"; opened {opened}× since the last sample ({h['times_opened']} in all)"
                if h.get("last_error") and (opened > 0 or state != CLOSED):
                    msg += f"; last error: {h['last_error']}"
                new.append(Event(now, "breaker", model, None, msg))
        if self._drift is not None:
            for (category, model), n in drift.items():
                d = n - self._drift.get((category, model), 0)
                if d > 0:
                    new.append(Event(now, "drift", model, category,
                                     f"quality change detected ({n} in all): the arm re-learns"))
        self._breakers = {m: dict(h) for m, h in health.items()}
        self._drift = dict(drift)
        self.events.extend(new)
        return new

    def since(self, t: float) -> list[dict[str, object]]:
        """Events at or after ``t``, newest first."""
        return [e.as_dict() for e in reversed(self.events) if e.t >= t]


EVENTS = web.AppKey("dashboard_events", EventLog)


async def _events_ctx(app: web.Application) -> AsyncIterator[None]:
    log_ = app[EVENTS]
    service = app[SERVICE]

    def sample() -> None:
        log_.sample(service.breakers.snapshot(), drift_changes(service.router))

    async def loop() -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            try:
                sample()
            except Exception:  # a bad sample must not end the log
                log.exception("dashboard: event sample failed")

    sample()  # the baseline: what the router restored is not an event
    task = asyncio.create_task(loop(), name="dashboard-events")
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


# -- the timeline ------------------------------------------------------------------------------------

def _number(request: web.Request, name: str, default: int, lo: int, hi: int) -> int | web.Response:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or not lo <= value <= hi:
        return error(422, f"{name}: must be a whole number of seconds from {lo} to {hi}, got {raw!r}", param=name)
    return int(value)


async def timeline(request: web.Request) -> web.Response:
    """Decisions per category, model and bucket over the window (buckets aligned to multiples of
    ``bucket_s``, oldest first, the last one holding now), and the events of the window."""
    bucket_s = _number(request, "bucket_s", DEFAULT_BUCKET_S, 1, 86400)
    if isinstance(bucket_s, web.Response):
        return bucket_s
    window_s = _number(request, "window_s", DEFAULT_WINDOW_S, 1, MAX_WINDOW_S)
    if isinstance(window_s, web.Response):
        return window_s
    n = max(1, math.ceil(window_s / bucket_s))
    if n > MAX_BUCKETS:
        return error(422, f"window_s / bucket_s: at most {MAX_BUCKETS} buckets, got {n}", param="window_s")
    service = request.app[SERVICE]
    await service.store.flush()
    now = time.time()
    end = (math.floor(now / bucket_s) + 1) * bucket_s
    start = end - n * bucket_s
    categories: dict[str, dict[str, list[int]]] = {}
    for category, model, b, count in await service.store.decision_histogram(start, bucket_s):
        if 0 <= b < n:
            categories.setdefault(category, {}).setdefault(model, [0] * n)[b] += count
    body = {"now": now, "start": start, "bucket_s": bucket_s, "buckets": n, "models": service.router.models,
            "categories": categories, "events": request.app[EVENTS].since(start)}
    return web.Response(body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> web.Application:
    """Register the dashboard's routes and its event sampler (call after the service's cleanup context)."""
    app[EVENTS] = EventLog()
    app.cleanup_ctx.append(_events_ctx)
    app.router.add_get(DASHBOARD_PATH, dashboard)
    app.router.add_get(TIMELINE_PATH, timeline)
    return app
