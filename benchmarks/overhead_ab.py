"""Two (or more) versions of the router side by side: the same upstream, `wrk` runs in alternation.

    git worktree add /tmp/before <commit>
    python benchmarks/overhead_ab.py /tmp/before . [--rounds 10] [--seconds 3] [--connections 1 50]

Each source tree runs its own ``bandit-router serve`` (its code first on ``PYTHONPATH``, SQLite in a
temporary directory) behind one upstream that answers at once (``overhead.py``'s). Each round runs
`wrk` against every router in turn, the order reversed every other round, so a machine whose speed
drifts by the minute weighs on each alike. Reported per tree: the median over the rounds of the p50
latency, of the requests/s and of the event loop's CPU µs per request, and the rounds' p50s. The
comparison to read is the difference of the medians between trees in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from bandit_router.procs import CLI, free_port, stop, wait_http

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import UPSTREAM, wrk  # noqa: E402 (the same upstream and wrk driver)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", type=Path, help="source trees (each with bandit_router/ at its top)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, nargs="+", default=[1])
    args = ap.parse_args()
    trees = [t.resolve() for t in args.trees]
    for t in trees:
        if not (t / "bandit_router" / "__init__.py").exists():
            print(f"{t}: no bandit_router/ package here", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        up_port = free_port()
        (tmp / "upstream.py").write_text(UPSTREAM)
        upstream = subprocess.Popen([sys.executable, str(tmp / "upstream.py"), str(up_port)])
        routers: list[tuple[Path, int, subprocess.Popen]] = []
        try:
            wait_http(f"http://127.0.0.1:{up_port}/healthz", upstream)
            config = {"models": [{"name": "fast", "base_url": f"http://127.0.0.1:{up_port}/v1", "input_price": 1.0,
                                  "output_price": 2.0}], "bandit": {"seed": 0}}
            (tmp / "router.yaml").write_text(yaml.safe_dump(config))
            for i, tree in enumerate(trees):
                port = free_port()
                proc = subprocess.Popen([*CLI, "serve", "--config", str(tmp / "router.yaml"), "--port", str(port),
                                         "--db", str(tmp / f"router{i}.db")], cwd=tree,
                                        env={**os.environ, "PYTHONPATH": str(tree)},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                routers.append((tree, port, proc))
                wait_http(f"http://127.0.0.1:{port}/healthz", proc)
            for _, port, _ in routers:  # warm up
                for c in args.connections:
                    wrk(f"http://127.0.0.1:{port}", "auto", c, 1, tmp)
            runs: dict[tuple[int, int], list[dict[str, float]]] = {}
            for r in range(args.rounds):
                for c in args.connections:
                    for i in (range(len(routers)) if r % 2 == 0 else reversed(range(len(routers)))):
                        _, port, proc = routers[i]
                        runs.setdefault((i, c), []).append(
                            wrk(f"http://127.0.0.1:{port}", "auto", c, args.seconds, tmp, proc.pid))
        finally:
            for _, _, proc in routers:
                stop(proc)
            stop(upstream)
    for c in args.connections:
        print(f"{c} connection(s), {args.rounds} rounds of {args.seconds:g} s; medians:")
        for i, tree in enumerate(trees):
            v = runs[(i, c)]
            print(f"  {str(tree):40s} p50 {statistics.median(x['p50_ms'] for x in v):.3f} ms  "
                  f"{statistics.median(x['rps'] for x in v):7.0f} req/s  "
                  f"loop {statistics.median(x['main_thread_cpu_us_per_request'] for x in v):4.0f} µs/req  "
                  f"p50s {[x['p50_ms'] for x in v]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
