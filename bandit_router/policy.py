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
