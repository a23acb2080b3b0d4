"""The admin dashboard: its JSON (GET /admin/timeline), its page, and the page in headless Chromium.

The browser tests drive Debian's ``chromium`` (``/usr/bin/chromium``) through Playwright's Python
package (its own browser download is never used). ``.ci/run`` installs chromium when it is missing;
only if that install failed (it then sets ``DASHBOARD_BROWSER_SKIP`` to the reason) do they skip.
A screenshot of the live dashboard is kept under pytest's tmp dir and copied to ``out/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from bandit_router.config import EXAMPLE_CONFIG, parse_config
from bandit_router.reliability import CLOSED, HALF_OPEN, OPEN
from bandit_router.server import dashboard as dash
from bandit_router.server import make_app
from bandit_router.server.keys import SERVICE
from bandit_router.simulator import builtin_profile
from bandit_router.simulator import make_app as make_simulator

TOKEN = "test-dashboard-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parents[1]
MODELS = ["gpt-5.4", "claude-opus-4.6", "gemini-3.1-pro", "glm-5"]  # EXAMPLE_CONFIG's
CODING = [{"role": "user", "content": "Write a Python function that reverses a linked list."}]


@pytest_asyncio.fixture
async def stack(aiohttp_server, aiohttp_client, tmp_path, monkeypatch):
    """The simulator and the router on real loopback sockets (the browser needs a URL)."""
    monkeypatch.delenv("BANDIT_ROUTER_ADMIN_TOKEN", raising=False)
    sim = await aiohttp_server(make_simulator(builtin_profile().model_copy(update={"latency_scale": 0.0}), seed=3))
    cfg: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG)
    for m in cfg["models"]:
        m["base_url"] = f"http://127.0.0.1:{sim.port}/v1"
    cfg["bandit"]["seed"] = 7
    cfg["admin"] = {"token": TOKEN}
    app = make_app(parse_config(cfg), db_path=tmp_path / "dashboard.db")
    server = await aiohttp_server(app)
    client = await aiohttp_client(server)
    return client, app


async def _decide(client, n: int, category: str = "coding", *, feedback: float | None = None) -> None:
    for _ in range(n):
        r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": CODING},
                              headers={"X-Router-Category": category})
        assert r.status == 200, await r.text()
        if feedback is not None:
            eid = r.headers["X-Router-Event-Id"]
            assert (await client.post("/v1/feedback", json={"event_id": eid, "score": feedback})).status == 200


# -- the JSON and the page, without a browser ---------------------------------------------------------

@pytest.mark.asyncio
async def test_timeline_counts_decisions_per_bucket(stack):
    client, app = stack
    await _decide(client, 4, "coding")
    await _decide(client, 2, "math")
    r = await client.get("/admin/timeline?bucket_s=60&window_s=600", headers=ADMIN)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    body = await r.json()
    assert body["buckets"] == 10 and body["bucket_s"] == 60 and body["models"] == MODELS
    assert body["start"] % 60 == 0 and body["start"] <= body["now"] < body["start"] + 600
    cats = body["categories"]
    assert set(cats) == {"coding", "math"}
    assert sum(map(sum, cats["coding"].values())) == 4 and sum(map(sum, cats["math"].values())) == 2
    assert all(len(v) == 10 and set(MODELS) >= {m} for c in cats.values() for m, v in c.items())
    last = max(i for v in cats["coding"].values() for i, k in enumerate(v) if k)
    assert last == 9  # the decisions just made are in the bucket holding now
    assert body["events"] == []
    # the defaults: an hour in minutes
    assert (await (await client.get("/admin/timeline", headers=ADMIN)).json())["buckets"] == 60


@pytest.mark.asyncio
async def test_timeline_rejects_bad_windows_and_needs_the_token(stack):
    client, _ = stack
    for query, param in (("bucket_s=0", "bucket_s"), ("bucket_s=1.5", "bucket_s"), ("bucket_s=nan", "bucket_s"),
                         ("window_s=x", "window_s"), ("window_s=604801", "window_s"),
                         ("bucket_s=1&window_s=86400", "window_s")):
        r = await client.get(f"/admin/timeline?{query}", headers=ADMIN)
        assert r.status == 422, query
        err = (await r.json())["error"]
        assert err["param"] == param and param in err["message"], (query, err)
    for path in ("/admin/timeline",):  # the page itself is code only: it loads from a plain link
        r = await client.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_admin_token"


@pytest.mark.asyncio
async def test_page_is_self_contained_and_locked_down(stack):
    client, _ = stack
    r = await client.get("/admin/dashboard", headers=ADMIN)
    assert r.status == 200 and r.content_type == "text/html"
    html = await r.text()
    csp = r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    # exactly one inline script and one style, each admitted by its hash; nothing loaded from elsewhere
    (script,) = re.findall(r"<script>(.*?)</script>", html, re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", html, re.S)
    for text in (script, style):
        assert "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'" in csp
    assert not re.search(r"\bsrc=|<link rel=\"stylesheet|https?://(?!www\.w3\.org/2000/svg)", html)
    assert "innerHTML" not in script and "eval(" not in script
    # code only: no data and no secret in the page
    assert TOKEN not in html and not any(m in html for m in MODELS)


def test_event_log_reports_breaker_changes_and_drift():
    log = dash.EventLog(maxlen=10)

    def health(state: str, opened: int, err: str | None = None) -> dict[str, dict[str, object]]:
        return {"a": {"breaker": state, "times_opened": opened, "last_error": err},
                "b": {"breaker": CLOSED, "times_opened": 0, "last_error": None}}

    # the first sample is the baseline: restored counters are not events
    assert log.sample(health(CLOSED, 2, "old"), {("coding", "a"): 3}, now=100) == []
    assert log.sample(health(CLOSED, 2, "old"), {("coding", "a"): 3}, now=101) == []
    (e,) = log.sample(health(OPEN, 3, "upstream 503"), {("coding", "a"): 3}, now=102)
    assert (e.kind, e.model, e.category) == ("breaker", "a", None)
    assert "closed → open" in e.message and "upstream 503" in e.message
    (e,) = log.sample(health(HALF_OPEN, 3, "upstream 503"), {("coding", "a"): 3}, now=103)
    assert "open → half_open" in e.message
    # opened and recovered between two samples: still reported, by the counter
    (e,) = log.sample(health(CLOSED, 4, "timeout"), {("coding", "a"): 3}, now=104)
    assert "half_open → closed" in e.message and "opened 1×" in e.message and "timeout" in e.message
    (e,) = log.sample(health(CLOSED, 4, "timeout"), {("coding", "a"): 4, ("math", "b"): 0}, now=105)
    assert (e.kind, e.model, e.category) == ("drift", "a", "coding") and "4 in all" in e.message
    assert [x["t"] for x in log.since(103)] == [105, 104, 103]


@pytest.mark.asyncio
async def test_breaker_and_drift_events_reach_the_timeline(stack):
    client, app = stack
    service = app[SERVICE]
    await _decide(client, 2)
    i = service.router.index["glm-5"]
    for _ in range(service.breakers.threshold):
        service.breakers.failure(i, time.time(), "upstream 503: simulated outage", 0.01)
    cats = service.router._cats  # the change detector's counter, as a detected change leaves it
    cats["coding"].arms._changed(service.router.index["gpt-5.4"])
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5 * dash.SAMPLE_S + 2
    while len(events) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        events = (await (await client.get("/admin/timeline", headers=ADMIN)).json())["events"]
    kinds = {(e["kind"], e["model"], e["category"]) for e in events}
    assert kinds == {("breaker", "glm-5", None), ("drift", "gpt-5.4", "coding")}, events
    breaker = next(e for e in events if e["kind"] == "breaker")
    assert "closed → open" in breaker["message"] and "simulated outage" in breaker["message"]


# -- in headless Chromium -----------------------------------------------------------------------------

def _chromium() -> str:
    """Debian's chromium, or a skip with the reason .ci/run gave, or a failure in CI when nothing explains it."""
    path = os.environ.get("DASHBOARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    reason = os.environ.get("DASHBOARD_BROWSER_SKIP")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        path, reason = None, reason or "the playwright package is not installed (pip install -e '.[test]')"
    if path:
        return path
    if reason:
        pytest.skip(f"dashboard browser test skipped: {reason}")
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI and .ci/run reported no failed install (DASHBOARD_BROWSER_SKIP)")
    pytest.skip("dashboard browser test skipped: no chromium here (apt-get install -y chromium, as .ci/run does)")


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest_asyncio.fixture
async def browser():
    executable = _chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=30_000)
        # the browser driven is that executable (Playwright's own download is never used)
        version = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30).stdout
        assert b.version in version, (b.version, version)
        try:
            yield b
        finally:
            await b.close()


