"""The router's upstream HTTP client against aiohttp's ClientSession, side by side in one run.

    python benchmarks/upstream_client.py [--requests 20000] [--connections 1 50] [--rounds 3]

One upstream that answers at once (the same minimal aiohttp server as ``overhead.py``) runs in its
own process. This process POSTs the same small ChatCompletion request to it with each client in
turn, ``--connections`` calls in flight at a time, and reports the CPU time this process spent per
call (the client's cost: building the request, the socket calls, parsing the answer) and the calls
a second. Rounds alternate between the clients; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import aiohttp
import orjson

from bandit_router.procs import free_port, stop, wait_http
from bandit_router.providers.http import Endpoint, HttpClient, Timeouts

sys.path.insert(0, str(Path(__file__).parent))
from overhead import UPSTREAM  # noqa: E402

BODY = orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": "Write a Python function that adds"}]})


async def measure(call: Callable[[], Awaitable[None]], requests: int, connections: int) -> tuple[float, float]:
    """(CPU µs per call, calls per second) for ``requests`` calls, ``connections`` at a time."""

    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    await asyncio.gather(*(worker(50) for _ in range(connections)))  # warm up: connections open
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(requests // connections) for _ in range(connections)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done = requests // connections * connections
    return 1e6 * cpu / done, done / wall


async def run(url: str, requests: int, connections: list[int], rounds: int) -> dict[str, dict[int, list[float]]]:
    timeouts = Timeouts(total=120.0, connect=10.0)
    ep = Endpoint.of(url, {"Content-Type": "application/json"})
    ours = HttpClient()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    aio_timeout = aiohttp.ClientTimeout(total=120.0, sock_connect=10.0)

    async def with_ours() -> None:
        async with ours.post(ep, BODY, timeouts) as r:
            orjson.loads(await r.read())

    async def with_aiohttp() -> None:
        async with session.post(url, data=BODY, headers={"Content-Type": "application/json"},
                                timeout=aio_timeout) as r:
            orjson.loads(await r.read())

    out: dict[str, dict[int, list[float]]] = {"bandit_router.providers.http": {}, "aiohttp.ClientSession": {}}
    rates: dict[str, dict[int, list[float]]] = {k: {} for k in out}
    clients = (("aiohttp.ClientSession", with_aiohttp), ("bandit_router.providers.http", with_ours))
    try:
        for i in range(rounds):
            for c in connections:
                for name, call in clients if i % 2 == 0 else clients[::-1]:  # alternate which goes first
                    cpu, rate = await measure(call, requests, c)
                    out[name].setdefault(c, []).append(cpu)
                    rates[name].setdefault(c, []).append(rate)
    finally:
        await session.close()
        await ours.close()
    print("CPU µs per call in this process (median of rounds), and calls/s")
    for c in connections:
        row = [f"{name}: {statistics.median(out[name][c]):6.1f} µs, {statistics.median(rates[name][c]):7.0f}/s"
               for name in out]
        ratio = statistics.median(out["aiohttp.ClientSession"][c]) / statistics.median(
            out["bandit_router.providers.http"][c])
        print(f"{c:>3} connections | " + " | ".join(row) + f" | aiohttp / ours: {ratio:.1f}x")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    with TemporaryDirectory() as d:
        port = free_port()
        (Path(d) / "upstream.py").write_text(UPSTREAM)
        upstream = subprocess.Popen([sys.executable, str(Path(d) / "upstream.py"), str(port)])
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", upstream)
            coro = run(f"http://127.0.0.1:{port}/v1/chat/completions", args.requests, args.connections, args.rounds)
            uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
        finally:
            stop(upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
