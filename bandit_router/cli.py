"""``bandit-router`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np


def _progress_bar(total: int, label: str):
    """A rich progress bar on a terminal; nothing when stderr is not one."""
    if not sys.stderr.isatty():
        return None, (lambda done, total: None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), transient=True)
    task = bar.add_task(label, total=total)
    return bar, (lambda done, total: bar.update(task, completed=done))


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import data, report
    from .replay.run import Drift, ReplayOptions, run
    from .router import BanditSettings

    table = data.load(args.files)
    warm = data.load(args.warm_start) if args.warm_start else None
    if args.warm_split:
        if not 0.0 < args.warm_split < 1.0:
            raise SystemExit("replay: --warm-split must be in (0, 1)")
        perm = np.random.default_rng([args.seed, 2]).permutation(table.n)
        cut = int(round(args.warm_split * table.n))
        warm, table = table.subset(np.sort(perm[:cut])), table.subset(np.sort(perm[cut:]))
    drift = [Drift.parse(s, table.models) for s in args.drift]
    settings = BanditSettings(cost_weight=args.cost_weight, seed=args.seed,
                              half_life_events=None if args.half_life <= 0 else args.half_life,
                              explore=args.explore, feature_precision=args.feature_precision,
                              prior_strength=args.prior_strength)
    opts = ReplayOptions(cost_weight=args.cost_weight, steps=args.steps, seed=args.seed, once=args.once,
                         hide_category=args.hide_category, drift=drift, settings=settings,
                         peers=tuple(p for p in args.peers.split(",") if p), features=args.features,
                         budget=args.budget)
    if args.budget is not None and not 0 < args.budget < float("inf"):
        raise SystemExit("replay: --budget must be a positive number of dollars per request")
    total = table.n if args.once else args.steps
    bar, progress = _progress_bar(total, "replay")
    if bar is not None:
        bar.start()
    try:
        result = run(table, opts, warm=warm, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    if args.plot:
        report.plot(table, opts, result, args.plot, warm=warm)
    if args.json:
        print(json.dumps(report.jsonable(result), indent=2))
    else:
        report.print_table(result)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import EXAMPLE_CONFIG

    path = Path(args.path)
    if path.exists() and not args.force:
        raise ValueError(f"init: {path} exists (use --force to overwrite)")
    path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    print(f"wrote {path}: models are the simulator's at http://127.0.0.1:9000/v1.\n"
          f"next: `bandit-router simulate` in one terminal, `bandit-router serve --config {path}` in another.")
    return 0


GC_YOUNG_THRESHOLD = 10_000  # allocations between young-generation collections (Python's default: 700)


async def _freeze_startup_heap(app: object) -> None:
    """Garbage collection for serving: objects alive once the service has started (modules, schemas,
    restored state, about 130k of them) are moved out of the collector's sight, and the young
    generation is collected every 10,000 allocations instead of 700. Requests make no reference
    cycles (reference counting frees them), yet with the defaults every collection walked the
    in-flight requests and every full one the whole startup heap: about 200 µs of CPU a request
    at 50 connections (``benchmarks/overhead.py``)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from aiohttp import web

    from .config import load_config
    from .server import make_app
    from .server.auth import AuthSettings, install_log_redaction, is_loopback

    config = load_config(args.config)
    host = args.host or config.server.host
    if args.admin_local_only and not is_loopback(host):
        raise ValueError(f"serve: --admin-local-only needs a loopback --host (127.0.0.1, ::1 or localhost), "
                         f"not {host!r}; to serve other hosts set BANDIT_ROUTER_ADMIN_TOKEN or admin.token")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the admin token, client keys and upstream keys never reach the log, whatever a message carries
    install_log_redaction(AuthSettings.from_config(config).secrets)
    port = args.port if args.port is not None else config.server.port
    app = make_app(config, db_path=args.db, admin_local_only=args.admin_local_only)
    app.on_startup.append(_freeze_startup_heap)  # runs after the service's cleanup context has started
    loop = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    web.run_app(app, host=host, port=port, access_log=logging.getLogger("aiohttp.access") if args.access_log
                else None, print=lambda *a: print(f"bandit-router serving on http://{host}:{port}", flush=True),
                loop=loop, backlog=2048)  # bursts of new connections queue instead of being reset
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import json

    from .demo import run_demo

    result = run_demo(requests=args.requests, seed=args.seed, db=args.db, out=args.out,
                      concurrency=args.concurrency, cost_weight=args.cost_weight)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulator import ProfileError, builtin_profile, profile_yaml, run_simulator

    if args.print_profile:
        print(profile_yaml(builtin_profile()))
        return 0
    try:
        run_simulator(host=args.host, port=args.port, profile_path=args.profile, seed=args.seed,
                      latency_scale=args.latency_scale)
    except ProfileError as e:
        raise ValueError(f"simulate: {e}") from None
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .report.stats import fetch_arms, render

    data = fetch_arms(args.url, args.token, timeout=args.timeout)
    if args.json:
        cats = data["categories"]
        if args.category is not None:
            render(data, category=args.category, console=_NullConsole())  # the same check of the name
            data = {**data, "categories": {args.category: cats[args.category]}}
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console

    render(data, category=args.category, console=Console(width=None if sys.stdout.isatty() else 160))
    return 0


