"""``bandit-router demo``: the simulator and the router as real processes, a few thousand requests
through the official ``openai`` client, server-side grading, a regression and a deprecation mid-run.

The router learns only from automated grading: each request carries a reference
(``router.reference``) and the router's configured ``regex`` grader scores the answer in the
background. For every request the demo also asks each model directly (not through the router), so "always use
the single best model" is measured on the very same prompts, not estimated.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

from .config import EXAMPLE_CONFIG
from .costs import Price
from .procs import free_port, start, stop
from .server.auth import ADMIN_TOKEN_ENV
from .simulator.protocol import grade

MIX = {"coding": 0.3, "reasoning": 0.2, "science": 0.2, "computer_use": 0.15, "general": 0.15}


def task(category: str, i: int, rng: random.Random) -> tuple[str, str]:
    """A prompt of the category, with the hidden expected answer the simulator's protocol needs."""
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if category == "coding":
        q, e = f"Write a Python function f(x) returning x * {a}. What is f({b})?", str(a * b)
    elif category == "reasoning":
        q, e = (f"Prove step by step: if every zork is a blip and {a} zorks exist, deduce whether there are "
                f"at least {a} blips.", "yes")
    elif category == "science":
        q, e = (f"Which has more mass, {a} kg of iron or {b} kg of feathers? Think about gravity and density. "
                "A) iron B) feathers", "A" if a >= b else "B")
    elif category == "computer_use":
        q, e = f"Click the button labelled {a} in the browser window, then report its label.", str(a)
    else:
        q, e = f"Summarise in one word the number {a}.", str(a)
    return f"{q}\nEXPECTED: {e}", e


@dataclass
class Record:
    step: int
    category: str
    model: str
    quality: float
    cost: float
    direct: dict[str, tuple[float, float]] = field(default_factory=dict)  # model -> (quality, cost)


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None,
                token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with session.post(url, json=body or {}, headers=headers) as r:
        r.raise_for_status()
        return await r.json()


async def _traffic(router_url: str, sim_url: str, n: int, seed: int, prices: dict[str, Price],
                   concurrency: int, progress, admin_token: str) -> tuple[list[Record], list[tuple[int, str]]]:
    import openai

    rng = random.Random(seed)
    cats = list(MIX)
    plan = [rng.choices(cats, weights=list(MIX.values()))[0] for _ in range(n)]
    tasks = [task(c, i, rng) for i, c in enumerate(plan)]
    routed = openai.AsyncOpenAI(base_url=router_url + "/v1", api_key="demo", max_retries=2)
    direct = openai.AsyncOpenAI(base_url=sim_url + "/v1", api_key="demo", max_retries=2)
    records: list[Record | None] = [None] * n
    events: list[tuple[int, str]] = []
    counter = {"done": 0}
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> None:
            category, (prompt, expected) = plan[i], tasks[i]
            messages = [{"role": "user", "content": prompt}]
            async with sem:
                # the router grades the answer itself (its `expected` grader, from the config) and
                # learns from that: the client posts no feedback at all
                reference = {"pattern": rf"^ANSWER: {re.escape(expected)}\.?$"}
                c = await routed.chat.completions.create(
                    model="auto", messages=messages, extra_headers={"X-Router-Category": category},
                    extra_body={"router": {"reference": reference}})
                q = grade(c.choices[0].message.content, expected)  # for the report only
                rec = Record(i, category, c.model, q, c.model_extra["router"]["cost_usd"])
                for m, price in prices.items():
                    d = await direct.chat.completions.create(model=m, messages=messages,
                                                             extra_headers={"X-Sim-Category": category})
                    rec.direct[m] = (grade(d.choices[0].message.content, expected),
                                     price.cost(d.usage.prompt_tokens, d.usage.completion_tokens))
                records[i] = rec
                counter["done"] += 1
                progress(counter["done"], n)

        # three phases: learn; a model regresses; a model is deprecated
        cut1, cut2 = int(n * 0.4), int(n * 0.7)
        await asyncio.gather(*(one(i) for i in range(cut1)))
        top = Counter(r.model for r in records[max(0, cut1 - 200):cut1] if r).most_common()
        regressed = top[0][0]
        await _post(http, f"{sim_url}/admin/models/{regressed}", {"quality_scale": 0.4})
        events.append((cut1, f"{regressed} regresses (quality x0.4)"))
        await asyncio.gather(*(one(i) for i in range(cut1, cut2)))
        top = Counter(r.model for r in records[max(cut1, cut2 - 200):cut2] if r and r.model != regressed).most_common()
        deprecated = top[0][0]
        await _post(http, f"{router_url}/admin/models/{deprecated}/disable", token=admin_token)
        events.append((cut2, f"{deprecated} deprecated"))
        await asyncio.gather(*(one(i) for i in range(cut2, n)))
    await routed.close()
    await direct.close()
    return [r for r in records if r is not None], events


