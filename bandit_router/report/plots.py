"""The report's PNGs (matplotlib, Agg backend): traffic share over time per category, cumulative
cost against the best model, quality by model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import Analysis
from .log import Log

FILES = ("traffic_share.png", "cumulative_cost.png", "quality_by_model.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dates(t: np.ndarray) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(float(x), tz=dt.UTC) for x in t]


def _colors(models: list[str]) -> dict[str, Any]:
    cmap = _plt().get_cmap("tab20")
    return {m: cmap(i % 20) for i, m in enumerate(models)}


def traffic_share(log: Log, path: Path, *, bins: int = 60) -> None:
    """One stacked area per category: each model's share of the category's decisions, in bins of
    equal decision counts over time."""
    plt = _plt()
    cats = log.categories
    colors = _colors(log.models)
    cols = min(3, len(cats))
    rows = -(-len(cats) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax, c in zip(axes.flat, cats, strict=False):
        sel = np.flatnonzero(log.category == c)
        nb = max(1, min(bins, len(sel) // 10))
        chunks = np.array_split(sel, nb)
        models = sorted(set(log.model[sel].tolist()), key=lambda m: -(log.model[sel] == m).sum())
        xs = _dates(np.array([np.median(log.created[ch]) for ch in chunks]))
        shares = [[float((log.model[ch] == m).mean()) for ch in chunks] for m in models]
        if nb == 1:  # one bin: draw it as a flat band
            xs = _dates(np.array([log.created[sel].min(), log.created[sel].max()]))
            shares = [s * 2 for s in shares]
        ax.stackplot(xs, shares, labels=models, colors=[colors[m] for m in models])
        ax.set_ylim(0, 1)
        ax.set_title(f"{c} ({len(sel)} decisions)")
        ax.set_ylabel("traffic share")
        ax.legend(fontsize=7, loc="lower left")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    for ax in list(axes.flat)[len(cats):]:
        ax.axis("off")
    fig.suptitle("Traffic share over time, per category (UTC)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cumulative_cost(log: Log, a: Analysis, path: Path) -> None:
    """Cumulative $ of the logged decisions against sending each to its category's best model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = _dates(log.created)
    s = a.summary
    op = s["off_policy"]["overall"]
    q_log = op["logged"]["value"]
    q_best = op["targets"]["best_model"]["dr"]["value"]
    lab_log = "router (logged)" + (f", mean quality {q_log:.3f}" if q_log is not None else "")
    lab_best = "always the category's best model (estimated)" + (f", DR quality {q_best:.3f}" if q_best is not None
                                                                 else "")
    ax.plot(xs, np.cumsum(a.actual_cost), label=lab_log, color="tab:blue")
    ax.plot(xs, np.cumsum(a.cf_best_cost), label=lab_best, color="tab:red", linestyle="--")
    ax.set_ylabel("cumulative cost ($)")
    ax.set_title("Cumulative cost: the router against the single best model per category")
    ax.legend(fontsize=8, loc="upper left")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    best = ", ".join(f"{c}: {m}" for c, m in sorted(a.best.items()))
    fig.text(0.01, 0.01, f"best model per category: {best}", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quality_by_model(log: Log, a: Analysis, path: Path) -> None:
    """Mean logged quality per (category, model), grouped by category, with 95% CIs."""
    plt = _plt()
    cats = [c for c in log.categories if c in a.quality]
    models = sorted({m for c in cats for m in a.quality[c]})
    colors = _colors(log.models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cats) * max(1, len(models)) * 0.35 + 3), 4.5))
    width = 0.8 / max(1, len(models))
    for j, m in enumerate(models):
        xs, ys, lo, hi, ns = [], [], [], [], []
        for i, c in enumerate(cats):
            row = a.quality[c].get(m)
            if not row or row["mean"] is None:
                continue
            xs.append(i + (j - (len(models) - 1) / 2) * width)
            ys.append(row["mean"])
            l_, h_ = row["ci95"]
            lo.append(max(0.0, row["mean"] - l_))
            hi.append(max(0.0, h_ - row["mean"]))
            ns.append(row["n"])
        if not xs:
            continue
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=m, color=colors.get(m))
        for x, n in zip(xs, ns, strict=True):
            ax.text(x, 0.02, str(n), ha="center", va="bottom", fontsize=6, rotation=90)
    for i, c in enumerate(cats):  # a star over each category's best model
        if c in a.best and a.best[c] in models:
            j = models.index(a.best[c])
            ax.annotate("★ best", (i + (j - (len(models) - 1) / 2) * width, 1.01), ha="center", fontsize=7,
                        annotation_clip=False)
    ax.set_xticks(range(len(cats)), cats)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("mean logged quality\n(95% Wilson interval; n at the foot)")
    ax.set_title("Quality by model")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(log: Log, a: Analysis, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f for f in FILES]
    traffic_share(log, paths[0])
    cumulative_cost(log, a, paths[1])
    quality_by_model(log, a, paths[2])
    return paths
