"""What the router decides with and what it returns: :class:`ModelSpec` (a model it may choose),
:class:`BanditSettings` (how it learns) and :class:`Decision` (one choice, with everything learning
needs later). Plain data; the :class:`~bandit_router.router.Router` makes and consumes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .costs import Price

__all__ = ["BanditSettings", "Decision", "ModelSpec", "TooManyCategories"]


@dataclass(frozen=True)
class ModelSpec:
    """A model the router may choose.

    ``priors`` maps a category to (prior quality in [0,1], strength in pseudo-observations),
    e.g. a published benchmark score worth 20 answers; categories not listed use the
    router's default prior. ``categories``, when given, restricts the model to those.
    """

    name: str
    price: Price
    priors: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    output_tokens: float = 256.0
    categories: tuple[str, ...] | None = None
    enabled: bool = True
    max_context_tokens: int | None = None  # a request needing more (prompt + max output) is not eligible
    max_output_tokens: int | None = None  # the service caps a request's max_tokens at this
    ttft_s: float = 1.0  # typical time to first token, until answers are timed (the latency prior's median)
    latency_s: float = 10.0  # typical time for a whole answer, likewise


@dataclass(frozen=True)
class BanditSettings:
    """Learning settings. ``cost_weight`` is in quality points per dollar."""

    cost_weight: float = 10.0
    half_life_events: float | None = 10_000.0
    half_life_seconds: float | None = None
    prior_quality: float = 0.5
    prior_strength: float = 1.0
    feature_precision: float = 10.0
    explore: float = 0.5
    seed: int = 0
    latency_quantile: float = 0.9  # the latency estimate a deadline and the latency weight use (p90)

    def __post_init__(self) -> None:
        checks = {
            "cost_weight": self.cost_weight >= 0,
            "half_life_events": self.half_life_events is None or self.half_life_events > 0,
            "half_life_seconds": self.half_life_seconds is None or self.half_life_seconds > 0,
            "prior_quality": 0.0 <= self.prior_quality <= 1.0,
            "prior_strength": self.prior_strength > 0,
            "feature_precision": self.feature_precision > 0,
            "explore": self.explore >= 0,
            "latency_quantile": 0.0 < self.latency_quantile < 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"bandit.{name}: {getattr(self, name)!r} is out of range")


@dataclass(slots=True)
class Decision:
    """Everything learning needs later, so feedback never recomputes features."""

    category: str
    model: str
    arm: int
    x: np.ndarray
    prompt_tokens: int
    expected_cost: float
    cost_weight: float
    scores: Sequence[float]  # per model, as the policy scored them (lists of floats: see policy.choose)
    costs: Sequence[float]  # per model, the expected $ of this request
    event_id: str | None = None
    timestamp: float | None = None
    quality: float | None = None  # the quality learned so far (None: no feedback yet)
    stamp: float | None = None  # when it was learned, in the posterior's log-weight units
    # What an off-policy estimate needs to recover the choice's probability (Thompson sampling has
    # no closed form): the draw was score_mean + score_sd·N(0,1) per arm, independently, and the
    # largest was chosen. Kept as the sampler computed them (no extra work on the hot path); the
    # properties below derive the moments. None for a decision rebuilt from a stored row.
    draw_sd: Sequence[float] | None = None  # per arm: posterior sd of θ·x (explore not applied)
    draw_z: Sequence[float] | None = None  # per arm: the draw's standard normals, already times ``explore``
    explore: float = 1.0
    # latency hints: the chosen model's expected latency (s), every model's, and whether a deadline
    # held (None: no deadline asked; False: none was expected to meet it, so the fastest was chosen)
    latency_s: float | None = None
    latencies: np.ndarray | None = None
    deadline_met: bool | None = None

    @property
    def score_mean(self) -> np.ndarray | None:
        """Per arm: the mean of its score, posterior mean quality − cost_weight × cost (−inf where
        the arm was not eligible)."""
        mean = self._score_mean()
        return None if mean is None else np.array(mean)

    @property
    def score_sd(self) -> np.ndarray | None:
        """Per arm: the sd of its Thompson draw, ``explore`` included."""
        sd = self._score_sd()
        return None if sd is None else np.array(sd)

    @property
    def chosen(self) -> int:
        """The arm the policy chose: ``arm`` until a fallback switches the decision to another model."""
        if not len(self.scores):
            return self.arm
        scores = list(self.scores)
        return scores.index(max(scores))  # the first best, as the policy breaks ties

    def moments(self) -> np.ndarray | None:
        """``[chosen, score_mean × K, score_sd × K]`` as one float64 array (what the log stores), or None."""
        mean, sd = self._score_mean(), self._score_sd()
        if mean is None or sd is None:
            return None
        return np.array([float(self.chosen), *mean, *sd])

    def _score_mean(self) -> list[float] | None:
        if self.draw_sd is None or self.draw_z is None or len(self.scores) != len(self.draw_sd):
            return None  # (also once the scores were dropped, after the decision's row was written)
        return [s - d * z for s, d, z in zip(self.scores, self.draw_sd, self.draw_z, strict=True)]

    def _score_sd(self) -> list[float] | None:
        return None if self.draw_sd is None else [s * self.explore for s in self.draw_sd]


class TooManyCategories(ValueError):
    """A new category name beyond ``max_categories`` (a caller inventing names without bound)."""