def _plot(records: list[Record], events: list[tuple[int, str]], models: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(MIX)
    fig, axes = plt.subplots(1, len(cats), figsize=(4.2 * len(cats), 3.8), sharey=True)
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(models)}
    for ax, cat in zip(axes, cats, strict=True):
        rs = [r for r in records if r.category == cat]
        steps = np.array([r.step for r in rs])
        win = max(10, len(rs) // 25)
        for m in models:
            hit = np.array([r.model == m for r in rs], float)
            if hit.sum() == 0 or len(rs) < win:
                continue
            ax.plot(steps[win - 1:], np.convolve(hit, np.ones(win) / win, mode="valid"), label=m, color=colors[m])
        for step, label in events:
            ax.axvline(step, color="grey", ls="--", lw=0.8)
            ax.text(step, 1.02, label.split(" ")[0] + ("↓" if "regress" in label else "✗"), fontsize=7,
                    rotation=0, ha="center")
        ax.set_title(cat, pad=14)
        ax.set_xlabel("request")
        ax.set_ylim(0, 1.08)
    axes[0].set_ylabel("traffic share (trailing window)")
    axes[-1].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run_demo(*, requests: int = 3000, seed: int = 0, db: str = "bandit_router_demo.db", out: str = "out/demo.png",
             concurrency: int = 16, cost_weight: float = 20.0) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    console = Console()
    db_path = Path(db)
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    sim_port, router_port = free_port(), free_port()
    sim_url, router_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{router_port}"
    cfg = yaml.safe_load(EXAMPLE_CONFIG)
    for m in cfg["models"]:
        m["base_url"] = sim_url + "/v1"
    cfg["bandit"]["cost_weight"] = cost_weight
    cfg["bandit"]["seed"] = seed
    cfg["grading"] = {"graders": {"*": [{"type": "regex", "name": "expected", "mode": "search",
                                         "multiline": True, "ignore_case": True}]}}
    prices = {m["name"]: Price(m["input_price"], m["output_price"]) for m in cfg["models"]}
    models = list(prices)
    admin_token = secrets.token_urlsafe(32)  # this run's admin API token: the router gets it by environment
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "router.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        console.print(f"simulator on {sim_url}, router on {router_url}, state in {db_path} (SQLite)")
        sim = start(["simulate", "--port", str(sim_port), "--seed", str(seed), "--latency-scale", "0"],
                    sim_url + "/healthz")
        try:
            router = start(["serve", "--config", str(config_path), "--port", str(router_port), "--db", str(db_path)],
                           router_url + "/healthz", env={ADMIN_TOKEN_ENV: admin_token})
            try:
                t0 = time.monotonic()
                with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), console=console) as bar:
                    job = bar.add_task("requests", total=requests)
                    records, events = asyncio.run(_traffic(router_url, sim_url, requests, seed, prices, concurrency,
                                                           lambda d, t: bar.update(job, completed=d), admin_token))
                elapsed = time.monotonic() - t0
                arms = urllib.request.Request(router_url + "/admin/arms",
                                              headers={"Authorization": f"Bearer {admin_token}"})
                deadline = time.monotonic() + 15  # gradings run in the background: let the last ones land
                while True:
                    with urllib.request.urlopen(arms, timeout=10) as r:
                        graders = json.loads(r.read())["graders"]
                    done = sum(n for counts in graders.values() for n in counts.values())
                    if done >= requests or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                console.print(f"the router learned only from its own grader: {graders}")
            finally:
                stop(router)
        finally:
            stop(sim)

    cut1, cut2 = events[0][0], events[1][0]
    phases = {"learning": (0, cut1), f"after: {events[0][1]}": (cut1, cut2), f"after: {events[1][1]}": (cut2, requests)}
    table = Table(title="traffic share per category, by phase (top models)")
    table.add_column("category")
    for p in phases:
        table.add_column(p)
    for cat in MIX:
        row = [cat]
        for lo, hi in phases.values():
            rs = [r.model for r in records if r.category == cat and lo <= r.step < hi]
            top = Counter(rs).most_common(2)
            row.append(", ".join(f"{m} {c / len(rs):.0%}" for m, c in top) if rs else "-")
        table.add_row(*row)
    console.print(table)

    q_router = float(np.mean([r.quality for r in records]))
    c_router = float(np.sum([r.cost for r in records]))
    direct = {m: (float(np.mean([r.direct[m][0] for r in records])), float(np.sum([r.direct[m][1] for r in records])))
              for m in models}
    # "always the single best model": the best by graded quality on these prompts; when it is the
    # model deprecated mid-run, a single-model deployment must move too: to the next best
    ranked = sorted(direct, key=lambda m: -direct[m][0])
    best, deprecated = ranked[0], events[1][1].split(" ")[0]
    successor = next(m for m in ranked if m != deprecated)
    chosen = [(successor if (best == deprecated and r.step >= cut2) else best) for r in records]
    qb = float(np.mean([r.direct[m][0] for r, m in zip(records, chosen, strict=True)]))
    cb = float(np.sum([r.direct[m][1] for r, m in zip(records, chosen, strict=True)]))
    label = best if best != deprecated else f"{best}, then {successor} once {best} is deprecated"
    summary = Table(title=f"{len(records)} requests in {elapsed:.0f} s: the router against every single model, "
                          "same prompts")
    for col in ("policy", "quality (graded)", "total $", "$ vs router"):
        summary.add_column(col)
    summary.add_row("router", f"{q_router:.3f}", f"{c_router:.3f}", "")
    summary.add_row(f"single best model ({label})", f"{qb:.3f}", f"{cb:.3f}", f"{cb / c_router:.1f}x")
    for m, (q, c) in sorted(direct.items(), key=lambda kv: -kv[1][0]):
        summary.add_row(f"always {m}", f"{q:.3f}", f"{c:.3f}", f"{c / c_router:.1f}x")
    console.print(summary)
    saving = 1 - c_router / cb
    verdict = f"{saving:.0%} cheaper" if saving >= 0 else f"{-saving:.0%} more expensive"
    console.print(f"against the single best model ({label}): {verdict} at {q_router / qb:.1%} of its quality "
                  f"(the seed article claims 40-60% savings for routing)")
    _plot(records, events, models, Path(out))
    console.print(f"traffic share over time: {out}")
    return {"requests": len(records), "router": {"quality": q_router, "cost": c_router},
            "direct": {m: {"quality": q, "cost": c} for m, (q, c) in direct.items()}, "best_single": label,
            "best_single_result": {"quality": qb, "cost": cb}, "saving": saving, "events": events,
            "graders": graders}
