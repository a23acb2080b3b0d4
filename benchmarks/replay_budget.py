"""Budget pacing on RouterBench: the paced router against the best fixed cost weight that meets the
same budget, on the same streams.

    python benchmarks/replay_budget.py [--budgets 0.001 0.0015 0.0025] [--seeds 3] [--steps 10000]
                                       [--grid 16] [--json out.json] [--plot out.png]

For each budget ($ per request) and seed: the replay with ``--budget`` (the cost weight is the
primal-dual pacer's, ``bandit_router.pacing.RequestPacer``), and the replay with each fixed cost
weight of a log-spaced grid (5 to 5,000 quality points per dollar). "Best fixed" is, in hindsight,
the fixed weight with the highest quality whose spend per request is within the budget. Goals
(issue 7): spend within 2% of the budget, and quality at least that of the best fixed weight.
Reported per budget: medians over seeds of the paced spend/budget ratio and quality, and of the best
fixed weight's quality and spend, and the per-seed quality difference. All three tasks, categories
known; ``../shared/data/routerbench/*.csv`` is read, never copied.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench"


def _table():
    from bandit_router.replay import data

    return data.load(sorted(str(p) for p in DATA.glob("*.csv")))


def _one(job: tuple[float | None, float, int, int]) -> dict:
    budget, weight, seed, steps = job
    from bandit_router.replay.run import ReplayOptions, run

    table = _TABLE if _TABLE is not None else _table()
    opts = ReplayOptions(cost_weight=weight, steps=steps, seed=seed, budget=budget, peers=())
    r = run(table, opts, with_peers=False)
    out = {"budget": budget, "weight": weight, "seed": seed, "quality": r["router"]["quality"],
           "cost": r["router"]["cost"]}
    if budget is not None:
        out["ratio"] = r["budget"]["spend_ratio"]
        out["weights"] = r["cost_weights"][:: max(1, steps // 200)].tolist()
    return out


_TABLE = None


def _init() -> None:
    global _TABLE
    _TABLE = _table()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.001, 0.0015, 0.0025])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--grid", type=int, default=16, help="fixed cost weights, log-spaced from 5 to 5000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, help="PNG: the pacer's cost weight over a run, per budget")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"no RouterBench data at {DATA}", file=sys.stderr)
        return 2
    grid = [float(w) for w in np.geomspace(5, 5000, args.grid)]
    seeds = list(range(args.seeds))
    jobs = [(None, w, s, args.steps) for w in grid for s in seeds]
    jobs += [(b, 0.0, s, args.steps) for b in args.budgets for s in seeds]
    from rich.progress import Progress

    results = []
    with ProcessPoolExecutor(args.workers, initializer=_init) as pool, Progress() as bar:
        task = bar.add_task("replays", total=len(jobs))
        for r in pool.map(_one, jobs):
            results.append(r)
            bar.advance(task)
    fixed = [r for r in results if r["budget"] is None]
    rows = []
    for b in args.budgets:
        per_seed = []
        for s in seeds:
            paced = next(r for r in results if r["budget"] == b and r["seed"] == s)
            ok = [r for r in fixed if r["seed"] == s and r["cost"] <= b]
            best = max(ok, key=lambda r: r["quality"]) if ok else None
            per_seed.append({"seed": s, "paced_quality": paced["quality"], "paced_ratio": paced["ratio"],
                             "best_fixed_weight": None if best is None else best["weight"],
                             "best_fixed_quality": None if best is None else best["quality"],
                             "best_fixed_ratio": None if best is None else best["cost"] / b,
                             "quality_diff": None if best is None else paced["quality"] - best["quality"],
                             "weights": paced["weights"]})
        med = statistics.median
        diffs = [p["quality_diff"] for p in per_seed if p["quality_diff"] is not None]
        rows.append({
            "budget": b, "seeds": per_seed,
            "paced_ratio": med(p["paced_ratio"] for p in per_seed),
            "paced_quality": med(p["paced_quality"] for p in per_seed),
            "best_fixed_quality": med(p["best_fixed_quality"] for p in per_seed if p["best_fixed_quality"]),
            "best_fixed_ratio": med(p["best_fixed_ratio"] for p in per_seed if p["best_fixed_ratio"]),
            "best_fixed_weight": med(p["best_fixed_weight"] for p in per_seed if p["best_fixed_weight"]),
            "median_quality_diff": med(diffs) if diffs else None,
            "spend_goal": all(abs(p["paced_ratio"] - 1) <= 0.02 for p in per_seed),
            "quality_goal": bool(diffs) and med(diffs) >= 0,
        })
    print(f"RouterBench, 3 tasks, {args.steps} steps, {args.seeds} seeds; fixed grid: {args.grid} weights 5..5000")
    print(f"{'budget $/req':>12} | {'paced spend/budget':>18} {'paced quality':>13} | {'best fixed w':>12} "
          f"{'its quality':>11} {'its spend/budget':>16} | {'quality diff':>12} | goals")
    for r in rows:
        print(f"{r['budget']:12.4f} | {r['paced_ratio']:18.3f} {r['paced_quality']:13.4f} | "
              f"{r['best_fixed_weight']:12.0f} {r['best_fixed_quality']:11.4f} {r['best_fixed_ratio']:16.3f} | "
              f"{r['median_quality_diff']:+12.4f} | spend {'met' if r['spend_goal'] else 'NOT met'}, "
              f"quality {'met' if r['quality_goal'] else 'NOT met'}")
    print("(medians over seeds; quality diff = paced − best fixed, per seed, then the median)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"grid": grid, "rows": rows}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        for r in rows:
            w = r["seeds"][0]["weights"]
            ax.plot(np.linspace(0, args.steps, len(w)), w, label=f"${r['budget']:g}/request")
            ax.axhline(r["best_fixed_weight"], ls=":", lw=0.8, color=ax.lines[-1].get_color())
        ax.set_xlabel("request")
        ax.set_ylabel("cost weight (quality points per $)")
        ax.set_yscale("log")
        ax.set_title("the pacer's cost weight (dotted: the best fixed weight in hindsight)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
