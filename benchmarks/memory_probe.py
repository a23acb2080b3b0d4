"""Does the router keep Python objects per request? A tracemalloc probe, in process.

    python benchmarks/memory_probe.py [--requests 4000] [--warmup 1500]

The router (the example config, fronting the simulator on loopback) serves ``--warmup`` requests
with feedback, with its cache of recent decisions shrunk to 300 so it is full; then tracemalloc
compares the heap before and after ``--requests`` more (70% plain, 30% streamed, each followed by
feedback). Printed: the KiB added on the server side (the client's own objects left out) and the
largest sources. With ``--faults`` every model fails 30% of its calls and hangs on 10%, so the
retries, fallbacks, breakers and timeouts run too.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import tempfile
import tracemalloc
from pathlib import Path

import aiohttp
import yaml
from aiohttp.test_utils import TestServer

from bandit_router.config import EXAMPLE_CONFIG, parse_config
from bandit_router.server import make_app
from bandit_router.server.keys import SERVICE
from bandit_router.simulator import SIMULATOR_KEY, AdminUpdate
from bandit_router.simulator import make_app as make_simulator

PROMPTS = ["Write a Python function that reverses a linked list.", "What is the derivative of x**3 + 2x?",
           "Summarise the plot of Hamlet in two sentences.", "Prove that the square root of 2 is irrational."]


async def send(client: aiohttp.ClientSession, n: int, rng: random.Random) -> None:
    async def one() -> None:
        body = {"model": "auto", "stream": rng.random() < 0.3,
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
        async with client.post("/v1/chat/completions", json=body) as r:
            await r.read()
            eid = r.headers.get("X-Router-Event-Id")
        if r.status == 200:
            async with client.post("/v1/feedback", json={"event_id": eid, "score": rng.random()}) as f:
                await f.read()
    for _ in range(0, n, 50):
        await asyncio.gather(*(one() for _ in range(50)))


async def main(args: argparse.Namespace) -> None:
    simulator = make_simulator(seed=1)
    sim = TestServer(simulator)
    await sim.start_server()
    cfg = yaml.safe_load(EXAMPLE_CONFIG)
    for m in cfg["models"]:
        m["base_url"] = f"http://127.0.0.1:{sim.port}/v1"
        if args.faults:
            m["first_byte_timeout_s"] = 0.2  # cuts the hangs (and the slowest simulated answers)
    if args.faults:  # every model fails 30% of calls and hangs on 10% (past the first-byte timeout)
        for name in cfg["models"]:
            simulator[SIMULATOR_KEY].update(name["name"], AdminUpdate(fail_rate=0.3, hang_rate=0.1, hang_s=0.5))
    app = make_app(parse_config(cfg), db_path=Path(tempfile.mkdtemp()) / "probe.db")
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{server.port}") as client:
            app[SERVICE].cache_size = 300
            rng = random.Random(0)
            await send(client, args.warmup, rng)
            gc.collect()
            tracemalloc.start(25)
            before = tracemalloc.take_snapshot()
            await send(client, args.requests, rng)
            gc.collect()
            after = tracemalloc.take_snapshot()
    finally:
        await server.close()
        await sim.close()
    stats = [s for s in after.compare_to(before, "traceback")
             if "benchmarks/memory_probe.py" not in "".join(s.traceback.format())]
    added = sum(s.size_diff for s in stats if s.size_diff > 0)
    print(f"server side, after {args.requests} more requests with feedback: {added / 1024:.0f} KiB added")
    for s in sorted(stats, key=lambda s: -s.size_diff)[:5]:
        print(f"  {s.size_diff / 1024:7.0f} KiB  {s.count_diff:6d} blocks  {s.traceback[-1]}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--warmup", type=int, default=1500)
    ap.add_argument("--faults", action="store_true",
                    help="every model fails 30%% of calls (500) and hangs on 10%% (cut by a 0.2 s first-byte timeout)")
    asyncio.run(main(ap.parse_args()))
