"""Latency-aware routing: interactive traffic with a 1 s deadline and batch traffic, mixed on one
router, against the simulator's models (the seed article's fleet with its stated latency assumptions).

    python benchmarks/latency_routing.py [--steps 20000] [--deadline-ms 1000] [--latency-weight 0.05]
                                         [--cost-weight 2] [--seed 0] [--json F] [--plot F]

In process, no HTTP and no sleeping: each request is decided by the router core, answered by the
simulator engine (quality per category from the seed article; latency log-normal per answer around
each model's assumed real-world median, ``latency_scale`` 50), and the router learns the answer's
correctness, its length and its timing. Every router starts from one generic latency prior (2 s to
the first token, 10 s in all) for every model: what it knows of latency, it measured.

Half the requests are *interactive*: streamed, ``max_latency_ms`` = the deadline on the time to first
token, and a small ``latency_weight`` (quality points per second). The other half are *batch*: no
latency hint. Both share one router (one posterior per category and model). Compared with:

* **oracle**: per category, the model with the best true quality − cost weight × expected cost (the
  best quality per dollar at that weight); for interactive traffic, among the models whose true p90
  time to first token meets the deadline, minus the latency weight × that p90;
* **batch-only router**: the same batch stream on a fresh router that sees no interactive traffic
  (what a batch-only deployment would pick).

Reported per class: traffic share per model (whole run and the class's last 1,000 requests), how often
the first token really came within the deadline, quality (the chosen model's true probability of a right
answer, so no sampling noise) and cost per request, and per category the model with the most traffic
over the last 1,000 requests.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from bandit_router.costs import Price
from bandit_router.features import estimate_tokens
from bandit_router.router import BanditSettings, ModelSpec, Router
from bandit_router.simulator.engine import Simulator
from bandit_router.simulator.profile import Profile, builtin_profile

LATENCY_SCALE = 50.0  # the built-in profile's test-speed latencies × 50 ≈ real time, in seconds
Z90 = 1.2816  # the standard normal's 90th percentile
LAST = 1000
PROMPTS = {
    "coding": "Write a Python function that merges two sorted lists. Request {i}.",
    "reasoning": "If all bloops are razzies and some razzies are lazzies, are some bloops lazzies? Case {i}.",
    "science": "Why does ice float on water? Explain the density anomaly. Question {i}.",
    "computer_use": "Open the settings page and turn on dark mode, then take a screenshot. Task {i}.",
    "general": "Suggest a name for a small bakery in a seaside town. Idea {i}.",
}
CLASSES = ("interactive", "batch")


def profile() -> Profile:
    p = builtin_profile()
    p.latency_scale = LATENCY_SCALE
    return p


def make_router(prof: Profile, seed: int, cost_weight: float) -> Router:
    specs = []
    for name, m in prof.models.items():
        serves = tuple(c for c in prof.categories if m.p(c) is not None)
        specs.append(ModelSpec(name, Price(m.price.input, m.price.output), categories=serves,
                               ttft_s=2.0, latency_s=10.0))  # one generic latency prior: the router learns
    return Router(specs, BanditSettings(cost_weight=cost_weight, seed=seed), categories=prof.categories)


def truth(prof: Profile, category: str, model: str, prompt_tokens: int) -> tuple[float, float, float]:
    """(true quality, expected $ cost, true p90 time to first token in s) of a model on a category."""
    m = prof.models[model]
    out = prof.output_tokens(model, category).mean
    cost = (prompt_tokens * m.price.input + out * m.price.output) / 1e6
    p90 = m.latency.ttft_ms / 1000 * prof.latency_scale * math.exp(Z90 * m.latency.sigma)
    return m.p(category) or 0.0, cost, p90


def oracle(prof: Profile, category: str, prompt_tokens: int, cost_weight: float, interactive: bool,
           deadline_s: float, latency_weight: float) -> str:
    best, pick = -math.inf, ""
    for model, m in prof.models.items():
        if m.p(category) is None:
            continue
        q, cost, p90 = truth(prof, category, model, prompt_tokens)
        if interactive and p90 > deadline_s:
            continue
        score = q - cost_weight * cost - (latency_weight * p90 if interactive else 0.0)
        if score > best:
            best, pick = score, model
    if not pick:  # no model meets the deadline: the fastest that serves the category
        pick = min((n for n, m in prof.models.items() if m.p(category) is not None),
                   key=lambda n: truth(prof, category, n, prompt_tokens)[2])
    return pick


def requests(steps: int, seed: int, classes: tuple[str, ...], categories: list[str]):
    rng = np.random.default_rng(seed)
    for i in range(steps):
        kind = classes[int(rng.integers(len(classes)))]
        cat = categories[int(rng.integers(len(categories)))]
        yield kind, cat, [{"role": "user", "content": PROMPTS[cat].format(i=i)}]


def run(steps: int, deadline_s: float, latency_weight: float, seed: int, cost_weight: float,
        classes: tuple[str, ...]) -> list[dict]:
    """The router on a request stream, and the oracle on the same requests (its own simulator)."""
    prof = profile()
    sim, sim_oracle = Simulator(prof, seed=seed), Simulator(prof, seed=seed + 1)
    router = make_router(prof, seed, cost_weight)
    rows = []
    for kind, cat, messages in requests(steps, seed, classes, prof.categories):
        interactive = kind == "interactive"
        d = router.decide(messages, category=cat, stream=interactive,
                          max_latency_s=deadline_s if interactive else None,
                          latency_weight=latency_weight if interactive else None)
        o = sim.complete(d.model, messages, category=cat)
        total = o.ttft_s + o.completion_tokens * o.s_per_token
        router.learn(d, 1.0 if o.correct else 0.0)
        router.observe_output(d, o.completion_tokens)
        router.observe_latency(d, o.ttft_s if interactive else None, total)
        best = oracle(prof, cat, estimate_tokens(messages), cost_weight, interactive, deadline_s, latency_weight)
        ob = sim_oracle.complete(best, messages, category=cat)
        rows.append({"kind": kind, "category": cat, "model": d.model, "p": prof.models[d.model].p(cat) or 0.0,
                     "correct": o.correct, "cost": o.cost_usd, "ttft": o.ttft_s, "total": total,
                     "expected_met": d.deadline_met, "oracle": best, "oracle_p": prof.models[best].p(cat) or 0.0,
                     "oracle_cost": ob.cost_usd, "oracle_ttft": ob.ttft_s})
    return rows


def _share(models: list[str]) -> dict[str, float]:
    return {m: models.count(m) / len(models) for m in sorted(set(models), key=lambda m: -models.count(m))}


def summarise(rows: list[dict], kind: str, deadline_s: float) -> dict:
    r = [x for x in rows if x["kind"] == kind]
    last = r[-LAST:]
    by_cat = {}
    for cat in dict.fromkeys(x["category"] for x in r):
        models = [x["model"] for x in last if x["category"] == cat]
        oracle = [x["oracle"] for x in last if x["category"] == cat]
        by_cat[cat] = {"router_last": _share(models), "oracle": _share(oracle)}

    def stats(xs: list[dict], pre: str = "") -> dict:
        return {"quality": float(np.mean([x[f"{pre}p"] for x in xs])),
                "correct": float(np.mean([x["correct"] for x in xs])) if not pre else None,
                "cost_usd": float(np.mean([x[f"{pre}cost"] for x in xs])),
                "ttft_within_deadline": float(np.mean([x[f"{pre}ttft"] <= deadline_s for x in xs]))}

    return {
        "requests": len(r),
        "share": _share([x["model"] for x in r]),
        "share_last": _share([x["model"] for x in last]),
        "router": stats(r), "router_last": stats(last),
        "oracle": stats(r, "oracle_"), "oracle_share": _share([x["oracle"] for x in r]),
        "expected_deadline_met": (float(np.mean([bool(x["expected_met"]) for x in r]))
                                  if kind == "interactive" else None),
        "categories": by_cat,
    }


def share_over_time(rows: list[dict], models: list[str], buckets: int = 40) -> dict:
    out = {}
    for kind in CLASSES:
        r = [x["model"] for x in rows if x["kind"] == kind]
        edges = np.linspace(0, len(r), buckets + 1).astype(int)
        out[kind] = {m: [r[a:b].count(m) / max(b - a, 1) for a, b in zip(edges[:-1], edges[1:], strict=True)]
                     for m in models}
    return out


def _fmt_share(share: dict[str, float], limit: float = 0.01) -> str:
    return ", ".join(f"{m} {s:.0%}" for m, s in share.items() if s >= limit)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--deadline-ms", type=float, default=1000.0)
    ap.add_argument("--latency-weight", type=float, default=0.05, help="interactive: quality points per second")
    ap.add_argument("--cost-weight", type=float, default=2.0, help="quality points per dollar (both classes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="PNG: traffic share over time, per class")
    args = ap.parse_args()
    deadline = args.deadline_ms / 1000
    rows = run(args.steps, deadline, args.latency_weight, args.seed, args.cost_weight, CLASSES)
    mixed = {k: summarise(rows, k, deadline) for k in CLASSES}
    alone_rows = run(args.steps // 2, deadline, args.latency_weight, args.seed, args.cost_weight, ("batch",))
    alone = summarise(alone_rows, "batch", deadline)

    prof = profile()
    print(f"the simulator's latency assumptions (real-world medians, log-normal per answer), cost weight "
          f"{args.cost_weight:g}/$:")
    for name, m in prof.models.items():
        lat = m.latency
        p90 = lat.ttft_ms / 1000 * LATENCY_SCALE * math.exp(Z90 * lat.sigma)
        print(f"  {name:16s} first token {lat.ttft_ms * LATENCY_SCALE / 1000:.1f} s (p90 {p90:.2f} s), "
              f"{lat.tokens_per_s / LATENCY_SCALE:.0f} tok/s, ${m.price.input:g}/${m.price.output:g} per 1M")
    print(f"\n{args.steps} requests, half interactive (stream, deadline {args.deadline_ms:g} ms on the first token, "
          f"latency weight {args.latency_weight:g}/s), half batch; 'last' = the class's last {LAST}")
    head = f"{'':24s} | {'traffic share':62s} | quality | $/request | TTFT ≤ deadline"
    print(head + "\n" + "-" * len(head))
    lines = [("interactive, whole run", mixed["interactive"]["share"], mixed["interactive"]["router"]),
             ("interactive, last", mixed["interactive"]["share_last"], mixed["interactive"]["router_last"]),
             ("interactive, oracle", mixed["interactive"]["oracle_share"], mixed["interactive"]["oracle"]),
             ("batch, whole run", mixed["batch"]["share"], mixed["batch"]["router"]),
             ("batch, last", mixed["batch"]["share_last"], mixed["batch"]["router_last"]),
             ("batch, oracle", mixed["batch"]["oracle_share"], mixed["batch"]["oracle"]),
             ("batch-only router, last", alone["share_last"], alone["router_last"])]
    for label, share, s in lines:
        print(f"{label:24s} | {_fmt_share(share):62s} | {s['quality']:.3f}   | {s['cost_usd']:.5f}   | "
              f"{s['ttft_within_deadline']:.1%}")
    print(f"\ninteractive: the router expected the deadline met in {mixed['interactive']['expected_deadline_met']:.1%} "
          "of decisions")
    print(f"\nper category, last {LAST} of each class: the router's top model (share) / the oracle's pick")
    print(f"{'category':14s} | {'interactive':40s} | {'batch':40s} | batch-only router")
    for cat in prof.categories:
        cells = []
        for s in (mixed["interactive"], mixed["batch"], alone):
            c = s["categories"].get(cat)
            if c is None:
                cells.append("-")
                continue
            (top, share), best = next(iter(c["router_last"].items())), next(iter(c["oracle"]))
            cells.append(f"{top} {share:.0%} / {best}")
        print(f"{cat:14s} | {cells[0]:40s} | {cells[1]:40s} | {cells[2]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json), "plot": str(args.plot)},
                                         "mixed": mixed, "batch_only": alone,
                                         "share_over_time": share_over_time(rows, list(prof.models))}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        series_all = share_over_time(rows, list(prof.models))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, kind in zip(axes, CLASSES, strict=True):
            series = series_all[kind]
            x = np.linspace(0, 100, len(next(iter(series.values()))))
            ax.stackplot(x, *series.values(), labels=list(series))
            ax.set_title(kind + (f" (deadline {args.deadline_ms:g} ms)" if kind == "interactive" else ""))
            ax.set_xlabel("% of the run")
        axes[0].set_ylabel("traffic share")
        axes[1].legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
