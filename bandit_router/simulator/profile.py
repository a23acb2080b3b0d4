"""A simulator profile: the simulated models, their quality per category, prices, latency and
answer lengths. Loaded from YAML or JSON (:func:`load_profile`); the built-in profile from the
seed article is :func:`builtin_profile` (see :mod:`bandit_router.simulator.builtin`).

Schema (every object rejects unknown keys; a bare number is accepted wherever an object has
one required number, e.g. ``coding: 0.8`` for ``coding: {p: 0.8}``)::

    name: str                       # free text
    description: str | null
    assumptions: [str, ...]         # profile-wide assumptions, in words
    categories: [str, ...]          # default: coding, reasoning, science, computer_use, general
    latency_scale: float >= 0       # multiplies every latency; 0 = answer at once (default 1)
    unserved: wrong | error         # a category a model has no quality for: answered wrong
                                    # (p = 0, default) or refused with a 400 error
    cache_min_tokens: int           # prompt-prefix caching starts at this many tokens (1024)
    default_output_tokens: {category: {mean: float > 0, cv: float >= 0}}
    models:
      <model id>:
        owned_by: str
        available: bool             # false: 404 "deprecated", as a retired model
        fail_rate: float in [0, 1]  # share of requests answered with a 500 error
        hang_rate: float in [0, 1]  # share of requests that hang hang_s (60) seconds, then get a 504
        notes: str | null
        quality: {category: {p: float in [0,1] | null, benchmark, source, assumption}}
        price: {input, output, cached_input | null, assumption}     # $ per 1M tokens
        latency: {ttft_ms: float >= 0, tokens_per_s: float > 0, sigma: float >= 0 (log-normal spread), assumption}
        output_tokens: {category: {mean, cv}}    # falls back to default_output_tokens

``p: null`` (or a category left out of ``quality``) means the model does not serve the category.
``assumption`` is set on every value that is not a published figure, saying what was assumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ..categories import DEFAULT_CATEGORIES


def _number_as(field: str):
    def coerce(v: Any) -> Any:
        return {field: v} if isinstance(v, int | float) and not isinstance(v, bool) else v

    return BeforeValidator(coerce)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Score(StrictModel):
    """Probability that the model answers a request of one category right."""

    p: float | None = Field(ge=0.0, le=1.0)
    benchmark: str | None = None
    source: str | None = None
    assumption: str | None = None


class PriceSpec(StrictModel):
    """$ per 1M tokens."""

    input: float = Field(ge=0.0)
    output: float = Field(ge=0.0)
    cached_input: float | None = Field(default=None, ge=0.0)
    assumption: str | None = None


class Latency(StrictModel):
    """Median time to first token and median speed; each answer draws both log-normally with sd
    ``sigma`` in log space (0: always the median)."""

    ttft_ms: float = Field(ge=0.0)
    tokens_per_s: float = Field(gt=0.0)
    sigma: float = Field(default=0.0, ge=0.0, le=3.0)
    assumption: str | None = None


class TokenDist(StrictModel):
    """Completion tokens: log-normal with this mean and coefficient of variation."""

    mean: float = Field(gt=0.0)
    cv: float = Field(default=0.3, ge=0.0, le=5.0)


ScoreIn = Annotated[Score, _number_as("p")]
TokensIn = Annotated[TokenDist, _number_as("mean")]


class ModelProfile(StrictModel):
    owned_by: str = "simulator"
    available: bool = True
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    hang_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    hang_s: float = Field(default=60.0, gt=0.0)
    notes: str | None = None
    quality: dict[str, ScoreIn]
    price: PriceSpec
    latency: Latency = Field(default_factory=lambda: Latency(ttft_ms=10.0, tokens_per_s=2000.0))
    output_tokens: dict[str, TokensIn] = Field(default_factory=dict)

    def p(self, category: str) -> float | None:
        score = self.quality.get(category)
        return None if score is None else score.p


class Profile(StrictModel):
    name: str = "custom"
    description: str | None = None
    assumptions: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES), min_length=1)
    latency_scale: float = Field(default=1.0, ge=0.0)
    unserved: Literal["wrong", "error"] = "wrong"
    cache_min_tokens: int = Field(default=1024, ge=1)
    default_output_tokens: dict[str, TokensIn] = Field(
        default_factory=lambda: {c: TokenDist(mean=200.0) for c in DEFAULT_CATEGORIES})
    models: dict[str, ModelProfile] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_categories(self) -> Profile:
        known = set(self.categories)
        for where, table in [("default_output_tokens", self.default_output_tokens)] + [
            (f"models.{name}.{part}", getattr(m, part)) for name, m in self.models.items()
            for part in ("quality", "output_tokens")
        ]:
            for category in table:
                if category not in known:
                    raise ValueError(f"{where}.{category}: unknown category (categories: {sorted(known)})")
        return self

    def output_tokens(self, model: str, category: str) -> TokenDist:
        return (self.models[model].output_tokens.get(category) or self.default_output_tokens.get(category)
                or TokenDist(mean=200.0))


class ProfileError(ValueError):
    """A profile file that cannot be read or does not validate; the message names the field."""


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{prefix}{loc}: {msg}" if loc else f"{prefix}{msg}")
    return "; ".join(lines)


def parse_profile(data: Any, *, source: str = "profile") -> Profile:
    """A :class:`Profile` from already-parsed data; :class:`ProfileError` names the bad field."""
    try:
        return Profile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(f"{source}: {format_validation_error(e)}") from None


def load_profile(path: str | Path) -> Profile:
    """Read a YAML (``.yaml``/``.yml``) or JSON profile file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ProfileError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {e}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: the top level must be a mapping with at least `models`")
    return parse_profile(data, source=str(path))


def profile_yaml(profile: Profile) -> str:
    """The profile as YAML (e.g. to write the built-in one out and edit it)."""
    return yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=100)


def builtin_profile() -> Profile:
    """The seed article's four models (a fresh copy each call)."""
    from .builtin import BUILTIN

    return parse_profile(BUILTIN, source="built-in profile")
