"""The RouterBench replay: drift specs, the CSV loader, the CLI report, and (when the shared data
is there) the router against its references on real recorded outcomes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bandit_router import cli
from bandit_router.replay import data
from bandit_router.replay.run import Drift, ReplayOptions, run

MODELS = ["acme/big", "mid", "small"]
SHARED = Path(__file__).parents[1].parent / "shared/data/routerbench"
N_VALID = 60
POLICY_KEYS = {"quality", "cost", "utility"}


# ---------------------------------------------------------------- drift specs


@pytest.mark.parametrize(("spec", "expected"), [
    ("degrade:mid:0.5@100", Drift("degrade", "mid", 0.5, 100)),
    ("price:acme/big:3@0", Drift("price", "acme/big", 3.0, 0)),
    ("price:small:2.5e-1@7", Drift("price", "small", 0.25, 7)),
    ("  add:small@250 ", Drift("add", "small", 1.0, 250)),
])
def test_drift_parse_accepts_the_three_forms(spec, expected):
    assert Drift.parse(spec, MODELS) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("degrade:mid@100", r"degrade needs a value"),
    ("add:mid:2@100", r"add takes no value"),
    ("degrade:mid:1.5@100", r"fraction must be in \[0, 1\]"),
    ("price:mid:0@100", r"price factor must be > 0"),
    ("price:mid:-2@100", r"price factor must be > 0"),
    ("degrade:nope:0.5@100", r"unknown model 'nope' \(models: acme/big, mid, small\)"),
    ("degrade:mid:0.5", r"expected degrade:MODEL:FRACTION@STEP"),
    ("swap:mid:0.5@10", r"expected degrade:MODEL:FRACTION@STEP"),
    ("degrade:mid:0.5@-3", r"expected degrade:MODEL:FRACTION@STEP"),
    ("", r"expected degrade"),
])
def test_drift_parse_rejects_malformed_specs(spec, message):
    with pytest.raises(ValueError, match=r"^--drift .*" + message):
        Drift.parse(spec, MODELS)


def test_drift_parse_names_the_spec_for_a_malformed_number():
    with pytest.raises(ValueError, match=r"^--drift 'degrade:mid:1e@5'"):
        Drift.parse("degrade:mid:1e@5", MODELS)


# ---------------------------------------------------------------- a tiny RouterBench CSV

TRUE_Q = {"arith": {"acme/big": 0.95, "mid": 0.85, "small": 0.2},
          "trivia": {"acme/big": 0.9, "mid": 0.3, "small": 0.8}}
COST = {"acme/big": 4e-3, "mid": 3e-4, "small": 1e-4}  # $ per request, roughly


def write_csv(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    cols = (["", "sample_id", "prompt", "eval_name"] + MODELS + [m + "|model_response" for m in MODELS]
            + [m + "|total_cost" for m in MODELS] + ["oracle_model_to_route_to"])
    rows = []
    for i in range(N_VALID):
        cat = "arith" if i % 2 == 0 else "trivia"
        prompt = ([f"What is {i} + {i + 3}?"] if cat == "arith"
                  else [f"Who wrote book number {i}?", "Answer with a name only."])
        row = {"": str(i), "sample_id": f"{cat}.{i}", "prompt": repr(prompt), "eval_name": cat}
        for m in MODELS:
            row[m] = str(float(rng.random() < TRUE_Q[cat][m]))
            answer = "The answer is " + "very " * int(rng.integers(1, 40)) + "clear."
            row[m + "|model_response"] = answer
            row[m + "|total_cost"] = repr(COST[m] * (1 + len(answer) / 200))
        row["oracle_model_to_route_to"] = "mid"
        rows.append(row)
    broken = dict(rows[0], **{"": "999", "sample_id": "arith.999", "mid": ""})  # missing outcome
    rows.insert(17, broken)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("rb") / "tiny.csv")


def test_load_detects_models_and_skips_incomplete_rows(tiny_csv):
    table = data.load([tiny_csv])
    assert table.models == MODELS
    assert table.n == N_VALID and table.skipped == 1
    assert sorted(set(table.categories)) == ["arith", "trivia"]
    assert table.quality.shape == table.cost.shape == (N_VALID, 3)
    assert set(np.unique(table.quality)) <= {0.0, 1.0}
    assert table.prompts[1] == [{"role": "user", "content": "Who wrote book number 1?"},
                                {"role": "user", "content": "Answer with a name only."}]
    assert table.x.shape == (N_VALID, 32) and np.all(table.x[:, 0] == 1.0)
    assert np.all(table.output_tokens > 3)
    prices = table.fit_prices()
    assert prices["acme/big"].output > prices["mid"].output > prices["small"].output


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load([tmp_path / "missing.csv"])
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,eval_name,m\n'x',c,1\n")
    with pytest.raises(ValueError, match="no model columns"):
        data.load([bad])


def replay_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bandit_router.cli", "replay", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_replay_json_report(tiny_csv):
    proc = replay_cli(str(tiny_csv), "--steps", "400", "--seed", "1", "--json", "--peers", "")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["steps"] == 400 and report["cost_weight"] == 20.0 and report["seed"] == 1
    router = report["router"]
    assert POLICY_KEYS | {"share", "us_per_decision"} <= set(router)
    assert sum(router["share"].values()) == pytest.approx(1.0)
    assert set(router["share"]) <= set(MODELS)
    assert router["us_per_decision"] > 0
    baselines = report["baselines"]
    assert set(baselines) == {"hindsight_table", "oracle", "random", *MODELS}
    for name, s in baselines.items():
        assert POLICY_KEYS <= set(s), name
        assert s["utility"] == pytest.approx(s["quality"] - 20.0 * s["cost"]), name
    best = report["best_single"]
    assert {"model", "quality", "cost"} <= set(best)
    assert best["model"] == max(MODELS, key=lambda m: baselines[m]["quality"])
    # references: the per-prompt oracle beats everything, the per-category table every single model,
    # and uniform random is the average of the single models
    oracle = baselines["oracle"]["utility"]
    assert all(oracle >= s["utility"] - 1e-12 for s in [router, *baselines.values()])
    assert all(baselines["hindsight_table"]["utility"] >= baselines[m]["utility"] - 1e-12 for m in MODELS)
    assert baselines["random"]["utility"] == pytest.approx(np.mean([baselines[m]["utility"] for m in MODELS]))
    # the router learns the per-category pattern: it beats random and the best single model
    assert router["utility"] > baselines["random"]["utility"] + 0.1
    assert router["utility"] > max(baselines[m]["utility"] for m in MODELS)
    assert "drift" not in report and "choices" not in report


def run_main(capsys, *args: str) -> dict:
    assert cli.main(["replay", *args, "--json", "--peers", ""]) == 0
    return json.loads(capsys.readouterr().out)


def test_once_replays_every_valid_row_exactly_once(tiny_csv, capsys):
    report = run_main(capsys, str(tiny_csv), "--once", "--seed", "3")
    assert report["steps"] == N_VALID
    table = data.load([tiny_csv])
    # every row once: the single-model references are the plain column means
    for k, m in enumerate(MODELS):
        assert report["baselines"][m]["quality"] == pytest.approx(table.quality[:, k].mean(), abs=1e-12)
        assert report["baselines"][m]["cost"] == pytest.approx(table.cost[:, k].mean(), abs=1e-15)


def test_drift_adds_a_drift_report(tiny_csv, capsys):
    plain = run_main(capsys, str(tiny_csv), "--steps", "600", "--seed", "2")
    drifted = run_main(capsys, str(tiny_csv), "--steps", "600", "--seed", "2", "--drift", "degrade:mid:1@200")
    # mid was the router's pick on arith only: that is the category whose traffic had to move
    assert set(drifted["drift"]) == {"arith"}
    assert isinstance(drifted["drift"]["arith"], int) and 0 <= drifted["drift"]["arith"] < 150
    mid_share = [r["router"]["by_category"]["arith"]["share"]["mid"] for r in (plain, drifted)]
    assert mid_share[1] < mid_share[0]
    # mid scores 0 from step 200 on: its recorded quality drops by about two thirds
    assert drifted["baselines"]["mid"]["quality"] < 0.5 * plain["baselines"]["mid"]["quality"]
    assert drifted["baselines"]["acme/big"] == plain["baselines"]["acme/big"]


def test_bad_drift_exits_non_zero_naming_the_spec(tiny_csv):
    proc = replay_cli(str(tiny_csv), "--steps", "50", "--peers", "", "--drift", "degrade:ghost:0.5@10")
    assert proc.returncode == 2
    assert "degrade:ghost:0.5@10" in proc.stderr and "unknown model 'ghost'" in proc.stderr
    assert proc.stdout == ""


# ---------------------------------------------------------------- real RouterBench outcomes


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared RouterBench data at {SHARED}")
def test_router_beats_random_and_the_median_model_on_routerbench():
    files = sorted(SHARED.glob("*.csv"))
    assert len(files) == 3
    table = data.load(files)
    assert len(table.models) == 11 and table.n > 2000
    report = run(table, ReplayOptions(steps=3000, seed=0, peers=()), with_peers=False)
    base = report["baselines"]
    singles = [base[m]["utility"] for m in table.models]
    router = report["router"]["utility"]
    assert router > base["random"]["utility"] + 0.05
    assert router > float(np.median(singles))
    assert router < base["oracle"]["utility"]
