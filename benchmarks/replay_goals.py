"""The learning-quality goals of the learning core, measured on RouterBench in one run.

    python benchmarks/replay_goals.py [--data ../shared/data/routerbench] [--seeds 0 1 2]
                                      [--steps 20000] [--out out/replay_goals.json]

Each row below is the mean over the seeds of one ``bandit-router replay`` run; the CLI
equivalent of each run is printed with it. Goals (cost weight 20, 20,000 steps, 3 seeds):

1. cold start: utility above VW and MABWiser on the same stream, within 0.01 of the
   per-category hindsight table;
2. quality ≥ 95% of the best single model at ≤ 35% of its cost;
3. warm-started on one half of the rows, replayed on the other: ≥ the hindsight table's utility;
4. --hide-category: within 0.005 utility of the run with categories;
5. gpt-4 loses 60% of its correct answers at step 10,000: 90% of the shift within 300 requests.

Also reported, not goals: the feature ablation (intercept only = a per-category MAB; 20 dense
features; 32 with hashed words), cold and warm, to show whether per-prompt features help.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bandit_router.replay import data
from bandit_router.replay.run import Drift, ReplayOptions, run
from bandit_router.router import BanditSettings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench"
W = 20.0


def one(table, seed, steps, *, warm=None, peers=(), **kw) -> dict:
    opts = ReplayOptions(cost_weight=W, steps=steps, seed=seed, peers=tuple(peers),
                         settings=BanditSettings(cost_weight=W, seed=seed), **kw)
    r = run(table, opts, warm=warm, with_peers=bool(peers))
    r.pop("choices")
    r.pop("stream_categories")
    return r


def split(table, seed):
    perm = np.random.default_rng([seed, 2]).permutation(table.n)
    cut = table.n // 2
    return table.subset(np.sort(perm[:cut])), table.subset(np.sort(perm[cut:]))


def full_information_check(table, seed: int) -> dict[str, float]:
    """Offline, full information: train on one half of the rows with every model's outcome, then
    route the other half greedily (no exploration) by posterior mean utility. Compares features
    against the per-category table fitted on the same training half and the hindsight table."""
    from bandit_router.replay.run import feature_view, make_router, warm_start

    train, test = split(table, seed)
    prices = table.fit_prices()
    out = {}
    u_test = test.quality - W * test.cost
    for feats in ("intercept", "dense", "full"):
        opts = ReplayOptions(cost_weight=W, seed=seed, features=feats,
                             settings=BanditSettings(cost_weight=W, seed=seed, explore=0.0))
        router = make_router(train, opts, prices)
        warm_start(router, train, opts, lambda i: str(train.categories[i]))
        xs = feature_view(test.x, feats)
        picks = [router.decide_features(xs[i], str(test.categories[i]), test.prompt_tokens[i]).arm
                 for i in range(test.n)]
        out[feats] = float(u_test[np.arange(test.n), picks].mean())
    u_train = train.quality - W * train.cost
    fitted = {c: int(u_train[train.categories == c].mean(0).argmax()) for c in set(train.categories)}
    out["table_fitted_on_train"] = float(np.mean([u_test[i, fitted[c]] for i, c in enumerate(test.categories)]))
    out["hindsight_table_on_test"] = float(sum(u_test[test.categories == c].mean(0).max() * (test.categories == c).sum()
                                               for c in set(test.categories)) / test.n)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("out/replay_goals.json"))
    args = ap.parse_args()
    files = sorted(args.data.glob("*.csv"))
    if not files:
        print(f"no RouterBench CSV files under {args.data}", file=sys.stderr)
        return 2
    table = data.load(files)
    peers = () if args.no_peers else ("vw", "mabwiser_lints")
    gpt4 = "gpt-4-1106-preview"
    drift = [Drift.parse(f"degrade:{gpt4}:0.6@{args.steps // 2}", table.models)]
    f = " ".join(str(p) for p in files)
    base = f"bandit-router replay {f} --cost-weight {W:g} --steps {args.steps} --seed S --json"
    plan = {
        "cold": (base, dict(peers=peers)),
        "hide_category": (base + " --hide-category --peers ''", dict(hide_category=True)),
        "warm_half": (base + " --warm-split 0.5 --peers ''", dict(warm="half")),
        "drift": (base + f" --drift degrade:{gpt4}:0.6@{args.steps // 2} --peers ''", dict(drift=drift)),
        "cold_dense": (base + " --features dense --peers ''", dict(features="dense")),
        "cold_intercept": (base + " --features intercept --peers ''", dict(features="intercept")),
        "warm_half_intercept": (base + " --warm-split 0.5 --features intercept --peers ''",
                                dict(warm="half", features="intercept")),
    }
    from rich.progress import Progress

    results: dict[str, list[dict]] = {k: [] for k in plan}
    with Progress(transient=True) as bar:
        task = bar.add_task("replay goals", total=len(plan) * len(args.seeds))
        for name, (_, kw) in plan.items():
            for seed in args.seeds:
                opts = {k: v for k, v in kw.items() if k != "warm"}
                if kw.get("warm"):
                    warm, stream = split(table, seed)
                    results[name].append(one(stream, seed, args.steps, warm=warm, **opts))
                else:
                    results[name].append(one(table, seed, args.steps, **opts))
                bar.advance(task)

    def mean(name, *path):
        vals = []
        for r in results[name]:
            v = r
            for p in path:
                v = v[p]
            vals.append(v)
        return float(np.mean(vals))

    cold_u = mean("cold", "router", "utility")
    table_u = mean("cold", "baselines", "hindsight_table", "utility")
    goals = []
    if peers:
        vw, mw = mean("cold", "baselines", "vw", "utility"), mean("cold", "baselines", "mabwiser_lints", "utility")
        goals.append(("utility above VW and MABWiser", f"{cold_u:.4f} vs VW {vw:.4f}, MABWiser {mw:.4f}",
                      cold_u > vw and cold_u > mw))
    goals.append(("within 0.01 of the hindsight table (cold)", f"{cold_u:.4f} vs {table_u:.4f} "
                  f"(gap {table_u - cold_u:.4f})", table_u - cold_u <= 0.01))
    qp, cp = mean("cold", "vs_best_single", "quality_pct"), mean("cold", "vs_best_single", "cost_pct")
    goals.append(("quality ≥ 95% of best single at ≤ 35% of its cost", f"{qp:.1f}% quality, {cp:.1f}% cost",
                  qp >= 95 and cp <= 35))
    wu, wt = mean("warm_half", "router", "utility"), mean("warm_half", "baselines", "hindsight_table", "utility")
    goals.append(("warm half ≥ hindsight table", f"{wu:.4f} vs {wt:.4f}", wu >= wt))
    hu = mean("hide_category", "router", "utility")
    goals.append(("--hide-category within 0.005", f"{hu:.4f} vs {cold_u:.4f} (diff {cold_u - hu:+.4f}); "
                  f"categories agree on {mean('hide_category', 'category_agreement'):.2%} of rows",
                  abs(cold_u - hu) <= 0.005))
    shifts = {}
    for r in results["drift"]:
        for cat, n in r["drift"].items():
            shifts.setdefault(cat, []).append(n)
    worst = max((max(v) for v in shifts.values()), default=0)
    goals.append(("drift: 90% of the shift within 300 requests", f"requests per seed {shifts}", worst <= 300))

    fullinfo = {k: float(np.mean([full_information_check(table, s)[k] for s in args.seeds]))
                for k in ("intercept", "dense", "full", "table_fitted_on_train", "hindsight_table_on_test")}

    summary = {
        "steps": args.steps, "seeds": args.seeds, "cost_weight": W,
        "commands": {k: v[0] for k, v in plan.items()},
        "mean": {k: {"router_utility": mean(k, "router", "utility"), "router_quality": mean(k, "router", "quality"),
                     "router_cost": mean(k, "router", "cost"),
                     "hindsight_table_utility": mean(k, "baselines", "hindsight_table", "utility"),
                     "us_per_decision": mean(k, "router", "us_per_decision")} for k in plan},
        "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in goals],
        "full_information_check": fullinfo,
        "runs": results,
    }
    if peers:
        for p in peers:
            summary["mean"]["cold"][f"{p}_utility"] = mean("cold", "baselines", p, "utility")
            summary["mean"]["cold"][f"{p}_us_per_decision"] = mean("cold", "baselines", p, "us_per_decision")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))

    print(f"RouterBench replay, cost weight {W:g}, {args.steps} steps, seeds {args.seeds} (means)")
    print(f"{'run':22s} {'router':>8s} {'table':>8s} {'quality':>8s} {'$/req':>9s} {'µs/dec':>7s}")
    for k, m in summary["mean"].items():
        print(f"{k:22s} {m['router_utility']:8.4f} {m['hindsight_table_utility']:8.4f} {m['router_quality']:8.4f} "
              f"{m['router_cost']:9.6f} {m['us_per_decision']:7.1f}")
    if peers:
        for p in peers:
            print(f"{'peer ' + p:22s} {summary['mean']['cold'][p + '_utility']:8.4f} "
                  f"{'':8s} {'':8s} {'':9s} {summary['mean']['cold'][p + '_us_per_decision']:7.1f}")
    print("\nfull information, train on one half, greedy on the other (utility): "
          + ", ".join(f"{k} {v:.4f}" for k, v in fullinfo.items()))
    print()
    for g, m, ok in goals:
        print(f"[{'met' if ok else 'NOT MET'}] {g}: {m}")
    print(f"\nfull results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
