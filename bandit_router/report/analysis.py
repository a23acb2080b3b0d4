"""From the decision log to the report's numbers: quality by model, the best model per category,
counterfactual costs, and off-policy estimates of two alternative policies.

Definitions (also in the README, "Operator views"):

* **Quality** of a decision: ``decisions.quality``, the combined feedback (decisions without
  feedback are left out of every quality figure).
* **Best model of a category**: the model with the highest mean logged quality in that category
  among models with at least ``min_feedback`` decisions with feedback there (all models with
  feedback when none has that many). Picked on the same data it is evaluated on, so its estimated
  value is somewhat optimistic (winner's curse).
* **"Always the best model"** policy: the category's best model when it is eligible for the request,
  else the eligible model ranked highest by the same ranking (e.g. when the best one was disabled,
  too small for the prompt, or its breaker was open).
* **"Uniform"** policy: uniformly at random over the request's eligible models.
* **Counterfactual cost** of sending decision i to model m: its actual cost when m answered it;
  otherwise prompt tokens × m's input price + m's mean completion tokens in the category × m's
  output price. Prices come from the config (``--config``) when given, else are fitted on m's own
  logged costs (non-negative least squares of cost on prompt and completion tokens); with fewer than
  three costed answers, m's mean cost per answer is used.

Off-policy estimates use the routed decisions that have feedback and logged score moments and whose
model is the one the policy chose (a fallback answers with another model: such rows are counted and
left out). The propensity of the logged choice is computed from the moments
(:mod:`.propensity`), floored at ``floor``. The direct model of DR/DM is the per-(category, model)
mean logged quality (the category's mean for a model without feedback there).

The score moments are stored by arm index, the router's model order. The log stores names only for
the chosen arm, so the index → model map is recovered from the log itself, per model count K: every
decision pairs its chosen index with a name, and the majority name per index wins. An index never
chosen has no name (its direct-model value is the category mean). Reordering the models in the config
without changing their number would mix two orders; the mismatched rows are counted and left out.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .log import Log
from .ope import ESTIMATORS, Terms, bootstrap, terms
from .propensity import choice_probability

TARGETS = ("best_model", "uniform")
NOTES = [
    "quality: decisions.quality, the combined feedback of a decision; decisions without feedback are left out",
    "best_model: per category, the highest mean logged quality among models with at least min_feedback "
    "decisions with feedback there; chosen on the same data, so its estimate is somewhat optimistic",
    "always the best model: the category's best model when eligible, else the eligible model ranked next",
    "uniform: uniformly at random over the request's eligible models",
    "off-policy rows: routed decisions with feedback and score moments whose answering model is the chosen "
    "arm (fallbacks are left out); propensities from the logged moments, floored at propensity_floor",
    "dr/dm direct model: per-(category, model) mean logged quality; the bootstrap holds it fixed, so dm's "
    "interval is too narrow (dr's is not much affected)",
    "costs: a decision's own cost when the model answered it, else prompt tokens x input price + the model's "
    "mean completion tokens in the category x output price (prices: 'source' per model)",
]


@dataclass
class Options:
    floor: float = 0.01  # propensity floor for IPS/DR weights
    reps: int = 500  # bootstrap resamples
    seed: int = 0
    min_feedback: int = 10  # decisions with feedback a model needs in a category to be its "best model"
    level: float = 0.95
    prices: Mapping[str, tuple[float, float]] | None = None  # model -> ($ per 1M input, $ per 1M output)


@dataclass
class Analysis:
    summary: dict[str, Any]
    # for the plots
    best: dict[str, str]  # category -> best model
    cf_best_cost: np.ndarray  # per decision: counterfactual cost of the category's best model
    actual_cost: np.ndarray  # per decision: cost_usd, 0 when unknown
    quality: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


def _mean_ci(x: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """Mean, sd and a Wilson score interval: a quality in [0, 1] has variance at most mean(1 − mean),
    so the binomial interval is valid (conservative) for graded, non-binary qualities too, and sane
    for small n or all-equal answers."""
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": [None, None]}
    from scipy.stats import norm

    m = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    z = float(norm.ppf(0.5 + level / 2))
    centre = (m + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(max(m * (1 - m), 0.0) / n + z * z / (4 * n * n))
    return {"n": n, "mean": m, "sd": sd, "ci95": [max(0.0, centre - half), min(1.0, centre + half)]}


def quality_table(log: Log, level: float = 0.95) -> dict[str, dict[str, dict[str, Any]]]:
    """Per category, per model: mean logged quality with a 95% (Wilson) interval."""
    has = ~np.isnan(log.quality)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for c in log.categories:
        in_c = has & (log.category == c)
        rows = {}
        for m in sorted(set(log.model[in_c].tolist())):
            rows[m] = _mean_ci(log.quality[in_c & (log.model == m)], level)
        if rows:
            out[c] = rows
    return out


def rank_models(quality: Mapping[str, Mapping[str, Mapping[str, Any]]], min_feedback: int) -> dict[str, list[str]]:
    """Per category: models by mean logged quality, best first (those with ``min_feedback`` first)."""
    out = {}
    for c, rows in quality.items():
        out[c] = sorted(rows, key=lambda m, r=rows: (r[m]["n"] < min_feedback, -r[m]["mean"], m))
    return out


# -- costs ----------------------------------------------------------------------------------------
class CostModel:
    """Counterfactual cost of a decision on another model (see the module docstring)."""

    def __init__(self, log: Log, prices: Mapping[str, tuple[float, float]] | None) -> None:
        self.log = log
        done = ~np.isnan(log.cost)
        toks = done & ~np.isnan(log.completion_tokens)
        self.source: dict[str, str] = {}
        self.per_token: dict[str, tuple[float, float]] = {}
        self.mean_cost: dict[tuple[str, str] | str, float] = {}
        self.out_tokens: dict[tuple[str, str] | str, float] = {}
        all_out = log.completion_tokens[toks]
        self.default_out = float(all_out.mean()) if len(all_out) else 0.0
        for m in log.models:
            is_m = log.model == m
            for c in log.categories:
                sel = toks & is_m & (log.category == c)
                if sel.any():
                    self.out_tokens[(c, m)] = float(log.completion_tokens[sel].mean())
                sel = done & is_m & (log.category == c)
                if sel.any():
                    self.mean_cost[(c, m)] = float(log.cost[sel].mean())
            if (toks & is_m).any():
                self.out_tokens[m] = float(log.completion_tokens[toks & is_m].mean())
            if (done & is_m).any():
                self.mean_cost[m] = float(log.cost[done & is_m].mean())
        for m in set(log.models) | set(prices or {}):
            if prices and m in prices:
                pin, pout = prices[m]
                self.per_token[m] = (pin / 1e6, pout / 1e6)
                self.source[m] = "config"
                continue
            sel = toks & (log.model == m)
            if sel.sum() >= 3:
                from scipy.optimize import nnls

                a = np.column_stack([log.prompt_tokens[sel].astype(float), log.completion_tokens[sel]])
                if np.linalg.matrix_rank(a) == 2:
                    coef, _ = nnls(a, log.cost[sel])
                    self.per_token[m] = (float(coef[0]), float(coef[1]))
                    self.source[m] = "fitted"
                    continue
            self.source[m] = "mean_cost" if m in self.mean_cost else "unknown"

    def cost(self, idx: np.ndarray, model: str) -> np.ndarray:
        """Counterfactual cost of decisions ``idx`` had ``model`` answered (NaN when unknowable)."""
        log = self.log
        cats = log.category[idx]
        if model in self.per_token:
            pin, pout = self.per_token[model]
            out = np.array([self.out_tokens.get((c, model), self.out_tokens.get(model, self.default_out))
                            for c in cats])
            est = log.prompt_tokens[idx] * pin + out * pout
        else:
            est = np.array([self.mean_cost.get((c, model), self.mean_cost.get(model, np.nan)) for c in cats])
        actual = (log.model[idx] == model) & ~np.isnan(log.cost[idx])
        return np.where(actual, log.cost[idx], est)

    def prices_json(self) -> dict[str, dict[str, Any]]:
        out = {}
        for m in sorted(self.source):
            pin, pout = self.per_token.get(m, (None, None))
            out[m] = {"input_per_1m": None if pin is None else pin * 1e6,
                      "output_per_1m": None if pout is None else pout * 1e6, "source": self.source[m]}
        return out


# -- the arm order of the logged moments ----------------------------------------------------------
@dataclass
class Era:
    """The decisions whose moments have K arms, and the recovered names of those arms."""

    k: int
    rows: np.ndarray  # indices into the log
    chosen: np.ndarray
    mean: np.ndarray  # (n, K)
    sd: np.ndarray  # (n, K)
    names: list[str | None]


def eras(log: Log) -> list[Era]:
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, b in enumerate(log.moments):
        if b is not None and len(b) % 8 == 0 and (len(b) // 8) % 2 == 1 and len(b) >= 24:
            by_len[len(b) // 8].append(i)
    out = []
    for length, rows in sorted(by_len.items()):
        k = (length - 1) // 2
        m = np.frombuffer(b"".join(log.moments[i] for i in rows), dtype=np.float64).reshape(-1, length)  # type: ignore[misc]
        chosen = m[:, 0].astype(np.int64)
        idx = np.asarray(rows, dtype=np.int64)
        votes: dict[int, Counter] = defaultdict(Counter)
        for c, name in zip(chosen.tolist(), log.model[idx].tolist(), strict=True):
            votes[c][name] += 1
        names = [votes[j].most_common(1)[0][0] if votes.get(j) else None for j in range(k)]
        out.append(Era(k, idx, chosen, m[:, 1:k + 1], m[:, k + 1:], names))
    return out


# -- the analysis ---------------------------------------------------------------------------------
def analyse(log: Log, opts: Options | None = None,
            progress: Callable[[int, int], None] | None = None) -> Analysis:
    opts = opts or Options()
    n = len(log)
    if n == 0:
        raise ValueError("report: the database has no decisions yet")
    has_q = ~np.isnan(log.quality)
    qt = quality_table(log, opts.level)
    ranking = rank_models(qt, opts.min_feedback)
    best = {c: r[0] for c, r in ranking.items() if r}
    cats = log.categories
    cat_code = {c: j for j, c in enumerate(cats)}
    codes = np.array([cat_code[c] for c in log.category.tolist()], dtype=np.int64)
    cat_mean = {c: float(log.quality[has_q & (log.category == c)].mean()) if (has_q & (log.category == c)).any()
                else math.nan for c in cats}
    global_mean = float(log.quality[has_q].mean()) if has_q.any() else math.nan

    def qhat(c: str, m: str | None) -> float:
        row = qt.get(c, {}).get(m) if m is not None else None
        v = row["mean"] if row else cat_mean[c]
        return global_mean if v is None or math.isnan(v) else v

    costs = CostModel(log, opts.prices)
    all_idx = np.arange(n)
    actual = np.nan_to_num(log.cost, nan=0.0)
    cf_best = actual.copy()
    for c, m in best.items():
        sel = all_idx[log.category == c]
        est = costs.cost(sel, m)
        cf_best[sel] = np.where(np.isnan(est), actual[sel], est)

    # the logged decisions usable off-policy, era by era
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    unmatched = with_moments = 0
    eligible_counts: list[np.ndarray] = []
    todo = [(e, (e.chosen >= 0) & (e.chosen < e.k)) for e in eras(log)]
    total = int(sum(((log.learn[e.rows] & has_q[e.rows]) & ok).sum() for e, ok in todo))
    done = 0
    for e, ok in todo:
        with_moments += len(e.rows)
        names = np.array([nm if nm is not None else "" for nm in e.names], dtype=object)
        chosen = np.where(ok, e.chosen, 0)
        match = ok & (names[chosen] == log.model[e.rows])
        unmatched += int((~match).sum())
        use = match & log.learn[e.rows] & has_q[e.rows]
        if not use.any():
            continue
        rows, a = e.rows[use], chosen[use]
        mean, sd = e.mean[use], e.sd[use]
        tick = None if progress is None else (lambda d, _t, base=done: progress(base + d, total))
        p = choice_probability(mean, sd, a, progress=tick)
        done += len(rows)
        elig = np.isfinite(mean)
        ne = elig.sum(axis=1)
        eligible_counts.append(ne)
        rc = codes[rows]
        qtab = np.array([[qhat(c, nm) for nm in e.names] for c in cats])  # (categories, K)
        q = qtab[rc]
        big = 1e9
        rtab = np.array([[ranking.get(c, []).index(nm) if nm in ranking.get(c, []) else big + j
                          for j, nm in enumerate(e.names)] for c in cats], dtype=float)
        rank = np.where(elig, rtab[rc], np.inf)
        target = rank.argmin(axis=1)
        rr = np.arange(len(rows))
        parts["rows"].append(rows)
        parts["reward"].append(log.quality[rows])
        parts["p"].append(p)
        parts["dm_logged"].append(q[rr, a])
        parts["tp_best_model"].append((target == a).astype(float))
        parts["dmt_best_model"].append(q[rr, target])
        parts["best_unavailable"].append(np.array([names[t] != best.get(c) for t, c in
                                                   zip(target.tolist(), log.category[rows].tolist(), strict=True)]))
        parts["tp_uniform"].append(1.0 / ne)
        parts["dmt_uniform"].append(np.where(elig, q, 0.0).sum(axis=1) / ne)
        # counterfactual costs of the targets on these rows
        cf = np.full((len(rows), e.k), np.nan)
        for j, nm in enumerate(e.names):
            if nm is not None:
                cf[:, j] = costs.cost(rows, nm)
        cf = np.where(elig, cf, np.nan)
        parts["cost_best_model"].append(cf[rr, target])
        with np.errstate(invalid="ignore"):
            parts["cost_uniform"].append(np.nanmean(np.where(elig, cf, np.nan), axis=1))
        parts["cost_logged"].append(log.cost[rows])
    cat_arr = log.category
    if parts:
        cols = {k: np.concatenate(v) for k, v in parts.items()}
    else:
        cols = {k: np.zeros(0) for k in ("rows", "reward", "p", "dm_logged", "tp_best_model", "dmt_best_model",
                                          "best_unavailable", "tp_uniform", "dmt_uniform", "cost_best_model",
                                          "cost_uniform", "cost_logged")}
        cols["rows"] = cols["rows"].astype(np.int64)

    def block(sel: np.ndarray, seed: int) -> dict[str, Any]:
        r = cols["reward"][sel]
        out: dict[str, Any] = {"n": int(sel.sum())}
        stats: dict[str, tuple[np.ndarray, np.ndarray]] = {"logged": (r, np.ones_like(r))}
        tt: dict[str, Terms] = {}
        for tgt in TARGETS:
            t = tt[tgt] = terms(r, cols["p"][sel], cols[f"tp_{tgt}"][sel], cols[f"dmt_{tgt}"][sel],
                                cols["dm_logged"][sel], floor=opts.floor)
            for est in ESTIMATORS:
                stats[f"{tgt}.{est}"] = (t.num[est], t.den[est])
            for est in ("ips", "dr"):
                stats[f"diff.{tgt}.{est}"] = (r - t.num[est], np.ones_like(r))
        ci = bootstrap(stats, reps=opts.reps, seed=seed, level=opts.level)

        def val(v: float, key: str) -> dict[str, Any]:
            lo, hi = ci[key]
            return {"value": _num(v), "ci95": [_num(lo), _num(hi)]}

        out["logged"] = val(float(r.mean()) if len(r) else math.nan, "logged")
        out["targets"] = {}
        out["router_minus"] = {}
        for tgt in TARGETS:
            t = tt[tgt]
            row: dict[str, Any] = {est: val(t.value(est), f"{tgt}.{est}") for est in ESTIMATORS}
            row["effective_sample_size"] = _num(t.ess)
            row["clipped"] = t.clipped
            if tgt == "best_model":
                row["best_model_unavailable_share"] = _num(float(cols["best_unavailable"][sel].mean())) if len(r) \
                    else None
            out["targets"][tgt] = row
            out["router_minus"][tgt] = {est: val(float(r.mean() - t.num[est].mean()) if len(r) else math.nan,
                                                 f"diff.{tgt}.{est}") for est in ("ips", "dr")}
        out["cost_per_request"] = {
            "logged": _nanmean(cols["cost_logged"][sel]),
            "best_model": _nanmean(cols["cost_best_model"][sel]),
            "uniform": _nanmean(cols["cost_uniform"][sel])}
        return out

    everything = np.ones(len(cols["reward"]), dtype=bool)
    ope_cats = cat_arr[cols["rows"]] if len(cols["rows"]) else np.zeros(0, dtype=object)
    off_policy = {"overall": block(everything, opts.seed),
                  "by_category": {c: block(ope_cats == c, opts.seed + 1 + j) for j, c in enumerate(cats)
                                  if (ope_cats == c).any()}}
    p_all = cols["p"]
    share, per_cat = {}, {}
    for c in cats:
        in_c = log.category == c
        per_cat[c] = int(in_c.sum())
        share[c] = {m: v / per_cat[c] for m, v in Counter(log.model[in_c].tolist()).most_common()}
    summary: dict[str, Any] = {
        "decisions": {
            "total": n, "routed": int(log.learn.sum()), "pass_through": int((~log.learn).sum()),
            "with_feedback": int(has_q.sum()), "with_score_moments": with_moments,
            "fallback_or_unmatched": unmatched, "used_off_policy": int(len(cols["rows"])),
            "score_moments_column": log.has_moments_column,
        },
        "decisions_by_category": per_cat,
        "feedback_by_source": dict(sorted(log.feedback_by_source.items())),
        "period": {"first": float(log.created.min()), "last": float(log.created.max())},
        "settings": {"propensity_floor": opts.floor, "bootstrap_resamples": opts.reps, "seed": opts.seed,
                     "min_feedback": opts.min_feedback, "level": opts.level},
        "best_model": {c: {"model": best[c], "quality_mean": qt[c][best[c]]["mean"], "n": qt[c][best[c]]["n"],
                           "ranking": ranking[c]} for c in best},
        "quality_by_model": qt,
        "traffic_share": share,
        "prices": costs.prices_json(),
        "cost": {"logged_total": float(actual.sum()), "best_model_total": float(cf_best.sum()),
                 "logged_per_request": float(actual.mean()), "best_model_per_request": float(cf_best.mean())},
        "propensity": {
            "min": _num(float(p_all.min())) if len(p_all) else None,
            "p05": _num(float(np.quantile(p_all, 0.05))) if len(p_all) else None,
            "median": _num(float(np.median(p_all))) if len(p_all) else None,
            "below_floor": int((p_all < opts.floor).sum()),
        },
        "off_policy": off_policy,
        "notes": NOTES,
    }
    return Analysis(summary, best, cf_best, actual, qt)


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _nanmean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else None
