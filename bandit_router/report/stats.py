"""``bandit-router stats``: a running router's arm table (``GET /admin/arms``) in the terminal."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

ADMIN_TOKEN_ENV = "BANDIT_ROUTER_ADMIN_TOKEN"  # as bandit_router.server.auth (not imported: no aiohttp needed)


class StatsError(ValueError):
    """The router could not be asked (unreachable, refused, or not a router)."""


def fetch_arms(url: str, token: str | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
    """``GET {url}/admin/arms`` with ``Authorization: Bearer <token>`` (``token``, else the environment
    variable BANDIT_ROUTER_ADMIN_TOKEN, else none: a ``--admin-local-only`` router takes loopback calls)."""
    token = token or os.environ.get(ADMIN_TOKEN_ENV) or None
    base = url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    req = urllib.request.Request(base + "/admin/arms", headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (an operator-given URL)
            body = r.read()
    except urllib.error.HTTPError as e:
        msg = _message(e.read())
        if e.code in (401, 403):
            hint = (f"pass --token or set {ADMIN_TOKEN_ENV} to the router's admin token" if e.code == 401 or not token
                    else "check the token, or whether the router's admin API is enabled")
            raise StatsError(f"stats: {base} refused the admin request (HTTP {e.code}: {msg}); {hint}") from None
        raise StatsError(f"stats: {base}/admin/arms answered HTTP {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StatsError(f"stats: cannot reach the router at {base} ({reason}); is `bandit-router serve` "
                         f"running there? (--url)") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise StatsError(f"stats: {base}/admin/arms did not answer JSON; is this a bandit-router?") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), dict):
        raise StatsError(f"stats: {base}/admin/arms answered without 'categories'; is this a bandit-router?")
    return data


def _message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error")
        return str(err.get("message") if isinstance(err, dict) else err)
    except (ValueError, AttributeError):
        return raw.decode("utf-8", "replace")[:200] or "no body"


def _f(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def render(data: Mapping[str, Any], *, category: str | None = None, console: Any = None) -> int:
    """Print one rich table per category (only ``category`` when given); returns the tables printed."""
    from rich.console import Console
    from rich.table import Table

    c = console or Console()
    cats = data["categories"]
    if category is not None and category not in cats:
        raise StatsError(f"stats: no category {category!r}; the router has: {', '.join(sorted(cats))}")
    health = data.get("health") or {}
    printed = 0
    for name, rows in cats.items():
        if category is not None and name != category:
            continue
        t = Table(title=f"{name}", title_justify="left")
        for col in ("model", "decisions", "feedback", "quality mean ± sd", "mean cost", "traffic share", "enabled",
                    "breaker"):
            t.add_column(col, justify="left" if col in ("model", "enabled", "breaker") else "right")
        order = sorted(rows.items(), key=lambda kv: (-(kv[1].get("traffic_share") or 0.0), kv[0]))
        for model, r in order:
            h = health.get(model) or {}
            breaker = h.get("breaker")
            style = None if r.get("enabled", True) and (r.get("serves", True)) else "dim"
            t.add_row(model, str(r.get("decisions", 0)), str(r.get("feedback", 0)),
                      f"{_f(r.get('quality_mean'), '.3f')} ± {_f(r.get('quality_sd'), '.3f')}",
                      "–" if r.get("mean_cost_usd") is None else f"${r['mean_cost_usd']:.6f}",
                      f"{(r.get('traffic_share') or 0.0):.1%}",
                      ("yes" if r.get("enabled", True) else "no") + ("" if r.get("serves", True) else " (not serving)"),
                      "–" if breaker is None else str(breaker), style=style)
        c.print(t)
        printed += 1
    storage = data.get("storage")
    if storage and category is None:
        c.print(f"storage: queue {storage.get('queue_depth')}, failed writes {storage.get('failed_writes')}, "
                f"unrecorded decisions {storage.get('unrecorded_decisions')}")
    return printed
