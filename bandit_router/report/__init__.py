"""Operator views of a router: ``bandit-router stats`` (the live arm table) and ``bandit-router report``
(PNGs, a summary and off-policy estimates from the decision log).

    from bandit_router.report import make_report
    summary = make_report("router.db", "out/report")  # writes the PNGs and report.json

Modules: :mod:`.log` reads the log (read-only SQL), :mod:`.propensity` computes the choice
probability of a logged decision, :mod:`.ope` the IPS/SNIPS/DM/DR estimators and the bootstrap,
:mod:`.analysis` the report's numbers, :mod:`.plots` the PNGs, :mod:`.stats` the ``stats`` table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .analysis import Analysis, Options, analyse
from .log import Log, read_log
from .propensity import choice_probability

__all__ = ["Analysis", "Log", "Options", "analyse", "choice_probability", "make_report", "print_summary",
           "read_log"]

Progress = Callable[[str, int, int], None]


def make_report(db: str | Path, out: str | Path, *, options: Options | None = None, since: float | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
    """Read the log at ``db``, write the PNGs and ``report.json`` into ``out``; returns the summary."""
    from .plots import write_all

    tick = (lambda phase: (lambda d, t: progress(phase, d, t))) if progress else (lambda phase: None)
    log = read_log(db, since=since, progress=tick("reading decisions"))
    a = analyse(log, options, progress=tick("propensities"))
    out = Path(out)
    files = write_all(log, a, out)
    summary = {"db": str(db), "generated": time.time(), **a.summary,
               "files": [str(p) for p in files] + [str(out / "report.json")]}
    (out / "report.json").write_text(json.dumps(summary, indent=2, allow_nan=False), encoding="utf-8")
    return summary


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _ci(row: Mapping[str, Any], digits: int = 3) -> str:
    lo, hi = row["ci95"]
    return f"{_fmt(row['value'], digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _usd(v: float | None) -> str:
    return "–" if v is None else f"${v:.6f}"


def print_summary(s: Mapping[str, Any], console: Any = None) -> None:
    """The report's summary and off-policy estimates as rich tables."""
    from rich.console import Console
    from rich.table import Table

    c = console or Console()
    d = s["decisions"]
    c.print(f"[bold]{s['db']}[/bold]: {d['total']} decisions ({d['routed']} routed, {d['pass_through']} "
            f"pass-through), {d['with_feedback']} with feedback; off-policy on {d['used_off_policy']} "
            f"({d['fallback_or_unmatched']} fallbacks or unmatched left out, "
            f"{d['total'] - d['with_score_moments']} logged without score moments)")
    t = Table(title="by category")
    for col in ("category", "decisions", "best model", "its quality (n)", "router quality", "router $/req",
                "best $/req", "top traffic"):
        t.add_column(col, justify="left" if col in ("category", "best model", "top traffic") else "right")
    by_cat = s["off_policy"]["by_category"]
    for cat, share in s["traffic_share"].items():
        b = s["best_model"].get(cat)
        op = by_cat.get(cat)
        top = ", ".join(f"{m} {v:.0%}" for m, v in list(share.items())[:3])
        t.add_row(cat, str(s["decisions_by_category"][cat]),
                  b["model"] if b else "–", f"{_fmt(b['quality_mean'])} ({b['n']})" if b else "–",
                  _fmt(op["logged"]["value"]) if op else "–",
                  _usd(op["cost_per_request"]["logged"]) if op else "–",
                  _usd(op["cost_per_request"]["best_model"]) if op else "–", top)
    c.print(t)
    o = s["off_policy"]["overall"]
    t = Table(title=f"off-policy estimates of mean quality ({o['n']} decisions, 95% bootstrap CIs, propensity "
                    f"floor {s['settings']['propensity_floor']})")
    for col in ("policy", "quality (DR; router: logged)", "IPS", "SNIPS", "router − policy (DR)", "ESS",
                "$/request"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    cost = o["cost_per_request"]
    t.add_row("router (logged)", _ci(o["logged"]), "", "", "", str(o["n"]), _usd(cost["logged"]), style="bold")
    names = {"best_model": "always the best model", "uniform": "uniform over eligible"}
    for tgt, row in o["targets"].items():
        t.add_row(names[tgt], _ci(row["dr"]), _ci(row["ips"]), _ci(row["snips"]),
                  _ci(o["router_minus"][tgt]["dr"]), _fmt(row["effective_sample_size"], 0), _usd(cost[tgt]))
    c.print(t)
    c.print("ESS: the effective number of logged decisions behind an estimate ((Σw)²/Σw²); a small one means a "
            "wide interval. DM estimates (the direct model alone) are in report.json.")
    p = s["propensity"]
    c.print(f"propensity of the logged choice: min {_fmt(p['min'], 4)}, 5% {_fmt(p['p05'], 4)}, median "
            f"{_fmt(p['median'], 4)}; {p['below_floor']} below the floor")
