"""Latency-aware routing: interactive traffic with a 1 s deadline and batch traffic, mixed on one
router, against the simulator's models (the seed article's fleet with its stated latency assumptions).

    python benchmarks/latency_routing.py [--steps 20000] [--deadline-ms 1000] [--seed 0] [--json F] [--plot F]

In process, no HTTP and no sleeping: each request is decided by the router core, answered by the
simulator engine (quality per category from the seed article; latency log-normal per answer around
each model's assumed real-world median, ``latency_scale`` 50), and the router learns the answer's
correctness and its timing. Half the requests are *interactive*: streamed, ``max_latency_ms`` =
the deadline on the time to first token. The other half are *batch*: no latency hint. The same batch
stream is also run alone on a fresh router ("batch only"), to show that sharing the router with
interactive traffic does not change what batch requests get. Reported per class over the last half of
the run: traffic share per model, how often the first token really came within the deadline, mean
quality and cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bandit_router.costs import Price
from bandit_router.router import BanditSettings, ModelSpec, Router
from bandit_router.simulator.engine import Simulator
from bandit_router.simulator.profile import builtin_profile

CATEGORIES = ("coding", "reasoning", "science", "general")
PROMPTS = {
    "coding": "Write a Python function that merges two sorted lists. Request {i}.",
    "reasoning": "If all bloops are razzies and some razzies are lazzies, are some bloops lazzies? Case {i}.",
    "science": "Why does ice float on water? Explain the density anomaly. Question {i}.",
    "general": "Suggest a name for a small bakery in a seaside town. Idea {i}.",
}


def make_router(sim: Simulator, seed: int, cost_weight: float) -> Router:
    specs = []
    for name, m in sim.profile.models.items():
        serves = tuple(c for c in CATEGORIES if m.p(c) is not None)
        specs.append(ModelSpec(name, Price(m.price.input, m.price.output), categories=serves,
                               ttft_s=2.0, latency_s=10.0))  # one generic latency prior: the router learns
    return Router(specs, BanditSettings(cost_weight=cost_weight, seed=seed), categories=CATEGORIES)


def run(steps: int, deadline_s: float, seed: int, cost_weight: float, classes: tuple[str, ...]) -> dict:
    profile = builtin_profile()
    profile.latency_scale = 50.0  # ≈ real time, in seconds (nothing sleeps here)
    sim = Simulator(profile, seed=seed)
    router = make_router(sim, seed, cost_weight)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(steps):
        kind = classes[int(rng.integers(len(classes)))]
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        messages = [{"role": "user", "content": PROMPTS[cat].format(i=i)}]
        interactive = kind == "interactive"
        d = router.decide(messages, category=cat, stream=interactive,
                          max_latency_s=deadline_s if interactive else None)
        o = sim.complete(d.model, messages, category=cat)
        total = o.ttft_s + o.completion_tokens * o.s_per_token
        router.learn(d, 1.0 if o.correct else 0.0)
        router.observe_output(d, o.completion_tokens)
        router.observe_latency(d, o.ttft_s if interactive else None, total)
        rows.append((kind, d.model, o.correct, o.cost_usd, o.ttft_s, total, d.deadline_met))
    half = rows[steps // 2:]
    out: dict = {}
    for kind in classes:
        r = [x for x in half if x[0] == kind]
        models = sorted({x[1] for x in r})
        out[kind] = {
            "requests": len(r),
            "share": {m: sum(x[1] == m for x in r) / len(r) for m in models},
            "quality": float(np.mean([x[2] for x in r])),
            "cost_usd": float(np.mean([x[3] for x in r])),
            "ttft_p50_s": float(np.median([x[4] for x in r])),
            "ttft_within_deadline": float(np.mean([x[4] <= deadline_s for x in r])),
            "total_p50_s": float(np.median([x[5] for x in r])),
            "router_expected_deadline_met": (float(np.mean([bool(x[6]) for x in r]))
                                             if kind == "interactive" else None),
        }
    out["share_over_time"] = _share_over_time(rows, list(sim.profile.models), classes)
    return out


def _share_over_time(rows, models, classes, buckets: int = 40) -> dict:
    out = {}
    for kind in classes:
        r = [x[1] for x in rows if x[0] == kind]
        edges = np.linspace(0, len(r), buckets + 1).astype(int)
        spans = list(zip(edges[:-1], edges[1:], strict=True))
        out[kind] = {m: [sum(1 for y in r[a:b] if y == m) / max(b - a, 1) for a, b in spans] for m in models}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--deadline-ms", type=float, default=1000.0)
    ap.add_argument("--cost-weight", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, help="PNG: traffic share over time, per class")
    args = ap.parse_args()
    deadline = args.deadline_ms / 1000
    mixed = run(args.steps, deadline, args.seed, args.cost_weight, ("interactive", "batch"))
    alone = run(args.steps // 2, deadline, args.seed, args.cost_weight, ("batch",))
    med = builtin_profile().models
    print("the simulator's latency assumptions (real-world medians; log-normal, sigma "
          f"{next(iter(med.values())).latency.sigma}):")
    for name, m in med.items():
        lat = m.latency
        print(f"  {name:16s} first token {lat.ttft_ms * 50 / 1000:.1f} s, {lat.tokens_per_s / 50:.0f} tok/s, "
              f"${m.price.input:g}/${m.price.output:g} per 1M")
    print(f"\nlast half of {args.steps} requests, deadline {args.deadline_ms:g} ms on the first token (interactive):")
    print(f"{'class':22s} | {'traffic share':60s} | quality | $/request | TTFT p50 | TTFT ≤ deadline")
    for label, r in (("interactive (mixed)", mixed["interactive"]), ("batch (mixed)", mixed["batch"]),
                     ("batch only", alone["batch"])):
        share = ", ".join(f"{m} {s:.0%}" for m, s in sorted(r["share"].items(), key=lambda kv: -kv[1]) if s >= 0.01)
        print(f"{label:22s} | {share:60s} | {r['quality']:.3f}   | {r['cost_usd']:.5f}   | "
              f"{r['ttft_p50_s']:6.2f} s | {r['ttft_within_deadline']:.1%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mixed": mixed, "batch_only": alone}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, kind in zip(axes, ("interactive", "batch"), strict=True):
            series = mixed["share_over_time"][kind]
            x = np.linspace(0, 100, len(next(iter(series.values()))))
            ax.stackplot(x, *series.values(), labels=list(series))
            ax.set_title(f"{kind}" + (f" (deadline {args.deadline_ms:g} ms)" if kind == "interactive" else ""))
            ax.set_xlabel("% of the run")
        axes[0].set_ylabel("traffic share")
        axes[1].legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
