"""Thompson sampling over eligible models: sampled quality − cost_weight × expected cost.

The decision rule in one place, on plain arrays, so it can be read and tested alone.
"""

from __future__ import annotations

import numpy as np


class NoEligibleModel(LookupError):
    """No model may serve this request (all disabled, excluded or over a limit)."""


def choose(sampled_quality: np.ndarray, expected_cost: np.ndarray, cost_weight: float,
           penalty: np.ndarray) -> tuple[int, np.ndarray]:
    """Index of the best eligible arm, and every arm's score.

    ``score_k = sampled_quality_k − cost_weight × expected_cost_k + penalty_k``, where the penalty
    is 0 for an eligible arm and −inf for one that may not serve; ties go to the lower index.
    """
    score = expected_cost * -cost_weight
    score += sampled_quality
    score += penalty
    k = int(score.argmax())
    if score[k] == -np.inf or score[k] != score[k]:
        raise NoEligibleModel("no eligible model: every model is disabled, excluded or over a limit")
    return k, score


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
