"""Thompson sampling over eligible models: sampled quality − cost_weight × expected cost.

The decision rule in one place, on plain per-model sequences, so it can be read and tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class NoEligibleModel(LookupError):
    """No model may serve this request (all disabled, excluded or over a limit)."""


def choose(sampled_quality: Sequence[float], expected_cost: Sequence[float], cost_weight: float,
           penalty: Sequence[float]) -> tuple[int, list[float]]:
    """Index of the best eligible arm, and every arm's score.

    ``score_k = sampled_quality_k − cost_weight × expected_cost_k + penalty_k``, where the penalty
    is 0 for an eligible arm and −inf for one that may not serve; ties go to the lower index. A NaN
    score (a damaged posterior) leaves no choice, as ``numpy.argmax`` would find it first.

    Lists of floats, one per model: with a handful of models, Python floats cost less than a numpy
    call per step, and the arithmetic is numpy's, step for step (``tests/test_router.py``).
    """
    scores = [c * -cost_weight + q + p for q, c, p in zip(sampled_quality, expected_cost, penalty, strict=True)]
    k, best = -1, -math.inf
    for i, s in enumerate(scores):
        if s > best:
            k, best = i, s
        elif s != s:
            k = -1
            break
    if k < 0:
        raise NoEligibleModel("no eligible model: every model is disabled, excluded or over a limit")
    return k, scores


def apply_deadline(penalty: np.ndarray, drawn: np.ndarray, estimate: np.ndarray,
                   max_latency: float) -> tuple[np.ndarray, bool]:
    """A latency deadline on top of ``penalty``: (the new penalty, whether any eligible model meets it).

    Models whose ``drawn`` latency exceeds ``max_latency`` become ineligible. When that leaves none of
    the eligible models, only the fastest eligible one by ``estimate`` stays, and the deadline is not
    met. ``penalty`` is never changed in place.
    """
    late = drawn > max_latency
    if not late.any():
        return penalty, True
    on_time = np.where(late, -np.inf, penalty)
    if on_time.max() > -np.inf or penalty.max() == -np.inf:
        return on_time, True
    k = int(np.where(penalty > -np.inf, estimate, np.inf).argmin())
    only = np.full(len(penalty), -np.inf)
    only[k] = penalty[k]
    return only, False
