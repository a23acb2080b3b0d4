"""Printing, JSON and plots for a replay report."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import Table
from .run import ReplayOptions, run

_INTERNAL = ("choices", "stream_categories", "cost_weights")


def jsonable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in _INTERNAL}


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    best = result["best_single"]
    w = result["cost_weight"]
    t = RichTable(title=f"replay: {result['steps']} steps, cost weight {w}, seed {result['seed']}")
    for col in ("policy", "quality", "$/request", "utility", "quality %best", "cost %best", "µs/decision"):
        t.add_column(col, justify="right" if col != "policy" else "left")
    rows = [("router", result["router"])] + sorted(result["baselines"].items(), key=lambda kv: -kv[1]["utility"])
    for name, s in rows:
        us = s.get("us_per_decision")
        t.add_row(name, f"{s['quality']:.4f}", f"{s['cost']:.6f}", f"{s['utility']:.4f}",
                  f"{100 * s['quality'] / best['quality']:.1f}", f"{100 * s['cost'] / best['cost']:.1f}",
                  "" if us is None else f"{us:.1f}", style="bold" if name == "router" else None)
    c = Console()
    c.print(t)
    share = RichTable(title="router traffic share by category")
    share.add_column("category")
    share.add_column("share")
    for cat, s in result["router"]["by_category"].items():
        top = sorted(s["share"].items(), key=lambda kv: -kv[1])[:4]
        share.add_row(cat, ", ".join(f"{m} {v:.0%}" for m, v in top))
    c.print(share)
    if "category_agreement" in result:
        c.print(f"inferred categories agree with eval_name on {result['category_agreement']:.1%} of rows")
    if "drift" in result:
        c.print(f"requests until 90% of the traffic shift, per category: {result['drift']}")
    if "budget" in result:
        b = result["budget"]
        c.print(f"budget ${b['usd_per_request']:.6f}/request: spent ${b['spend_per_request']:.6f}/request "
                f"({b['spend_ratio']:.1%} of budget), quality {b['quality']:.4f}; the pacer's cost weight: "
                f"median {b['median_cost_weight']:.0f}, final {b['final_cost_weight']:.0f}")


def plot(table: Table, opts: ReplayOptions, result: dict[str, Any], out: str, *, warm: Table | None = None,
         weights: tuple[float, ...] = (0, 2, 5, 10, 20, 50, 100, 300)) -> None:
    """Traffic share over time per category, and the cost/quality frontier over a sweep of cost weights."""
    import matplotlib

    matplotlib.use("Agg")
    from dataclasses import replace

    import matplotlib.pyplot as plt

    from ..router import BanditSettings

    choices, cats = result["choices"], result["stream_categories"]
    names = sorted(set(cats))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(5 * (len(names) + 1), 4.2))
    cmap = plt.get_cmap("tab20")
    for ax, cat in zip(axes, names, strict=False):
        seq = choices[cats == cat]
        win = max(20, len(seq) // 60)
        ks = [k for k in np.unique(seq) if (seq == k).mean() > 0.01]
        win = min(win, len(seq))
        xs = np.arange(win - 1, len(seq))
        shares = [np.convolve(seq == k, np.ones(win) / win, mode="valid") for k in ks]
        ax.stackplot(xs, shares, labels=[table.models[k].split("/")[-1] for k in ks],
                     colors=[cmap(k % 20) for k in ks])
        ax.set_title(f"{cat}: traffic share")
        ax.set_xlabel(f"request of this category (trailing window of {win})")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower left")
    ax = axes[-1]
    base = result["baselines"]
    for m in table.models:
        ax.scatter(base[m]["cost"], base[m]["quality"], color="grey", s=18)
        ax.annotate(m.split("/")[-1][:14], (base[m]["cost"], base[m]["quality"]), fontsize=6)
    pts = []
    for w in weights:
        o = replace(opts, cost_weight=w, settings=replace(opts.settings or BanditSettings(), cost_weight=w))
        r = run(table, o, warm=warm, with_peers=False)["router"]
        pts.append((r["cost"], r["quality"], w))
    pc, pq, pw = zip(*pts, strict=True)
    ax.plot(pc, pq, "o-", color="tab:red", label="router, cost weight sweep")
    for c, q, w in pts:
        ax.annotate(f"W={w:g}", (c, q), fontsize=7, color="tab:red")
    ax.set_xscale("log")
    ax.set_xlabel("$ per request (log)")
    ax.set_ylabel("mean quality")
    ax.set_title("cost/quality frontier")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
