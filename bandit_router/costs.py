"""The cost model: known prices × estimated tokens. Cost is known, not learned.

Expected cost of a request on model k::

    cost_k = (prompt_tokens × input_k + expected_output_tokens[category, k] × output_k) / 1e6

with prices in $ per 1M tokens from a :class:`PriceTable`, and the expected output
tokens a running mean per (category, model) kept by :class:`OutputTokens`. A price
change or a per-request cost weight therefore acts on the very next decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Price:
    """$ per 1M tokens. ``cached_input`` applies to prompt tokens a provider reports as cached."""

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        for field in ("input", "output", "cached_input"):
            v = getattr(self, field)
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise ValueError(f"price.{field}: {v!r} must be a finite number >= 0 ($ per 1M tokens)")

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """What a call cost, from the usage the provider reported."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((prompt_tokens - cached) * self.input + cached * cached_price
                + completion_tokens * self.output) / 1e6


class PriceTable:
    """Prices of the known models, also as per-token arrays in model order for vectorised costs."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.prices: dict[str, Price] = {}
        self.input_per_token = np.zeros(0)
        self.output_per_token = np.zeros(0)

    def set(self, model: str, price: Price) -> None:
        if model not in self.prices:
            self.models.append(model)
            self.input_per_token = np.append(self.input_per_token, 0.0)
            self.output_per_token = np.append(self.output_per_token, 0.0)
        self.prices[model] = price
        i = self.models.index(model)
        self.input_per_token[i] = price.input / 1e6
        self.output_per_token[i] = price.output / 1e6

    def scale(self, model: str, factor: float) -> Price:
        """Multiply a model's prices (a price change); returns the new price."""
        p = self.prices[model]
        new = Price(p.input * factor, p.output * factor,
                    None if p.cached_input is None else p.cached_input * factor)
        self.set(model, new)
        return new

    def __getitem__(self, model: str) -> Price:
        return self.prices[model]

    def __contains__(self, model: str) -> bool:
        return model in self.prices


class OutputTokens:
    """Running mean of completion tokens per model, for one category.

    Starts from each model's ``default`` with the weight of ``prior_weight`` answers;
    after ``window`` answers it becomes an exponential moving average over about
    that many answers, so a model that starts answering at greater length is followed.
    """

    def __init__(self, prior_weight: float = 2.0, window: int = 500) -> None:
        self.prior_weight = prior_weight
        self.window = window
        self.mean = np.zeros(0)
        self.n = np.zeros(0)

    def add_model(self, default_tokens: float) -> None:
        self.mean = np.append(self.mean, float(default_tokens))
        self.n = np.append(self.n, 0.0)

    def observe(self, i: int, tokens: float) -> None:
        self.n[i] = min(self.n[i] + 1.0, self.window)
        w = 1.0 / (self.n[i] + self.prior_weight)
        self.mean[i] += w * (tokens - self.mean[i])


def expected_costs(prompt_tokens: float, prices: PriceTable, output_tokens: np.ndarray) -> np.ndarray:
    """Expected $ cost of a request on every model (vector in model order)."""
    return prompt_tokens * prices.input_per_token + output_tokens * prices.output_per_token
