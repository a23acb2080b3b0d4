"""How fast is one decision and one update? (issue goal: 11 models, d=32: decision p50 ≤ 15 µs,
p99 ≤ 60 µs; update ≤ 15 µs.)

Side by side in one run, on the same contexts:
  * the router's ``decide_features`` / ``learn`` (stacked cache, sample only θ·x, rank-one updates);
  * a naive linear Thompson sampler that samples the full θ per arm from N(θ̂, σ²A⁻¹) with a
    Cholesky factorisation per arm per decision (what a textbook LinTS does);
  * ``featurize`` on real RouterBench prompts when ../shared is present, else on synthetic ones.

    python benchmarks/decision_speed.py [--n 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bandit_router.costs import Price
from bandit_router.features import DIM, featurize
from bandit_router.router import BanditSettings, ModelSpec, Router

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench"


def _pct(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns) / 1e3
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean())}


def bench_router(xs: np.ndarray, n: int, k: int = 11) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    router = Router([ModelSpec(f"m{i}", Price(0.5 + i, 1.0 + 2 * i)) for i in range(k)], BanditSettings(seed=0),
                    categories=("general",))
    truth = rng.uniform(0.3, 0.9, k)
    for i in range(2000):  # warm up: realistic, non-trivial posteriors
        d = router.decide_features(xs[i % len(xs)], "general", 400)
        router.learn(d, float(rng.random() < truth[d.arm]))
    dec, upd = [], []
    perf = time.perf_counter_ns
    for i in range(n):
        x = xs[i % len(xs)]
        t0 = perf()
        d = router.decide_features(x, "general", 400)
        t1 = perf()
        router.learn(d, float(rng.random() < truth[d.arm]))
        t2 = perf()
        dec.append(t1 - t0)
        upd.append(t2 - t1)
    return _pct(dec), _pct(upd)


def bench_naive(xs: np.ndarray, n: int, k: int = 11) -> tuple[dict, dict]:
    """Textbook LinTS: per decision, a Cholesky per arm to sample θ; per update, a solve."""
    rng = np.random.default_rng(0)
    d = xs.shape[1]
    a = np.stack([np.eye(d)] * k)
    b = np.zeros((k, d))
    truth = rng.uniform(0.3, 0.9, k)
    dec, upd = [], []
    perf = time.perf_counter_ns
    for i in range(n):
        x = xs[i % len(xs)]
        t0 = perf()
        scores = np.empty(k)
        for j in range(k):
            cov = np.linalg.inv(a[j])
            theta = np.linalg.solve(a[j], b[j])
            chol = np.linalg.cholesky(0.25 * cov)
            scores[j] = (theta + chol @ rng.standard_normal(d)) @ x
        arm = int(scores.argmax())
        t1 = perf()
        r = float(rng.random() < truth[arm])
        a[arm] += np.outer(x, x)
        b[arm] += r * x
        t2 = perf()
        dec.append(t1 - t0)
        upd.append(t2 - t1)
    return _pct(dec), _pct(upd)


def bench_features(n: int) -> dict:
    prompts = []
    if SHARED.is_dir():
        from bandit_router.replay.data import load

        table = load(sorted(SHARED.glob("*.csv")))
        prompts = table.prompts
    if not prompts:
        prompts = [[{"role": "user", "content": "Write a Python function that reverses a list. " * (i % 7 + 1)}]
                   for i in range(200)]
    ns = []
    perf = time.perf_counter_ns
    for i in range(n):
        p = prompts[i % len(prompts)]
        t0 = perf()
        featurize(p)
        ns.append(perf() - t0)
    return {**_pct(ns), "prompts": "routerbench" if SHARED.is_dir() else "synthetic"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    xs = np.column_stack([np.ones(4096), rng.random((4096, DIM - 1))])
    r_dec, r_upd = bench_router(xs, args.n)
    n_dec, n_upd = bench_naive(xs, max(args.n // 10, 500))
    feats = bench_features(args.n)
    out = {"models": 11, "dim": DIM, "router": {"decision": r_dec, "update": r_upd},
           "naive_lints": {"decision": n_dec, "update": n_upd}, "featurize": feats,
           "speedup_decision_p50": n_dec["p50_us"] / r_dec["p50_us"]}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"11 models, d={DIM}, {args.n} decisions")
    for name, row in (("router decision", r_dec), ("router update", r_upd), ("naive LinTS decision", n_dec),
                      ("naive LinTS update", n_upd), ("featurize", feats)):
        print(f"  {name:22s} p50 {row['p50_us']:8.1f} µs   p99 {row['p99_us']:8.1f} µs")
    print(f"  decision speed-up over naive LinTS (p50): {out['speedup_decision_p50']:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
