"""``router.yaml``: pydantic models of the service configuration, and the example ``init`` writes.

A bad file stops start-up with :class:`ConfigError`, whose message names the field and the
problem, e.g. ``router.yaml: models.1.input_price: Input should be greater than or equal to 0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .categories import DEFAULT_CATEGORIES
from .costs import Price
from .router import BanditSettings, ModelSpec

LOCALITY_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Prior(_Strict):
    quality: float = Field(ge=0.0, le=1.0)
    strength: float = Field(gt=0.0, description="pseudo-observations")


class ModelConfig(_Strict):
    name: str = Field(min_length=1, max_length=200)
    provider: Literal["openai", "anthropic"] = Field(
        "openai", description="openai: any OpenAI-compatible endpoint; anthropic: the native Messages API")
    base_url: str = Field(description="e.g. https://api.openai.com/v1, or https://api.anthropic.com for anthropic")
    upstream_model: str | None = Field(None, description="the model id sent upstream (default: name)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    input_price: float = Field(ge=0.0, description="$ per 1M input tokens")
    output_price: float = Field(ge=0.0, description="$ per 1M output tokens")
    cached_input_price: float | None = Field(None, ge=0.0)
    priors: dict[str, Prior] = Field(default_factory=dict)
    categories: list[str] | None = None
    output_tokens: float = Field(256.0, gt=0.0, description="expected output tokens before any are seen")
    enabled: bool = True
    max_context_tokens: int | None = Field(None, gt=0, description="too small for a request: not eligible")
    max_output_tokens: int | None = Field(None, gt=0, description="a request's max_tokens is capped at this")
    timeout_s: float = Field(120.0, gt=0.0, description="total time for one upstream call")
    connect_timeout_s: float = Field(10.0, gt=0.0)
    first_byte_timeout_s: float = Field(60.0, gt=0.0, description="until the upstream's response headers")
    ttft_s: float = Field(1.0, gt=0.0, description="typical time to first token (s), until answers are timed")
    latency_s: float = Field(10.0, gt=0.0, description="typical time for a whole answer (s), until answers are timed")
    locality: str | None = Field(None, pattern=LOCALITY_PATTERN,
                                 description="where the model runs: 'local' (on your hardware) or a region; "
                                             "requests restricted to a locality reach only models with this tag")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def spec(self) -> ModelSpec:
        return ModelSpec(
            name=self.name,
            price=Price(self.input_price, self.output_price, self.cached_input_price),
            priors={c: (p.quality, p.strength) for c, p in self.priors.items()},
            output_tokens=self.output_tokens,
            categories=tuple(self.categories) if self.categories is not None else None,
            enabled=self.enabled,
            max_context_tokens=self.max_context_tokens,
            max_output_tokens=self.max_output_tokens,
            ttft_s=self.ttft_s,
            latency_s=self.latency_s,
        )


class BanditConfig(_Strict):
    cost_weight: float = Field(10.0, ge=0.0, description="quality points per dollar")
    half_life_events: float | None = Field(10_000.0, gt=0.0)
    half_life_seconds: float | None = Field(None, gt=0.0)
    prior_quality: float = Field(0.5, ge=0.0, le=1.0)
    prior_strength: float = Field(1.0, gt=0.0)
    feature_precision: float = Field(10.0, gt=0.0)
    explore: float = Field(0.5, ge=0.0)
    seed: int | None = None
    latency_quantile: float = Field(0.9, gt=0.0, lt=1.0, description="the latency estimate deadlines use (p90)")

    def settings(self) -> BanditSettings:
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(4), "little")
        return BanditSettings(self.cost_weight, self.half_life_events, self.half_life_seconds,
                              self.prior_quality, self.prior_strength, self.feature_precision, self.explore, seed,
                              self.latency_quantile)


class CategoriesConfig(_Strict):
    names: list[str] = Field(default_factory=lambda: list(DEFAULT_CATEGORIES))
    rules: dict[str, list[tuple[str, float]]] | None = None
    fallback: str = "general"
    min_score: float = 2.0


class StorageConfig(_Strict):
    path: str = "./bandit_router.db"


class FeedbackConfig(_Strict):
    window_s: float = Field(7 * 24 * 3600.0, gt=0.0, description="feedback accepted this long after a decision")


class SchedulerConfig(_Strict):
    checkpoint_s: float = Field(60.0, gt=0.0)
    expiry_s: float = Field(3600.0, gt=0.0)
    forget_s: float = Field(60.0, gt=0.0)


class GradingConfig(_Strict):
    """Automated graders per category (``*``: any category without its own list) and the sampling
    policy: ``{"rates": {"coding": 0.1}, "default_rate": 1.0, "usd_per_hour": 2.0}``."""

    graders: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    policy: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _build(self) -> GradingConfig:
        from feedback.graders import GraderSpecError, GradingPolicy, make_grader

        try:
            for cat, specs in self.graders.items():
                for i, spec in enumerate(specs):
                    make_grader(spec, where=f"graders.{cat}.{i}")
            GradingPolicy.from_spec(self.policy, where="policy")
        except GraderSpecError as e:
            raise ValueError(str(e)) from None
        return self


class ReliabilityConfig(_Strict):
    """Retries, fallback and circuit breakers for upstream failures (5xx, 429, timeouts, refused
    connections)."""

    retries: int = Field(1, ge=0, le=5, description="retries on the same model before falling back")
    backoff_s: float = Field(0.05, ge=0.0, description="first backoff; doubled per retry, with full jitter")
    backoff_max_s: float = Field(2.0, ge=0.0)
    retry_after_max_s: float = Field(5.0, ge=0.0, description="a longer Retry-After falls back instead of waiting")
    fallbacks: int = Field(2, ge=0, description="other models tried, next-best first, after the chosen one fails")
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open a model's breaker")
    breaker_cooldown_s: float = Field(30.0, gt=0.0, description="open this long, then one half-open probe")
    failure_quality: float | None = Field(
        None, ge=0.0, le=1.0, description="learn a failed call as this quality (null: failures are not learned)")


class AdminConfig(_Strict):
    token: str | None = Field(None, min_length=16, description="bearer token for /admin/*; the environment "
                              "variable BANDIT_ROUTER_ADMIN_TOKEN takes precedence")


class AuthConfig(_Strict):
    """Optional client API keys for /v1/*: with none configured, /v1/* is open."""

    api_keys: list[str] = Field(default_factory=list, description="accepted bearer tokens (prefer api_keys_env)")
    api_keys_env: str | None = Field(None, description="environment variable with comma-separated keys")
    tenant_keys_env: dict[str, str] = Field(
        default_factory=dict, description="tenant name -> environment variable with that tenant's comma-separated "
                                          "keys (the cache is scoped, and budgets kept, per tenant)")

    @field_validator("tenant_keys_env")
    @classmethod
    def _tenant_names(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
                raise ValueError(f"tenant {name!r}: 1-64 letters, digits, '_', '.' or '-'")
        return v


class CacheConfig(_Strict):
    """The response cache: exact-match answers for deterministic requests, per tenant."""

    enabled: bool = True
    ttl_s: float = Field(3600.0, gt=0.0, description="an entry is served this long after it was stored")
    max_entries: int = Field(10_000, ge=1, description="least recently used entries are evicted beyond this")
    all_requests: bool = Field(False, description="cache every single-choice request (streamed or not), "
                                                  "not only temperature 0")


class SensitiveConfig(_Strict):
    """Requests with personal data in them are routed as if marked ``router.locality: route_to``."""

    route_to: str | None = Field(None, pattern=LOCALITY_PATTERN,
                                 description="the locality for requests with sensitive data (null: detector off)")
    detect: list[str] = Field(default_factory=lambda: ["email", "phone", "card", "national_id"])
    patterns: dict[str, str] = Field(default_factory=dict, description="your own: name -> regular expression")

    @model_validator(mode="after")
    def _build(self) -> SensitiveConfig:
        from .locality import SensitiveDataDetector

        SensitiveDataDetector(self.detect, self.patterns)  # raises ValueError naming the problem
        return self


class BudgetConfig(_Strict):
    """Daily spend budgets per tenant, paced (bandit_router.pacing.DayPacer): as spend runs ahead of the
    day's pace the cost weight rises, and it relaxes when spend is under pace."""

    usd_per_day: float | None = Field(None, gt=0.0, allow_inf_nan=False,
                                      description="every tenant's budget (null: none)")
    tenants: dict[str, Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="tenant -> $ per day (overrides)")


class LocalityConfig(_Strict):
    sensitive: SensitiveConfig = Field(default_factory=SensitiveConfig)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)


class RouterConfig(_Strict):
    models: list[ModelConfig] = Field(min_length=1)
    bandit: BanditConfig = Field(default_factory=BanditConfig)
    categories: CategoriesConfig = Field(default_factory=CategoriesConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    grading: GradingConfig = Field(default_factory=GradingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    locality: LocalityConfig = Field(default_factory=LocalityConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    @model_validator(mode="after")
    def _unique(self) -> RouterConfig:
        route_to = self.locality.sensitive.route_to
        if route_to is not None and not any(m.locality == route_to for m in self.models):
            raise ValueError(f"locality.sensitive.route_to: no model has locality {route_to!r}, so every request "
                             f"with sensitive data would be refused; tag a model with `locality: {route_to}`")
        seen = set()
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise ValueError(f"models.{i}.name: {m.name!r} is configured twice")
            if m.name == "auto":
                raise ValueError(f"models.{i}.name: 'auto' is reserved (it asks the router to choose)")
            seen.add(m.name)
        return self


def load_config(path: str | Path) -> RouterConfig:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (write an example with `bandit-router init {p}`)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_config(raw, source=str(p))


def parse_config(raw: object, source: str = "config") -> RouterConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return RouterConfig.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(msg if not loc or msg.startswith(f"{loc}.") else f"{loc}: {msg}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


EXAMPLE_CONFIG = """\
# bandit-router configuration. Start the simulated providers with `bandit-router simulate`,
# then the router with `bandit-router serve --config router.yaml`.

models:
  # Each model: an OpenAI-compatible endpoint and its prices in $ per 1M tokens. The four below are
  # the simulator's fleet (the seed article's table); for a real provider set base_url, and put the
  # API key in the environment variable named by api_key_env (keys never go in this file).
  - name: gpt-5.4
    base_url: http://127.0.0.1:9000/v1
    input_price: 2.50
    output_price: 20.0
    priors:                       # optional capability profile: (quality, strength in answers)
      computer_use: {quality: 0.75, strength: 10}
  - name: claude-opus-4.6
    base_url: http://127.0.0.1:9000/v1
    input_price: 5.00
    output_price: 25.0
    priors:
      coding: {quality: 0.808, strength: 10}
  - name: gemini-3.1-pro
    base_url: http://127.0.0.1:9000/v1
    input_price: 2.00
    output_price: 12.0
    priors:
      reasoning: {quality: 0.771, strength: 10}
      science: {quality: 0.943, strength: 10}
  - name: glm-5
    base_url: http://127.0.0.1:9000/v1
    input_price: 1.00
    output_price: 3.20            # not in the seed article: the simulator's stated assumption
    categories: [coding, reasoning, science, general]   # no computer-use figure: not offered
  # A real upstream, for example:
  # - name: gpt-4o-mini
  #   base_url: https://api.openai.com/v1
  #   api_key_env: OPENAI_API_KEY
  #   input_price: 0.15
  #   output_price: 0.60

bandit:
  cost_weight: 20          # quality points per dollar: 20 means $0.01 costs 0.2 of quality
  half_life_events: 10000  # forgetting, in feedback events of a category
  # half_life_seconds: 86400
  explore: 0.5

storage:
  path: ./bandit_router.db  # SQLite, WAL mode

feedback:
  window_s: 604800          # feedback accepted for 7 days after a decision

server:
  host: 127.0.0.1
  port: 8000

# Optional, shown with their defaults or an example:
# cache:                    # exact-match answers for temperature-0 requests, per tenant
#   enabled: true
#   ttl_s: 3600
#   max_entries: 10000
# locality:                 # requests with personal data reach only models tagged `locality: local`
#   sensitive:
#     route_to: local       # (needs a model with `locality: local`; null turns the detector off)
#     detect: [email, phone, card, national_id]
# budget:                   # daily spend per tenant, paced by raising the cost weight
#   usd_per_day: 50
#   tenants: {team-a: 200}
# Per model, for latency-aware routing before answers are timed: ttft_s (1), latency_s (10).
"""
