"""The router relaying streamed answers: streams/s and the router's CPU per stream and per chunk.

    python benchmarks/stream_relay.py [--seconds 10] [--connections 1 20] [--json out/stream_relay.json]

``bandit-router simulate --latency-scale 0`` (its streams: OpenAI chunks of about 16 characters,
each in its own write, with no wait between them) in one process, the router in front of it with
one model (``serve``, SQLite in a temporary directory), and ``wrk`` (Debian package ``wrk``)
asking for ``stream: true`` completions of one prompt at each number of connections. Reported:
streams/s, p50/p99 of the whole stream, the chunks in one stream (counted through the router), and
the router's CPU per stream (all threads, and the event loop's thread alone) and per chunk.
To compare two versions of the router, run this command alternately from each (e.g. with
``PYTHONPATH`` pointing at a worktree): this machine's speed drifts from minute to minute.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import yaml
from overhead import wrk  # benchmarks/overhead.py: one wrk run, with a process's CPU per request

from bandit_router.procs import free_port, start, stop

PROMPT = "Write a Python function that adds"  # (the prompt overhead.py's wrk script sends)


def chunks_per_stream(url: str) -> int:
    body = json.dumps({"model": "auto", "stream": True, "messages": [{"role": "user", "content": PROMPT}]}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        events = [e for e in r.read().split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]", events[-1]
    return len(events) - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sim_port, port = free_port(), free_port()
        sim = start(["simulate", "--port", str(sim_port), "--latency-scale", "0"],
                    f"http://127.0.0.1:{sim_port}/healthz")
        try:
            config = {"models": [{"name": "glm-5", "base_url": f"http://127.0.0.1:{sim_port}/v1", "input_price": 1.0,
                                  "output_price": 3.2}], "bandit": {"seed": 0}}
            (tmp / "router.yaml").write_text(yaml.safe_dump(config))
            url = f"http://127.0.0.1:{port}"
            router = start(["serve", "--config", str(tmp / "router.yaml"), "--port", str(port), "--db",
                            str(tmp / "bench.db")], url + "/healthz")
            try:
                chunks = chunks_per_stream(url)
                for c in args.connections:
                    wrk(url, "auto", c, 1, tmp, extra=', "stream": true')  # warm up
                    r = wrk(url, "auto", c, args.seconds, tmp, router.pid, extra=', "stream": true')
                    rows.append({"connections": c, "chunks_per_stream": chunks, **r})
            finally:
                stop(router)
        finally:
            stop(sim)
    print(f"streams of {chunks} chunks; p50 / p99 of the whole stream; the router's CPU (all threads / event loop)")
    for r in rows:
        print(f"{r['connections']:>4} connections | {r['p50_ms']:7.2f} / {r['p99_ms']:7.2f} ms"
              f" | {r['rps']:6.0f} streams/s"
              f" | {r['cpu_us_per_request']:5.0f} / {r['main_thread_cpu_us_per_request']:5.0f} µs per stream,"
              f" {r['cpu_us_per_request'] / chunks:4.1f} µs per chunk"
              + (f"  ({r['non_2xx']} non-2xx)" if r["non_2xx"] else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