class _NullConsole:
    def print(self, *a, **k) -> None:
        pass


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .report import Options, make_report, print_summary

    prices = None
    if args.config:
        from .config import load_config

        prices = {m.name: (m.input_price, m.output_price) for m in load_config(args.config).models}
    if not 0.0 < args.min_propensity < 1.0:
        raise ValueError("report: --min-propensity must be in (0, 1)")
    opts = Options(floor=args.min_propensity, reps=args.bootstrap, seed=args.seed, min_feedback=args.min_feedback,
                   prices=prices)
    bar = None
    tasks: dict[str, int] = {}
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn(), transient=True)
        bar.start()

    def progress(phase: str, done: int, total: int) -> None:
        if bar is None:
            return
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    try:
        summary = make_report(args.db, args.out, options=opts, since=args.since, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        console = Console(width=None if sys.stdout.isatty() else 160)
        print_summary(summary, console)
        console.print("wrote " + ", ".join(summary["files"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bandit-router", description="An adaptive LLM router.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("replay", help="replay RouterBench CSV files through the router and its peers")
    r.add_argument("files", nargs="+", help="RouterBench-format CSV files")
    r.add_argument("--cost-weight", type=float, default=20.0, help="quality points per dollar (default 20)")
    r.add_argument("--budget", type=float, default=None, metavar="USD_PER_REQUEST",
                   help="pace spend to this many dollars per request: the cost weight becomes a primal-dual "
                        "pacer's (--cost-weight then only scores the baselines)")
    r.add_argument("--steps", type=int, default=20_000, help="requests to replay (default 20000)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--once", action="store_true", help="every row exactly once, in a seeded order")
    r.add_argument("--warm-start", nargs="+", default=[], metavar="FILE.csv",
                   help="pre-train with full information on these files first")
    r.add_argument("--warm-split", type=float, default=0.0, metavar="FRACTION",
                   help="warm-start on a seeded FRACTION of the rows and replay the rest")
    r.add_argument("--hide-category", action="store_true", help="infer categories from the prompt")
    r.add_argument("--drift", action="append", default=[], metavar="SPEC",
                   help="degrade:MODEL:FRACTION@STEP, price:MODEL:FACTOR@STEP or add:MODEL@STEP (repeatable)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--plot", metavar="OUT.png", help="traffic share over time and the cost/quality frontier")
    r.add_argument("--peers", default="vw,mabwiser_lints", help="comma-separated peers ('' for none)")
    r.add_argument("--features", default="full", choices=["full", "dense", "intercept"],
                   help="full (32 incl. hashed words), dense (20) or intercept (a per-category MAB)")
    r.add_argument("--half-life", type=float, default=10_000.0,
                   help="forgetting half-life in feedback events of a category (0: none; default 10000)")
    r.add_argument("--explore", type=float, default=0.5, help="scale of the Thompson draws' sd (default 0.5)")
    r.add_argument("--feature-precision", type=float, default=10.0, help="prior precision of feature weights")
    r.add_argument("--prior-strength", type=float, default=1.0, help="prior pseudo-observations")
    r.set_defaults(func=cmd_replay)

    i = sub.add_parser("init", help="write a commented example config (the simulator's models)")
    i.add_argument("path", nargs="?", default="router.yaml")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    i.set_defaults(func=cmd_init)

    s = sub.add_parser("serve", help="run the router: OpenAI-compatible, feedback and admin endpoints")
    s.add_argument("--config", default="router.yaml")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--db", default=None, help="SQLite file (default: the config's storage.path)")
    s.add_argument("--access-log", action="store_true")
    s.add_argument("--admin-local-only", action="store_true",
                   help="serve /admin/* without a token to loopback clients only (needs a loopback --host); "
                        "otherwise /admin/* needs BANDIT_ROUTER_ADMIN_TOKEN or admin.token")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("simulate", help="serve simulated providers (the seed article's models) over loopback")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=9000)
    m.add_argument("--profile", default=None, help="a YAML/JSON profile (default: the built-in one)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--latency-scale", type=float, default=None, help="0 answers at once; 50 is about real time")
    m.add_argument("--print-profile", action="store_true", help="print the built-in profile as YAML and exit")
    m.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="simulator + router + the openai client: learning, a regression, a deprecation")
    d.add_argument("--requests", type=int, default=3000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--db", default="bandit_router_demo.db", help="the demo's SQLite file (recreated each run)")
    d.add_argument("--out", default="out/demo.png", help="PNG of traffic share over time")
    d.add_argument("--concurrency", type=int, default=16)
    d.add_argument("--cost-weight", type=float, default=20.0)
    d.add_argument("--json", action="store_true", help="also print the summary as JSON")
    d.set_defaults(func=cmd_demo)

    st = sub.add_parser("stats", help="a running router's arm table (GET /admin/arms) in the terminal")
    st.add_argument("--url", default="http://127.0.0.1:8000", help="the router (default http://127.0.0.1:8000)")
    st.add_argument("--token", default=None,
                    help="admin token (default: the BANDIT_ROUTER_ADMIN_TOKEN environment variable)")
    st.add_argument("--category", default=None, help="only this category")
    st.add_argument("--json", action="store_true", help="print the JSON instead of tables")
    st.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    st.set_defaults(func=cmd_stats)

    rp = sub.add_parser("report", help="PNGs, a summary and off-policy estimates from the decision log")
    rp.add_argument("--db", required=True, help="the router's SQLite file (opened read-only)")
    rp.add_argument("--out", required=True, help="directory for the PNGs and report.json")
    rp.add_argument("--config", default=None,
                    help="the router's config: model prices for counterfactual costs (default: fitted from the log)")
    rp.add_argument("--since", type=float, default=None, metavar="UNIX_SECONDS", help="only decisions from then on")
    rp.add_argument("--min-propensity", type=float, default=0.01,
                    help="propensity floor for the IPS/DR weights (default 0.01)")
    rp.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the CIs (default 500)")
    rp.add_argument("--min-feedback", type=int, default=10,
                    help="feedback a model needs in a category to be its best model (default 10)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--json", action="store_true", help="print report.json instead of tables")
    rp.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"bandit-router: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
