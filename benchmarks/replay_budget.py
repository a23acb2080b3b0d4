"""Budget pacing on RouterBench: the paced router against the best fixed cost weight that meets the
same budget, on the same streams.

    python benchmarks/replay_budget.py [--budgets 0.00125 0.0015 0.0019 0.0025] [--seeds 10]
        [--steps 10000] [--grid 25] [--wmin 2] [--wmax 200] [--step ETA] [--workers 2]
        [--days 0 --per-day 5000] [--json out.json] [--plot out.png]

For each budget ($ per request) and seed: the replay with ``--budget`` (the cost weight is the
primal-dual pacer's, ``bandit_router.pacing.RequestPacer``), and the replay with each fixed cost weight
of a log-spaced grid (no pacing), on the same stream and seed. "Best fixed" is, in hindsight and per
seed, the fixed weight with the highest quality whose spend per request is within the budget. Goals
(the issue): spend within 2% of the budget on every seed, and quality at least that of the best fixed
weight (judged on the median over seeds of the per-seed difference, paced − best fixed). All three
tasks, categories known; ``../shared/data/routerbench/*.csv`` is read with the replay's loader, never
copied. The default grid (2 to 200) spans the weights whose spend lies between the budgets' range and
gpt-4 alone; weights outside it spend either above every budget or far below.

``--days N`` adds the service's pacer (``DayPacer``, a budget per UTC day): the same RouterBench
stream arrives over N simulated days, ``--per-day`` requests a day, either spread evenly over the day
or diurnal (the rate ∝ 1 + 0.8 sin, busiest at 12:00 UTC, quietest at midnight), with a day budget of
the per-request budget × ``--per-day``. Reported per day: spend / day budget, quality, and when the
budget ran out; against the per-request pacer on the same stream, which knows the day's traffic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routerbench"

_TABLE = None


def _table():
    from bandit_router.replay import data

    return data.load(sorted(str(p) for p in DATA.glob("*.csv")))


def _init() -> None:
    global _TABLE
    _TABLE = _table()


def _one(job: tuple[float | None, float, int, int, float | None]) -> dict:
    budget, weight, seed, steps, step = job
    from bandit_router.replay.run import ReplayOptions, make_stream, run

    table = _TABLE if _TABLE is not None else _table()
    opts = ReplayOptions(cost_weight=weight, steps=steps, seed=seed, budget=budget, budget_step=step, peers=())
    r = run(table, opts, with_peers=False)
    out = {"budget": budget, "weight": weight, "seed": seed, "quality": r["router"]["quality"],
           "cost": r["router"]["cost"]}
    if budget is not None:
        out["ratio"] = r["budget"]["spend_ratio"]
        out["median_weight"] = r["budget"]["median_cost_weight"]
        if seed == 0:  # one run's trajectory, for the plot
            stream = make_stream(table, opts)
            paid = stream.cost[np.arange(len(r["choices"])), r["choices"]]
            every = max(1, steps // 400)
            out["weights"] = r["cost_weights"][::every].tolist()
            out["cum_ratio"] = (np.cumsum(paid) / np.arange(1, len(paid) + 1) / budget)[::every].tolist()
    return out


def _arrivals(rng: np.random.Generator, per_day: int, days: int, pattern: str) -> np.ndarray:
    """Arrival times (s since the epoch, from UTC midnight of day 20,000) of ``per_day`` requests a day."""
    from bandit_router.pacing import DAY_S

    out = []
    for d in range(days):
        if pattern == "uniform":
            u = rng.random(per_day)
        elif pattern == "diurnal":  # rejection sampling from 1 + 0.8 sin(2π(f − 1/4))
            u = np.empty(0)
            while len(u) < per_day:
                x, y = rng.random(4 * per_day), rng.random(4 * per_day)
                u = np.concatenate([u, x[y < (1 + 0.8 * np.sin(2 * np.pi * (x - 0.25))) / 1.8]])
            u = u[:per_day]
        else:
            raise ValueError(f"traffic pattern {pattern!r}: expected uniform or diurnal")
        out.append((20_000 + d + np.sort(u)) * DAY_S)
    return np.concatenate(out)


def _day(job: tuple[str, float, int, int, int, str]) -> dict:
    """One stream over ``days`` days with a day budget (``DayPacer``) or a per-request one (``RequestPacer``)."""
    pattern, budget, seed, per_day, days, kind = job
    from bandit_router.pacing import DAY_S, DayPacer, RequestPacer
    from bandit_router.replay.run import ReplayOptions, make_router, make_stream

    table = _TABLE if _TABLE is not None else _table()
    opts = ReplayOptions(steps=per_day * days, seed=seed, peers=())
    stream = make_stream(table, opts)
    router = make_router(table, opts, table.fit_prices())
    cols = [table.models.index(m) for m in router.models]
    times = _arrivals(np.random.default_rng([seed, 7]), per_day, days, pattern)
    day_budget = budget * per_day
    day_pacer = DayPacer(day_budget) if kind == "day" else None
    req_pacer = RequestPacer(budget) if kind == "request" else None
    spent, quality = np.zeros(days), np.zeros(days)
    out_at: list[float | None] = [None] * days
    for t in range(per_day * days):
        now, row, d = float(times[t]), stream.rows[t], t // per_day
        w = day_pacer.cost_weight(0.0, now) if day_pacer is not None else req_pacer.cost_weight(0.0)
        dec = router.decide_features(table.x[row], str(table.categories[row]), table.prompt_tokens[row],
                                     cost_weight=w)
        k = cols[dec.arm]
        c = float(stream.cost[t, k])
        if day_pacer is not None:
            day_pacer.spend(c, now)
        else:
            req_pacer.spend(c)
        spent[d] += c
        quality[d] += stream.quality[t, k]
        if out_at[d] is None and spent[d] >= day_budget:
            out_at[d] = now / DAY_S - 20_000 - d
        router.learn(dec, float(stream.quality[t, k]))
        router.observe_output(dec, table.output_tokens[row, k])
    return {"pattern": pattern, "budget": budget, "seed": seed, "kind": kind, "ratio": (spent / day_budget).tolist(),
            "quality": (quality / per_day).tolist(), "ran_out_at": out_at}


def print_days(results: list[dict], args: argparse.Namespace) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    med = statistics.median
    t = Table(title=f"a budget per UTC day (DayPacer): {args.per_day} requests a day, {args.days} days, "
                    f"{args.seeds} seeds (medians over seeds and days)")
    for col in ("traffic", "budget $/req", "pacer", "spend / day budget (range)", "quality",
                "days the budget ran out (at, median)"):
        t.add_column(col, justify="right")
    rows = []
    keys = sorted({(r["pattern"], r["budget"], r["kind"]) for r in results}, key=lambda k: (k[0], k[1], k[2] != "day"))
    for pattern, b, kind in keys:
        rs = [r for r in results if (r["pattern"], r["budget"], r["kind"]) == (pattern, b, kind)]
        ratios = [x for r in rs for x in r["ratio"]]
        outs = [x for r in rs for x in r["ran_out_at"] if x is not None]
        row = {"pattern": pattern, "budget": b, "pacer": kind, "ratio": med(ratios),
               "ratio_range": [min(ratios), max(ratios)], "quality": med(q for r in rs for q in r["quality"]),
               "days_run_out": len(outs), "days": len(ratios), "ran_out_at": med(outs) if outs else None}
        rows.append(row)
        t.add_row(pattern, f"{b:.5f}", "per day" if kind == "day" else "per request (knows the traffic)",
                  f"{row['ratio']:.3f} ({min(ratios):.3f}–{max(ratios):.3f})", f"{row['quality']:.4f}",
                  f"{len(outs)}/{len(ratios)}" + ("" if not outs else f" (at {24 * row['ran_out_at']:.2f} h)"))
    Console(width=200).print(t)
    return rows


def summarise(budgets: list[float], seeds: list[int], results: list[dict], tol: float = 0.02) -> list[dict]:
    """Per budget: per-seed comparisons with the best fixed weight in hindsight, their medians, goals."""
    fixed = [r for r in results if r["budget"] is None]
    med = statistics.median
    rows = []
    for b in budgets:
        per_seed = []
        for s in seeds:
            paced = next(r for r in results if r["budget"] == b and r["seed"] == s)
            ok = [r for r in fixed if r["seed"] == s and r["cost"] <= b]
            best = max(ok, key=lambda r: r["quality"]) if ok else None
            per_seed.append({"seed": s, "paced_quality": paced["quality"], "paced_ratio": paced["ratio"],
                             "paced_median_weight": paced["median_weight"],
                             "best_fixed_weight": None if best is None else best["weight"],
                             "best_fixed_quality": None if best is None else best["quality"],
                             "best_fixed_ratio": None if best is None else best["cost"] / b,
                             "quality_diff": None if best is None else paced["quality"] - best["quality"],
                             **{k: paced[k] for k in ("weights", "cum_ratio") if k in paced}})
        found = [p for p in per_seed if p["best_fixed_weight"] is not None]
        diffs = [p["quality_diff"] for p in found]
        rows.append({
            "budget": b, "seeds": per_seed,
            "paced_ratio": med(p["paced_ratio"] for p in per_seed),
            "paced_ratio_range": [min(p["paced_ratio"] for p in per_seed), max(p["paced_ratio"] for p in per_seed)],
            "paced_quality": med(p["paced_quality"] for p in per_seed),
            "paced_median_weight": med(p["paced_median_weight"] for p in per_seed),
            "best_fixed_weight": med(p["best_fixed_weight"] for p in found) if found else None,
            "best_fixed_quality": med(p["best_fixed_quality"] for p in found) if found else None,
            "best_fixed_ratio": med(p["best_fixed_ratio"] for p in found) if found else None,
            "median_quality_diff": med(diffs) if diffs else None,
            "mean_quality_diff": statistics.fmean(diffs) if diffs else None,
            "seeds_paced_at_least_fixed": sum(d >= 0 for d in diffs),
            "spend_goal": all(abs(p["paced_ratio"] - 1) <= tol for p in per_seed),
            "quality_goal": bool(diffs) and len(diffs) == len(per_seed) and med(diffs) >= 0,
        })
    return rows


def print_table(rows: list[dict], args: argparse.Namespace, best_model: str, best_cost: float, secs: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"budget pacing on RouterBench: {args.steps} requests, {args.seeds} seeds, "
                    f"{args.grid} fixed weights {args.wmin:g}..{args.wmax:g} (medians over seeds)")
    for col in ("budget $/req", "% of gpt-4", "paced spend/budget (range)", "paced quality", "paced median w",
                "best fixed w", "its quality", "its spend/budget", "paced − fixed (median, mean)", "seeds ≥",
                "spend goal", "quality goal"):
        t.add_column(col, justify="right")
    for r in rows:
        lo, hi = r["paced_ratio_range"]
        none = r["best_fixed_weight"] is None
        t.add_row(f"{r['budget']:.5f}", f"{100 * r['budget'] / best_cost:.0f}%",
                  f"{r['paced_ratio']:.3f} ({lo:.3f}–{hi:.3f})", f"{r['paced_quality']:.4f}",
                  f"{r['paced_median_weight']:.0f}",
                  "-" if none else f"{r['best_fixed_weight']:.1f}",
                  "-" if none else f"{r['best_fixed_quality']:.4f}",
                  "-" if none else f"{r['best_fixed_ratio']:.3f}",
                  "-" if none else f"{r['median_quality_diff']:+.4f}, {r['mean_quality_diff']:+.4f}",
                  f"{r['seeds_paced_at_least_fixed']}/{len(r['seeds'])}",
                  "met" if r["spend_goal"] else "NOT met", "met" if r["quality_goal"] else "NOT met")
    c = Console(width=220)
    c.print(t)
    c.print(f"best single model: {best_model} at ${best_cost:.5f}/request; spend goal: within 2% on every seed; "
            f"quality goal: median of (paced − best fixed) ≥ 0; {secs:.0f} s")


def plot(rows: list[dict], steps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in rows:
        s0 = r["seeds"][0]
        if "weights" not in s0:
            continue
        w = np.asarray(s0["weights"])
        k = max(1, len(w) // 40)
        smooth = np.convolve(w, np.ones(k) / k, mode="valid")  # a trailing moving mean
        x = np.linspace(0, steps, len(w))[k - 1:]
        line = ax.plot(x, smooth, label=f"${r['budget']:g}/request")[0]
        if s0["best_fixed_weight"] is not None:
            ax.axhline(s0["best_fixed_weight"], ls=":", lw=0.9, color=line.get_color())
        ax2.plot(np.linspace(0, steps, len(s0["cum_ratio"])), s0["cum_ratio"], color=line.get_color(),
                 label=f"${r['budget']:g}/request")
    ax.set_xlabel("request")
    ax.set_ylabel("cost weight λ (quality points per $)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_title("the pacer's λ, seed 0 (trailing mean; dotted: best fixed weight)")
    ax.legend(fontsize=8)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.axhspan(0.98, 1.02, color="0.9")
    ax2.set_ylim(0.5, 1.5)
    ax2.set_xlabel("request")
    ax2.set_ylabel("spend per request so far / budget")
    ax2.set_title("cumulative spend against the budget (grey: ±2%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.00125, 0.0015, 0.0019, 0.0025],
                    help="$ per request (default: 25%%, 30%%, 38%%, 50%% of gpt-4's $0.0050)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--grid", type=int, default=25, help="fixed cost weights, log-spaced from --wmin to --wmax")
    ap.add_argument("--wmin", type=float, default=2.0)
    ap.add_argument("--wmax", type=float, default=200.0)
    ap.add_argument("--step", type=float, default=None, help="the pacer's step η (default: RequestPacer's)")
    ap.add_argument("--days", type=int, default=0, help="also the per-day pacer over this many simulated days")
    ap.add_argument("--per-day", type=int, default=5_000, help="requests a simulated day (with --days)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, help="PNG: the pacer's λ and cumulative spend over one run per budget")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"no RouterBench data at {DATA}", file=sys.stderr)
        return 2
    if any(not 0 < b < float("inf") for b in args.budgets) or not 0 < args.wmin < args.wmax or args.grid < 2:
        print("budgets must be > 0, 0 < --wmin < --wmax and --grid >= 2", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    table = _table()
    gpt4 = int(np.argmax(table.quality.mean(0)))
    best_model, best_cost = table.models[gpt4], float(table.cost[:, gpt4].mean())
    grid = [float(w) for w in np.geomspace(args.wmin, args.wmax, args.grid)]
    seeds = list(range(args.seeds))
    jobs = [(b, 0.0, s, args.steps, args.step) for b in args.budgets for s in seeds]
    jobs += [(None, w, s, args.steps, None) for w in grid for s in seeds]
    from rich.progress import Progress

    results = []
    with ProcessPoolExecutor(args.workers, initializer=_init) as pool, Progress(transient=True) as bar:
        task = bar.add_task("replays", total=len(jobs))
        for r in pool.map(_one, jobs, chunksize=2):
            results.append(r)
            bar.advance(task)
    rows = summarise(args.budgets, seeds, results)
    print_table(rows, args, best_model, best_cost, time.perf_counter() - t0)
    day_rows = None
    if args.days > 0:
        day_jobs = [(pattern, b, s, args.per_day, args.days, kind) for pattern in ("uniform", "diurnal")
                    for b in args.budgets for s in seeds for kind in ("day", "request")]
        day_jobs = [j for j in day_jobs if j[0] == "uniform" or j[5] == "day"]  # per request: traffic shape is moot
        with ProcessPoolExecutor(args.workers, initializer=_init) as pool, Progress(transient=True) as bar:
            task = bar.add_task("simulated days", total=len(day_jobs))
            day_results = []
            for r in pool.map(_day, day_jobs):
                day_results.append(r)
                bar.advance(task)
        day_rows = print_days(day_results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fixed = [{k: r[k] for k in ("weight", "seed", "quality", "cost")} for r in results if r["budget"] is None]
        args.json.write_text(json.dumps({"steps": args.steps, "seeds": seeds, "grid": grid, "pacer_step": args.step,
                                         "best_single": {"model": best_model, "cost": best_cost},
                                         "rows": rows, "fixed": fixed, "days": day_rows}, indent=1))
    if args.plot:
        plot(rows, args.steps, args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(r["spend_goal"] and r["quality_goal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
