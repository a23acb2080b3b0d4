"""Crash safety with real processes: SIGKILL under load loses no acknowledged feedback and the
restored posteriors equal a rebuild from the logged feedback; SIGTERM drains in-flight requests."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml

from bandit_router.config import EXAMPLE_CONFIG, parse_config
from bandit_router.procs import free_port, start, stop
from bandit_router.router import Decision
from bandit_router.server.app import build_router

PROMPTS = ["Write a Python function that reverses a linked list.", "What is the derivative of x**3 + 2x?",
           "Summarise the plot of Hamlet in two sentences.", "Click the submit button in the browser form."]


@pytest.fixture(scope="module")
def simulator():
    port = free_port()
    proc = start(["simulate", "--port", str(port), "--latency-scale", "0", "--seed", "5"],
                 f"http://127.0.0.1:{port}/healthz")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def _config(tmp: Path, sim_url: str, **extra: dict) -> Path:
    cfg = yaml.safe_load(EXAMPLE_CONFIG)
    for m in cfg["models"]:
        m["base_url"] = sim_url + "/v1"
    cfg["bandit"]["seed"] = 3
    cfg.update(extra)
    path = tmp / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _serve(config: Path, db: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return start(["serve", "--config", str(config), "--port", str(port), "--db", str(db)], url + "/healthz"), url


async def _traffic(url: str, acked: list[tuple[str, float]], stop_at: float, seed: int) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < stop_at:
            try:
                body = {"model": "auto", "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    if r.status != 200:
                        continue
                    eid = r.headers["X-Router-Event-Id"]
                score = round(rng.random(), 3)
                async with s.post(url + "/v1/feedback", json={"event_id": eid, "score": score}) as r:
                    if r.status == 200:
                        acked.append((eid, score))  # acknowledged: it must survive anything
            except (TimeoutError, aiohttp.ClientError):
                return  # the server is gone


def _rebuild(config: Path, db: Path) -> dict:
    """Replay the logged feedback, in commit order, through a fresh router."""
    router = build_router(parse_config(yaml.safe_load(config.read_text())))
    con = sqlite3.connect(db)
    rows = con.execute("SELECT f.event_id, f.quality, d.category, d.model, d.x, d.prompt_tokens, d.created "
                       "FROM feedback f JOIN decisions d USING (event_id) ORDER BY f.rowid").fetchall()
    for eid, q, cat, model, x, tokens, created in rows:
        d = Decision(cat, model, router.index[model], np.frombuffer(x).copy(), tokens, 0.0, 0.0,
                     np.empty(0), np.empty(0), eid, created)
        router.learn(d, q)
    return _posteriors(router)


def _posteriors(router) -> dict:  # type: ignore[no-untyped-def]
    keep = ("observations", "effective_observations", "quality_mean", "quality_sd")
    return {c: {m: {k: a[k] for k in keep} for m, a in arms.items()} for c, arms in router.arm_stats().items()}


def _restored(config: Path, db: Path) -> dict:
    router = build_router(parse_config(yaml.safe_load(config.read_text())))
    con = sqlite3.connect(db)
    router.import_state({k: bytes(v) for k, v in con.execute("SELECT key, value FROM state")})
    return _posteriors(router)


def test_sigkill_loses_no_acknowledged_feedback(simulator, tmp_path):
    config, db = _config(tmp_path, simulator), tmp_path / "crash.db"
    proc, url = _serve(config, db)
    acked: list[tuple[str, float]] = []

    async def load_then_kill() -> None:
        tasks = [asyncio.create_task(_traffic(url, acked, time.monotonic() + 30, seed)) for seed in range(8)]
        while len(acked) < 300:  # bounded: the traffic stops by itself after 30 s
            await asyncio.sleep(0.05)
            assert not all(t.done() for t in tasks), "traffic stopped before the kill"
        os.kill(proc.pid, signal.SIGKILL)  # mid-flight: requests and feedback in every state
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    try:
        asyncio.run(load_then_kill())
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(db)
    stored = dict(con.execute("SELECT event_id, quality FROM feedback WHERE source = 'user'"))
    missing = [(e, q) for e, q in acked if stored.get(e) != pytest.approx(q)]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged feedbacks lost, e.g. {missing[:3]}"
    con.close()

    rebuilt = _rebuild(config, db)
    _assert_same(_restored(config, db), rebuilt)
    proc, url = _serve(config, db)  # the restarted server restores those posteriors ...
    stop(proc)  # ... and writes them back at its clean shutdown: still equal to the rebuild
    _assert_same(_restored(config, db), rebuilt)
    assert sum(a["observations"] for arms in rebuilt.values() for a in arms.values()) >= len(acked)


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() >= {c for c, arms in want.items() if any(a["observations"] for a in arms.values())}
    for cat, arms in want.items():
        for model, stats in arms.items():
            for k, v in stats.items():
                assert got[cat][model][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (cat, model, k)


def test_sigterm_drains_in_flight_requests_and_flushes(simulator, tmp_path):
    config, db = _config(tmp_path, simulator), tmp_path / "drain.db"
    proc, url = _serve(config, db)

    async def slow_requests_then_term() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as s:
            await s.post(simulator + "/admin/settings", json={"latency_scale": 5})  # about a second per answer
            try:
                async def one(i: int) -> tuple[int, str]:
                    body = {"model": "auto", "messages": [{"role": "user", "content": PROMPTS[i % 4]}]}
                    async with s.post(url + "/v1/chat/completions", json=body) as r:
                        await r.read()
                        return r.status, r.headers.get("X-Router-Event-Id", "")

                tasks = [asyncio.create_task(one(i)) for i in range(6)]
                await asyncio.sleep(0.2)  # all six are in flight upstream
                proc.send_signal(signal.SIGTERM)
                return await asyncio.wait_for(asyncio.gather(*tasks), 30)
            finally:
                await s.post(simulator + "/admin/settings", json={"latency_scale": 0})

    try:
        t0 = time.monotonic()
        done = asyncio.run(slow_requests_then_term())
        t1 = time.monotonic()
        assert proc.wait(30) == 0
        print(f"answered {t1 - t0:.2f} s, exited {time.monotonic() - t0:.2f} s after the requests began")
    finally:
        stop(proc)
    assert [status for status, _ in done] == [200] * 6
    con = sqlite3.connect(db)
    logged = {e: s for e, s in con.execute("SELECT event_id, status FROM decisions")}
    assert all(logged.get(eid) == "completed" for _, eid in done), logged
