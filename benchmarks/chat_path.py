"""Where a routed chat request's time goes, stage by stage, in process (no HTTP, no upstream).

    python benchmarks/chat_path.py [--requests 12000] [--models 1]

The service is built as ``serve`` builds it (SQLite in a temporary directory, its writer thread),
without the metrics hooks, with providers that answer from memory, and each step of ``POST /v1/chat/completions`` for a
short routed request runs in turn: the body parsed, validated and its hints read, the locality
check, the decision (features, category, Thompson draw, tracking), the cache key, the call
(retries bookkeeping, the answer parsed, its cost), the response built, and the books the answer
leaves (the decision row queued, the output and latency estimates, the graders; ``books.py`` runs
them while the next request waits on its upstream). Reported: mean µs per request of each step after a warm-up.
These are warm-cache figures: the same steps cost about twice as much inside the busy server.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bandit_router.config import parse_config
from bandit_router.providers.base import Completion, Usage
from bandit_router.server import handlers
from bandit_router.server.app import build_router
from bandit_router.server.requests import read_chat
from bandit_router.service import Service
from bandit_router.storage import open_store

BODY = b'{"model": "auto", "messages": [{"role": "user", "content": "Write a Python function that adds"}]}'
ANSWER = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}})


class MemoryProvider:
    """Answers at once, from memory: the upstream call costs only parsing its answer."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def complete(self, body: dict[str, Any]) -> Completion:
        out = orjson.loads(ANSWER)
        out["model"] = self.name
        return Completion(out, Usage(20, 2, 0))


async def run(requests: int, models: int) -> dict[str, float]:
    names = [f"m{i}" for i in range(models)]
    cfg = parse_config({"models": [{"name": n, "base_url": "http://127.0.0.1:1/v1", "input_price": 1.0 + i,
                                    "output_price": 2.0 + i} for i, n in enumerate(names)], "bandit": {"seed": 0}})
    with tempfile.TemporaryDirectory() as d:
        store = open_store(f"{d}/chat_path.db")
        await store.start()
        service = Service(cfg, build_router(cfg), store, {n: MemoryProvider(n) for n in names})
        http_request = make_mocked_request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"})
        spent: dict[str, int] = {}
        warmup = requests // 6
        clock = time.thread_time_ns  # this thread's CPU: not the waits for the GIL while the writer holds it

        def step(name: str, t0: int) -> int:
            t1 = clock()
            spent[name] = spent.get(name, 0) + t1 - t0
            return t1

        for i in range(requests + warmup):
            if i == warmup:
                spent.clear()
            t = clock()
            body = orjson.loads(BODY)
            t = step("parse the body", t)
            _, hints = read_chat(http_request, body)
            t = step("validate, hints", t)
            service.restrict(body, hints)
            t = step("locality check", t)
            d = service.decide(body["messages"], hints, record=False)
            t = step("decide", t)
            service.cache_key(d, body, hints.tenant)
            t = step("cache key", t)
            done, cost = await service.complete(d, body, None, failed=[])
            t = step("call (answer parsed, cost)", t)
            out = done.body
            out["router"] = {"event_id": d.event_id, "category": d.category, "model": d.model, "cost_usd": cost}
            web.Response(body=orjson.dumps(out), content_type="application/json",
                         headers=handlers._headers(d, [], hints))
            t = step("build the response", t)
            service.books.run()  # the books, which wait until the loop next waits on an upstream (books.py)
            step("the books, after the answer", t)
        service.books.run()
        await store.close()
    return {k: v / requests / 1000 for k, v in spent.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=12000)
    ap.add_argument("--models", type=int, default=1, help="configured models (overhead.py uses 1)")
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None
    coro = run(args.requests, args.models)
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    for name, us in result.items():
        print(f"{name:24s} {us:7.1f} µs")
    print(f"{'total':24s} {sum(result.values()):7.1f} µs per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