async def _open(browser, base: str, fragment: str):
    """A page at /admin/dashboard. The navigation itself carries the bearer header (the auth middleware
    asks it of every /admin/* path); the page's own fetches must bring the token themselves."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    fetches: list[tuple[str, str | None]] = []
    page.on("request", lambda r: fetches.append((r.url, r.headers.get("authorization")))
            if r.resource_type == "fetch" else None)

    async def with_token(route, request):
        await route.continue_(headers={**request.headers, **ADMIN})

    await page.route(re.compile(r".*/admin/dashboard$"), with_token)
    await page.goto(f"{base}/admin/dashboard{fragment}")
    return page, problems, fetches


def expect(locator):  # imported here: without playwright the browser tests skip, the others run
    from playwright.async_api import expect as pw_expect

    return pw_expect(locator)


async def _total(page, category: str) -> int:
    return int(await page.get_attribute(f'section[data-category="{category}"] .summary', "data-total"))


@pytest.mark.asyncio
async def test_dashboard_in_chromium_shows_the_router_and_updates(stack, browser, tmp_path):
    client, app = stack
    await _decide(client, 6, "coding", feedback=0.8)
    await _decide(client, 3, "math")
    base = str(client.make_url("")).rstrip("/")
    page, problems, fetches = await _open(browser, base, f"#token={TOKEN}&refresh=1")
    await page.wait_for_selector('section[data-category="coding"] tbody tr', timeout=10_000)

    # the token left the address bar and history at once; the fetches send it as a header
    assert "token" not in page.url and page.url.endswith("#refresh=1")
    assert await page.evaluate("sessionStorage.getItem('bandit-router-admin-token')") == TOKEN
    assert {u.split("?")[0].removeprefix(base) for u, _ in fetches} >= {"/admin/arms", "/admin/timeline"}
    assert all(auth == f"Bearer {TOKEN}" and TOKEN not in url for url, auth in fetches)

    # the live router's models, per category and in the health table; the charts drew the decisions
    coding = page.locator('section[data-category="coding"]')
    for m in MODELS:
        assert await coding.locator(f'tr[data-model="{m}"]').count() == 1
        assert await page.locator(f'#health tr[data-model="{m}"]').count() == 1
    assert await _total(page, "coding") == 6 and await _total(page, "math") == 3
    assert await coding.locator("svg.chart rect").count() >= 2  # share columns and the volume strip
    assert await coding.locator('td[data-k="feedback"]').all_inner_texts() != ["0"] * 4
    quality = await coding.locator('td[data-k="quality"]').first.inner_text()
    assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]", quality), quality
    assert any(t.startswith("$") for t in await coding.locator('td[data-k="cost"]').all_inner_texts())
    before = await coding.locator('td[data-k="decisions"]').all_inner_texts()

    # more decisions: the page refreshes by itself
    await _decide(client, 5, "coding")
    await expect(coding.locator(".summary")).to_have_attribute("data-total", "11", timeout=10_000)
    after = await coding.locator('td[data-k="decisions"]').all_inner_texts()
    assert sum(map(int, after)) == sum(map(int, before)) + 5
    assert "in this window" in await coding.locator(".summary").inner_text()

    shot = tmp_path / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    (ROOT / "out").mkdir(exist_ok=True)
    shutil.copyfile(shot, ROOT / "out" / "dashboard.png")
    assert not problems, problems  # no script error and no Content-Security-Policy violation


@pytest.mark.asyncio
async def test_dashboard_in_chromium_asks_for_the_token_and_signs_out(stack, browser):
    client, _ = stack
    await _decide(client, 2)
    base = str(client.make_url("")).rstrip("/")
    page, problems, _ = await _open(browser, base, "")
    await page.wait_for_selector("#login:not([hidden])", timeout=10_000)
    assert await page.is_hidden("#main")
    await page.fill("#token", "not-the-admin-token-0123")
    await page.click("#login button[type=submit]")  # the handler stores the token and asks, synchronously
    # the page said "not accepted" already before this token (it had none): wait for this answer
    # (polled with evaluate: the page's Content-Security-Policy refuses wait_for_function's eval)
    signed_out = "[sessionStorage.getItem('bandit-router-admin-token'), document.getElementById('status').textContent]"
    for _ in range(200):
        if await page.evaluate(signed_out) == [None, "signed out"]:
            break
        await asyncio.sleep(0.05)
    assert await page.evaluate(signed_out) == [None, "signed out"]  # the token was refused and forgotten
    await expect(page.locator("#login-message")).to_contain_text("not accepted", timeout=10_000)
    await page.fill("#token", TOKEN)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector('#health tr[data-model="glm-5"]', timeout=10_000)
    assert await page.is_hidden("#login")
    await page.click("#signout")
    await page.wait_for_selector("#login:not([hidden])")
    assert await page.evaluate("sessionStorage.getItem('bandit-router-admin-token')") is None
    # 401s are expected here (the wrong token); anything else is not
    assert all("401" in p for p in problems), problems
