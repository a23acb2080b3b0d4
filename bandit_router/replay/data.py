"""RouterBench-format tables: recorded outcomes and costs of several models on the same prompts.

A model is any column ``X`` for which a column ``X|total_cost`` exists; ``eval_name`` is the
category; ``prompt`` is a Python-list string of user turns (a plain string also works); the
optional ``X|model_response`` gives the answer, from which output tokens are estimated.
Rows where any model's outcome is missing are skipped.
"""

from __future__ import annotations

import ast
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from ..costs import Price
from ..features import DIM, estimate_tokens, featurize, text_tokens

COST_SUFFIX = "|total_cost"
RESPONSE_SUFFIX = "|model_response"


@dataclass
class Table:
    """Rows × models: outcomes, costs, features. Read-only after loading."""

    models: list[str]
    prompts: list[list[dict[str, str]]]
    categories: np.ndarray  # (n,) str
    quality: np.ndarray  # (n, K) in [0,1]
    cost: np.ndarray  # (n, K) $ per request
    output_tokens: np.ndarray  # (n, K) estimated from the answers (or 0 when absent)
    prompt_tokens: np.ndarray  # (n,)
    x: np.ndarray  # (n, DIM) features
    skipped: int = 0

    @property
    def n(self) -> int:
        return len(self.categories)

    def subset(self, rows: np.ndarray) -> Table:
        return Table(self.models, [self.prompts[i] for i in rows], self.categories[rows],
                     self.quality[rows], self.cost[rows], self.output_tokens[rows],
                     self.prompt_tokens[rows], self.x[rows], 0)

    def fit_prices(self) -> dict[str, Price]:
        """A price sheet per model ($/1M input, output tokens), fitted by non-negative least squares
        of each recorded call cost on (prompt tokens, answer tokens). Stands in for the published
        price list, which a real deployment has in its config."""
        prices = {}
        a = np.column_stack([self.prompt_tokens, self.output_tokens[:, 0] * 0])
        for k, model in enumerate(self.models):
            a[:, 1] = self.output_tokens[:, k]
            coef, _ = nnls(a, self.cost[:, k])
            if coef.sum() == 0:  # degenerate: charge the mean cost per prompt token
                coef[0] = self.cost[:, k].mean() / max(self.prompt_tokens.mean(), 1)
            prices[model] = Price(input=float(coef[0] * 1e6), output=float(coef[1] * 1e6))
        return prices


def _messages(prompt: str) -> list[dict[str, str]]:
    try:
        turns = ast.literal_eval(prompt)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        turns = prompt
    if isinstance(turns, str):
        turns = [turns]
    if not isinstance(turns, (list, tuple)) or not all(isinstance(t, str) for t in turns):
        turns = [str(prompt)]
    return [{"role": "user", "content": t} for t in turns]


def load(paths: Sequence[str | Path]) -> Table:
    """Read one or more RouterBench CSV files; models are those present in every file."""
    csv.field_size_limit(10**9)
    if not paths:
        raise ValueError("replay: give at least one RouterBench CSV file")
    models: list[str] | None = None
    raw: list[dict[str, str]] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"replay: {p} does not exist")
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            found = [c for c in cols if c + COST_SUFFIX in cols]
            for need in ("prompt", "eval_name"):
                if need not in cols:
                    raise ValueError(f"replay: {p} has no {need!r} column")
            if not found:
                raise ValueError(f"replay: {p} has no model columns (a column X with a matching X{COST_SUFFIX})")
            models = found if models is None else [m for m in models if m in found]
            raw.extend(reader)
    assert models is not None
    if not models:
        raise ValueError("replay: the files share no model")

    prompts, cats, q, c, out = [], [], [], [], []
    skipped = 0
    for row in raw:
        try:
            qs = [float(row[m]) for m in models]
            cs = [float(row[m + COST_SUFFIX]) for m in models]
        except (TypeError, ValueError):
            skipped += 1
            continue
        if not all(0.0 <= v <= 1.0 for v in qs) or not all(np.isfinite(cs)):
            skipped += 1
            continue
        prompts.append(_messages(row["prompt"]))
        cats.append(row["eval_name"])
        q.append(qs)
        c.append(cs)
        out.append([text_tokens(row.get(m + RESPONSE_SUFFIX) or "") for m in models])
    if not prompts:
        raise ValueError("replay: no row has an outcome for every model")
    x = np.array([featurize(p) for p in prompts]).reshape(len(prompts), DIM)
    return Table(models, prompts, np.array(cats), np.array(q), np.array(c), np.array(out, float),
                 np.array([estimate_tokens(p) for p in prompts], float), x, skipped)
