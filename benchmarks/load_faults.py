"""The router under load with faulty upstreams (issue 5): success rate, lost feedback, p99, memory.

    python benchmarks/load_faults.py [--rate 1000] [--seconds 60] [--json out/load_faults.json]

Real processes on loopback: ``bandit-router simulate`` (the seed article's four models, answering at
once); after the first third of the warm-up, the model the router uses most fails 30% of calls
(500) and the next one hangs on 10% (no answer for 60 s), and ``bandit-router serve`` in front of
it (SQLite in a temporary directory, a 1 s first-byte timeout, the default retries, fallbacks and
breakers). An open-loop generator (on the router's own upstream client,
``bandit_router/providers/http.py``, the cheapest on hand) starts ``--rate`` requests a second for
``--seconds``: 70% plain completions, 30% streamed, each followed by feedback when it succeeds.
Every loop is bounded in count and time; at most ``--max-in-flight`` requests are outstanding (the
excess is counted as "not sent", never silently dropped).

Reported: client success rate (goal >= 99.9%), feedback acknowledged but missing from the database
after a clean stop (goal 0), latency p50/p99, achieved rate, and the router's resident memory after
warm-up (the last two thirds of it under the same faulty load, so the start has seen its peak of
requests in flight) and at the end (goal: within 10%), and the CPU each process used while measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import yaml
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bandit_router.config import EXAMPLE_CONFIG
from bandit_router.procs import free_port, start, stop
from bandit_router.providers.http import Endpoint, HttpClient, HttpClientError, Timeouts

TIMEOUTS = Timeouts(total=120.0, connect=None)  # one overall timeout, as the generator's aiohttp client had
PROMPTS = ["Write a Python function that reverses a linked list.", "What is the derivative of x**3 + 2x?",
           "Summarise the plot of Hamlet in two sentences.", "Which gas do plants absorb? A) O2 B) CO2 C) N2",
           "Prove that the square root of 2 is irrational.", "Explain TCP slow start briefly."]


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    not_sent: int = 0
    fallbacks: int = 0
    streamed: int = 0
    feedback_acked: list[tuple[str, float]] = field(default_factory=list)
    feedback_failed: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) of a process so far; None: this one."""
    if pid is None:
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one(client: HttpClient, ends: dict[str, Endpoint], rng: random.Random, tally: Tally, stream: bool) -> None:
    body = {"model": "auto", "messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "stream": stream}
    t0 = time.perf_counter()
    try:
        async with client.post(ends["chat"], orjson.dumps(body), TIMEOUTS, stream=stream) as r:
            if r.status != 200:
                tally.error(f"HTTP {r.status}")
                await r.read()
                return
            eid = r.headers["x-router-event-id"]
            if r.headers.get("x-router-fallback"):
                tally.fallbacks += 1
            if stream:
                tally.streamed += 1
                done = errored = False
                async for line in r.lines(1 << 20):
                    if line.startswith(b"data: [DONE]"):
                        done = True
                    elif line.startswith(b'data: {"error"'):
                        errored = True
                if errored or not done:
                    tally.error("stream error event" if errored else "stream without [DONE]")
                    return
            else:
                await r.read()
    except HttpClientError as e:
        tally.error(type(e).__name__)
        return
    tally.latencies.append(time.perf_counter() - t0)
    tally.ok += 1
    score = round(rng.random(), 3)
    try:
        async with client.post(ends["feedback"], orjson.dumps({"event_id": eid, "score": score}), TIMEOUTS) as r:
            await r.read()
            if r.status == 200:
                tally.feedback_acked.append((eid, score))
            else:
                tally.feedback_failed += 1
    except HttpClientError:
        tally.feedback_failed += 1


async def drive(url: str, rate: float, seconds: float, max_in_flight: int, seed: int, tally: Tally,
                progress: Progress | None) -> float:
    rng = random.Random(seed)
    json_body = {"Content-Type": "application/json"}
    ends = {"chat": Endpoint.of(url + "/v1/chat/completions", json_body),
            "feedback": Endpoint.of(url + "/v1/feedback", json_body)}
    in_flight: set[asyncio.Task[None]] = set()
    task_id = progress.add_task("load", total=int(rate * seconds)) if progress else None
    client = HttpClient(limit_per_host=max_in_flight)
    try:
        t_start = loop_t = time.perf_counter()
        due = 0
        tick = 0.01
        while loop_t - t_start < seconds:
            target = int((loop_t - t_start) * rate)
            for _ in range(target - due):
                due += 1
                if len(in_flight) >= max_in_flight:
                    tally.not_sent += 1
                    continue
                tally.sent += 1
                t = asyncio.create_task(one(client, ends, rng, tally, stream=rng.random() < 0.3))
                in_flight.add(t)
                t.add_done_callback(in_flight.discard)
            if progress is not None and task_id is not None:
                progress.update(task_id, completed=due)
            await asyncio.sleep(tick)
            loop_t = time.perf_counter()
        elapsed = time.perf_counter() - t_start
        if in_flight:
            await asyncio.wait(in_flight, timeout=120)  # bounded: every request has a 120 s timeout too
    finally:
        await client.close()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="requests started per second")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds at the same rate before measuring, the last two thirds with the faults: fills "
                         "the bounded caches (10k recent decisions) and reaches the faulty load's peak in flight")
    ap.add_argument("--max-in-flight", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-faults", action="store_true", help="no failing or hanging model: the capacity baseline")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sim_port, port = free_port(), free_port()
        sim_url, url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
        sim = start(["simulate", "--port", str(sim_port), "--latency-scale", "0", "--seed", str(args.seed)],
                    sim_url + "/healthz")
        router = None
        try:
            import urllib.request

            cfg = yaml.safe_load(EXAMPLE_CONFIG)
            for m in cfg["models"]:
                m["base_url"] = sim_url + "/v1"
                m["first_byte_timeout_s"] = 1.0
            cfg["bandit"]["seed"] = args.seed
            (tmp / "router.yaml").write_text(yaml.safe_dump(cfg))
            os.environ["BANDIT_ROUTER_ADMIN_TOKEN"] = token
            router = start(["serve", "--config", str(tmp / "router.yaml"), "--port", str(port),
                            "--db", str(tmp / "load.db")], url + "/healthz")
            # warm-up: a third to see which models the router uses most, then the faults go in, and two
            # thirds with them, so memory is measured from a start that has seen the same faulty load
            warm = Tally()
            asyncio.run(drive(url, args.rate, args.warmup / 3, args.max_in_flight, args.seed + 1, warm, None))
            # the faults go to the two models the router uses most, so they are felt (a model it barely
            # uses could fail every call unnoticed): the busiest fails 30%, the next hangs on 10%
            arms_req = urllib.request.Request(url + "/admin/arms", headers={"Authorization": f"Bearer {token}"})
            traffic: dict[str, int] = {}
            for models in json.loads(urllib.request.urlopen(arms_req).read())["categories"].values():
                for name, a in models.items():
                    traffic[name] = traffic.get(name, 0) + a["decisions"]
            busiest = sorted(traffic, key=traffic.__getitem__, reverse=True)
            faults = {} if args.no_faults else {busiest[0]: {"fail_rate": 0.3}, busiest[1]: {"hang_rate": 0.1}}
            for name, change in faults.items():
                req = urllib.request.Request(f"{sim_url}/admin/models/{name}", data=json.dumps(change).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
                urllib.request.urlopen(req).read()
            asyncio.run(drive(url, args.rate, args.warmup * 2 / 3, args.max_in_flight, args.seed + 2, warm, None))
            rss_start = rss_mb(router.pid)
            cpu0 = {"router": cpu_s(router.pid), "simulator": cpu_s(sim.pid), "generator": cpu_s()}
            wall0 = time.perf_counter()
            tally = Tally()
            with Progress(TextColumn("[bold]load"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeRemainingColumn(), transient=True) as progress:
                elapsed = asyncio.run(drive(url, args.rate, args.seconds, args.max_in_flight, args.seed, tally,
                                            progress))
            rss_end = rss_mb(router.pid)
            wall = time.perf_counter() - wall0
            cpu1 = {"router": cpu_s(router.pid), "simulator": cpu_s(sim.pid), "generator": cpu_s()}
            cores = {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0}  # share of one core each, while measured
            try:
                arms = json.loads(urllib.request.urlopen(arms_req).read())
            except Exception as e:  # noqa: BLE001 - report what we can
                arms = {"error": repr(e)}
        finally:
            if router is not None:
                stop(router, timeout=60)
            stop(sim)
        con = sqlite3.connect(tmp / "load.db")
        stored = dict(con.execute("SELECT event_id, quality FROM feedback WHERE source = 'user'"))
        con.close()
    lost = sum(1 for e, q in tally.feedback_acked + warm.feedback_acked if stored.get(e) is None
               or abs(stored[e] - q) > 1e-9)
    lat = sorted(tally.latencies)

    def q(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    result = {
        "rate_asked": args.rate, "seconds": args.seconds, "sent": tally.sent, "not_sent": tally.not_sent,
        "achieved_rps": tally.sent / elapsed, "ok": tally.ok, "failed": tally.failed, "errors": tally.errors,
        "success_rate": tally.ok / max(tally.sent, 1), "fallback_responses": tally.fallbacks,
        "streamed": tally.streamed, "feedback_acked": len(tally.feedback_acked) + len(warm.feedback_acked),
        "feedback_refused": tally.feedback_failed, "feedback_lost": lost,
        "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": 1000 * lat[-1] if lat else float("nan"),
        "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_growth": rss_end / rss_start - 1,
        "breakers": {m: h for m, h in (arms.get("health") or {}).items()} if isinstance(arms, dict) else {},
        "faults": faults, "warmup_traffic": traffic, "cpu_cores": cores,
    }
    print(f"faults: {faults} (the two busiest models after warm-up: {traffic})")
    health = result["breakers"]
    print("router's view: " + "; ".join(f"{m} {h['calls']} calls, {h['failures']} failed, breaker opened "
                                        f"{h['times_opened']}x" for m, h in health.items()))
    print(f"{tally.sent} requests in {elapsed:.1f} s ({result['achieved_rps']:.0f}/s asked {args.rate:g}/s; "
          f"{tally.not_sent} not sent: in-flight cap)")
    print(f"success {100 * result['success_rate']:.3f}% (goal >= 99.9%)  errors {tally.errors}  "
          f"fallback answers {tally.fallbacks}")
    print(f"feedback acknowledged {result['feedback_acked']} (warm-up included), refused {tally.feedback_failed}, "
          f"lost {lost} (goal 0)")
    print(f"latency p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  "
          f"max {result['max_ms']:.1f} ms")
    print(f"router RSS {rss_start:.1f} MB after warm-up -> {rss_end:.1f} MB at the end "
          f"({100 * result['rss_growth']:+.1f}%, goal within 10%)")
    print("CPU while measured, in cores (the machine has " + str(os.cpu_count()) + "): "
          + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
