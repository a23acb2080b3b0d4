"""The RouterBench replay: the router against references and peer learners on one stream.

The router sees only the chosen model's outcome and cost (bandit feedback). On the
same stream, in the same run, it reports each single model, uniform random, the
per-category best model in hindsight, the per-prompt oracle, and peer learners
(Vowpal Wabbit, MABWiser) given the same features plus the category.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..costs import Price
from ..pacing import RequestPacer
from ..router import BanditSettings, ModelSpec, Router
from .data import Table


@dataclass(frozen=True)
class Drift:
    """``degrade:MODEL:FRACTION@STEP``, ``price:MODEL:FACTOR@STEP`` or ``add:MODEL@STEP``."""

    kind: str
    model: str
    value: float
    step: int

    @classmethod
    def parse(cls, spec: str, models: Sequence[str]) -> Drift:
        usage = "expected degrade:MODEL:FRACTION@STEP, price:MODEL:FACTOR@STEP or add:MODEL@STEP"
        body, at, step_s = spec.strip().rpartition("@")
        kind, colon, rest = body.partition(":")
        if not at or not colon or kind not in ("degrade", "price", "add"):
            raise ValueError(f"--drift {spec!r}: {usage}")
        if not step_s.isdigit():
            raise ValueError(f"--drift {spec!r}: the step {step_s!r} is not a whole number; {usage}")
        step = int(step_s)
        if kind == "add":
            model, value = rest, 1.0
            if model not in models and rest.rpartition(":")[0] in models:
                raise ValueError(f"--drift {spec!r}: add takes no value (add:MODEL@STEP)")
        else:
            model, colon, value_s = rest.rpartition(":")
            if not colon:
                raise ValueError(f"--drift {spec!r}: {kind} needs a value ({kind}:MODEL:VALUE@STEP)")
            try:
                value = float(value_s)
            except ValueError:
                raise ValueError(f"--drift {spec!r}: the value {value_s!r} is not a number") from None
            if kind == "degrade" and not 0.0 <= value <= 1.0:
                raise ValueError(f"--drift {spec!r}: the fraction must be in [0, 1]")
            if kind == "price" and not value > 0:
                raise ValueError(f"--drift {spec!r}: the price factor must be > 0")
        if model not in models:
            raise ValueError(f"--drift {spec!r}: unknown model {model!r} (models: {', '.join(models)})")
        return cls(kind, model, value, step)


@dataclass
class ReplayOptions:
    cost_weight: float = 20.0
    steps: int = 20_000
    seed: int = 0
    once: bool = False
    hide_category: bool = False
    drift: list[Drift] = field(default_factory=list)
    peers: tuple[str, ...] = ("vw", "mabwiser_lints")
    settings: BanditSettings | None = None
    features: str = "full"  # "full" (d=32), "dense" (no hashed words) or "intercept" (a plain MAB)
    budget: float | None = None  # $ per request: the cost weight is a pacer's (pacing.RequestPacer), not fixed
    budget_step: float | None = None  # the pacer's step η (None: RequestPacer's default)


@dataclass
class Stream:
    """The per-step world: which row, its realised outcome and cost on every model."""

    rows: np.ndarray
    quality: np.ndarray  # (T, K)
    cost: np.ndarray  # (T, K)
    available: np.ndarray  # (T, K) bool
    categories: np.ndarray  # (T,) true categories


def make_stream(table: Table, opts: ReplayOptions) -> Stream:
    rng = np.random.default_rng(opts.seed)
    rows = rng.permutation(table.n) if opts.once else rng.integers(0, table.n, opts.steps)
    t = len(rows)
    q = table.quality[rows].copy()
    c = table.cost[rows].copy()
    avail = np.ones(q.shape, dtype=bool)
    lose = np.random.default_rng([opts.seed, 1]).random(table.quality.shape)  # per (row, model)
    for d in opts.drift:
        k = table.models.index(d.model)
        s = min(d.step, t)
        if d.kind == "degrade":
            q[s:, k] = np.where(lose[rows[s:], k] < d.value, 0.0, q[s:, k])
        elif d.kind == "price":
            c[s:, k] *= d.value
        elif d.kind == "add":
            avail[:s, k] = False
    return Stream(rows, q, c, avail, table.categories[rows])


def _summary(q: np.ndarray, c: np.ndarray, w: float) -> dict[str, float]:
    return {"quality": float(q.mean()), "cost": float(c.mean()), "utility": float(q.mean() - w * c.mean())}


def references(table: Table, stream: Stream, w: float) -> dict[str, dict[str, float]]:
    """Single models, random, per-category table in hindsight, per-prompt oracle."""
    out: dict[str, dict[str, float]] = {}
    for k, m in enumerate(table.models):
        out[m] = _summary(stream.quality[:, k], stream.cost[:, k], w)
    u = stream.quality - w * stream.cost
    av = stream.available
    n_av = av.sum(1)
    out["random"] = {"quality": float(((stream.quality * av).sum(1) / n_av).mean()),
                     "cost": float(((stream.cost * av).sum(1) / n_av).mean())}
    out["random"]["utility"] = out["random"]["quality"] - w * out["random"]["cost"]
    best = np.where(av, u, -np.inf).argmax(1)
    ix = np.arange(len(best))
    out["oracle"] = _summary(stream.quality[ix, best], stream.cost[ix, best], w)
    table_choice = np.zeros(len(best), dtype=int)
    always = av.all(0)
    for cat in np.unique(stream.categories):
        m = stream.categories == cat
        table_choice[m] = int(np.where(always, u[m].sum(0), -np.inf).argmax())
    out["hindsight_table"] = _summary(stream.quality[ix, table_choice], stream.cost[ix, table_choice], w)
    return out


def shift_requests(choices: np.ndarray, cats: np.ndarray, model: int, step: int,
                   window: int = 100) -> dict[str, int]:
    """Per affected category: requests of that category after ``step`` until 90% of the final
    traffic shift for ``model`` has happened (the forward ``window`` share is within 10% of the
    final share). Categories where the model's share moved by less than 0.05 are not affected."""
    out = {}
    for cat in np.unique(cats):
        seq = choices[cats == cat] == model
        before_n = int((cats[:step] == cat).sum())
        after = seq[before_n:].astype(float)
        if before_n < 10 or len(after) < 2 * window:
            continue
        s0 = seq[max(0, before_n - 500):before_n].mean()
        s1 = after[-max(window, len(after) // 5):].mean()
        if abs(s0 - s1) < 0.05:
            continue
        target = s1 + 0.1 * (s0 - s1)
        fwd = np.convolve(after, np.ones(window) / window, mode="valid")
        ok = (fwd <= target) if s0 > s1 else (fwd >= target)
        hits = np.flatnonzero(ok)
        out[str(cat)] = int(hits[0]) if len(hits) else len(after)
    return out


def make_router(table: Table, opts: ReplayOptions, prices: dict[str, Price],
                hidden: Sequence[str] = ()) -> Router:
    specs = [ModelSpec(m, prices[m]) for m in table.models if m not in hidden]
    settings = opts.settings or BanditSettings(cost_weight=opts.cost_weight, seed=opts.seed)
    dim = feature_view(table.x[:1], opts.features).shape[1]
    return Router(specs, settings, categories=(), dim=dim)


def feature_view(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "full":
        return x
    from ..features import N_DENSE
    if kind == "dense":
        return x[:, :N_DENSE]
    if kind == "intercept":
        return x[:, :1]
    raise ValueError(f"--features {kind!r}: expected full, dense or intercept")


def warm_start(router: Router, warm: Table, opts: ReplayOptions, category_of: Callable[[int], str]) -> int:
    xw = feature_view(warm.x, opts.features)
    records = ((category_of(i), xw[i], dict(zip(warm.models, warm.quality[i], strict=True)),
                dict(zip(warm.models, warm.output_tokens[i], strict=True))) for i in range(warm.n))
    return router.warm_start(records)


def run(table: Table, opts: ReplayOptions, *, warm: Table | None = None,
        progress: Callable[[int, int], None] | None = None, with_peers: bool = True) -> dict:
    """Replay ``opts.steps`` requests; returns the report (the ``--json`` object)."""
    from .peers import make_peer

    w = opts.cost_weight
    stream = make_stream(table, opts)
    t_steps, n_models = stream.quality.shape
    prices = table.fit_prices()
    added = [d for d in opts.drift if d.kind == "add"]
    router = make_router(table, opts, prices, hidden=[d.model for d in added])
    router_cols = [table.models.index(m) for m in router.models]

    inferred: np.ndarray | None = None
    if opts.hide_category:
        inferred = np.array([router.infer_category(p) for p in table.prompts])
        cat_of_row = inferred
    else:
        cat_of_row = table.categories
    if warm is not None:
        warm_cats = (np.array([router.infer_category(p) for p in warm.prompts]) if opts.hide_category
                     else warm.categories)
        warm_start(router, warm, opts, lambda i: str(warm_cats[i]))

    x_all = feature_view(table.x, opts.features)
    cat_names = sorted(set(table.categories))
    onehot = {c: np.eye(len(cat_names))[i] for i, c in enumerate(cat_names)}
    peers = []
    if with_peers:
        for name in opts.peers:
            dim = x_all.shape[1] + len(cat_names)
            peers.append(make_peer(name, n_models, dim, opts.seed))
    peer_choice = {p.name: np.zeros(t_steps, dtype=int) for p in peers}
    peer_ns = {p.name: 0 for p in peers}

    choices = np.zeros(t_steps, dtype=int)
    ns = np.zeros(t_steps, dtype=np.int64)
    events = sorted([d for d in opts.drift if d.kind in ("price", "add")], key=lambda d: d.step)
    ev = 0
    eligible: np.ndarray | None = None
    perf = time.perf_counter_ns
    pacer = None
    if opts.budget is not None:
        step = {} if opts.budget_step is None else {"step": opts.budget_step}
        pacer = RequestPacer(opts.budget, **step)
    weights = np.full(t_steps, w)
    for t in range(t_steps):
        while ev < len(events) and events[ev].step <= t:
            d = events[ev]
            if d.kind == "price":
                router.scale_price(d.model, d.value)
            else:
                router.add_model(ModelSpec(d.model, prices[d.model]))
                router_cols.append(table.models.index(d.model))
            ev += 1
        row = stream.rows[t]
        x = x_all[row]
        if pacer is not None:
            weights[t] = pacer.cost_weight(0.0)
        t0 = perf()
        dec = router.decide_features(x, str(cat_of_row[row]), table.prompt_tokens[row], cost_weight=weights[t],
                                     eligible=eligible)
        ns[t] = perf() - t0
        k = router_cols[dec.arm]
        choices[t] = k
        if pacer is not None:
            pacer.spend(float(stream.cost[t, k]))
        router.learn(dec, float(stream.quality[t, k]))
        router.observe_output(dec, table.output_tokens[row, k])
        if peers:
            xp = np.concatenate([x, onehot[stream.categories[t]]])
            mask = stream.available[t]
            for p in peers:
                t1 = perf()
                a = p.choose(xp, mask)
                peer_ns[p.name] += perf() - t1
                peer_choice[p.name][t] = a
                p.learn(xp, a, float(stream.quality[t, a] - w * stream.cost[t, a]))
        if progress is not None and (t % 500 == 499 or t == t_steps - 1):
            progress(t + 1, t_steps)
    for p in peers:
        if hasattr(p, "close"):
            p.close()

    ix = np.arange(t_steps)
    refs = references(table, stream, w)
    r = _summary(stream.quality[ix, choices], stream.cost[ix, choices], w)
    r["share"] = _share(choices, table.models)
    r["us_per_decision"] = float(np.median(ns) / 1e3)
    r["us_per_decision_p99"] = float(np.percentile(ns, 99) / 1e3)
    r["by_category"] = {
        str(c): {**_summary(stream.quality[m, choices[m]], stream.cost[m, choices[m]], w),
                 "share": _share(choices[m], table.models)}
        for c in np.unique(stream.categories) for m in [stream.categories == c]
    }
    baselines = dict(refs)
    for p in peers:
        ch = peer_choice[p.name]
        baselines[p.name] = {**_summary(stream.quality[ix, ch], stream.cost[ix, ch], w),
                             "share": _share(ch, table.models),
                             "us_per_decision": peer_ns[p.name] / t_steps / 1e3}
    best = max(table.models, key=lambda m: refs[m]["quality"])
    for s in (r, *baselines.values()):
        s["quality_pct_of_best"] = 100 * s["quality"] / refs[best]["quality"]
        s["cost_pct_of_best"] = 100 * s["cost"] / refs[best]["cost"]
    report = {
        "router": r,
        "baselines": baselines,
        "best_single": {"model": best, **refs[best]},
        "vs_best_single": {"quality_pct": 100 * r["quality"] / refs[best]["quality"],
                           "cost_pct": 100 * r["cost"] / refs[best]["cost"]},
        "steps": int(t_steps),
        "cost_weight": w,
        "seed": opts.seed,
        "features": opts.features,
        "hide_category": opts.hide_category,
        "warm_start_rows": 0 if warm is None else warm.n,
        "choices": choices,
        "stream_categories": stream.categories,
    }
    if inferred is not None:
        report["category_agreement"] = _agreement(table.categories, inferred)
    if pacer is not None:
        report["budget"] = {"usd_per_request": opts.budget, "spend_per_request": pacer.spent / t_steps,
                            "spend_ratio": pacer.ratio, "quality": r["quality"],
                            "final_cost_weight": pacer.cost_weight(0.0),
                            "median_cost_weight": float(np.median(weights))}
        report["cost_weights"] = weights
    drift_report: dict[str, int] = {}
    for d in opts.drift:
        for cat, n in shift_requests(choices, stream.categories, table.models.index(d.model), d.step).items():
            drift_report[cat] = max(drift_report.get(cat, 0), n)
    if opts.drift:
        report["drift"] = drift_report
    return report


def _share(choices: np.ndarray, models: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(choices, minlength=len(models)) / max(len(choices), 1)
    return {m: float(s) for m, s in zip(models, counts, strict=True) if s > 0}


def _agreement(truth: np.ndarray, inferred: np.ndarray) -> float:
    """Share of rows whose inferred category is the majority label of their true category."""
    agree = 0
    for c in np.unique(truth):
        labels, counts = np.unique(inferred[truth == c], return_counts=True)
        agree += counts.max()
    return agree / len(truth)
