"""The Router: ``decide()`` and ``learn()``, pure and in memory.

request → features/category → :class:`Decision` → (the caller runs the model) →
quality feedback → ``learn(decision, quality)`` → posterior. This is the one object
the HTTP shell and the replay talk to. It does no I/O and is deterministic given
its seed; persistence reads and writes the :class:`~bandit_router.posterior.Posterior`
sums through :meth:`Router.posterior` and :meth:`Router.load_posterior`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .categories import DEFAULT_CATEGORIES, CategoryClassifier
from .costs import OutputTokens, Price, PriceTable
from .decision import BanditSettings, Decision, ModelSpec, TooManyCategories
from .features import DIM, Message, estimate_tokens, featurize
from .latency import LatencyEstimates
from .policy import NoEligibleModel, apply_deadline, choose
from .posterior import ArmPosteriors, Posterior

__all__ = ["BanditSettings", "Decision", "ModelSpec", "NoEligibleModel", "Router", "TooManyCategories"]


class _Category:
    __slots__ = ("name", "arms", "out", "lat", "serves", "last_t", "penalty", "out_cost")

    def __init__(self, name: str, dim: int, latency: LatencyEstimates) -> None:
        self.name = name
        self.arms = ArmPosteriors(dim)
        self.out = OutputTokens()
        self.lat = latency
        self.serves = np.zeros(0, dtype=bool)
        self.last_t: float | None = None  # time the category's sums were last decayed to
        # per model, as lists of floats (the decision's arithmetic is in Python floats)
        self.penalty: list[float] = []  # 0 where a model may serve, -inf where disabled or not serving
        self.out_cost: list[float] = []  # expected $ of the output tokens


class Router:
    """Per-category contextual Thompson sampling over models, with known costs."""

    def __init__(self, models: Sequence[ModelSpec], settings: BanditSettings | None = None, *,
                 categories: Iterable[str] = DEFAULT_CATEGORIES,
                 classifier: CategoryClassifier | None = None, dim: int = DIM,
                 max_categories: int = 64) -> None:
        self.settings = settings or BanditSettings()
        self.dim = dim
        self.classifier = classifier or CategoryClassifier()
        self.max_categories = max_categories
        self.prices = PriceTable()
        self.specs: list[ModelSpec] = []
        self.index: dict[str, int] = {}
        self.enabled = np.zeros(0, dtype=bool)
        self.max_context = np.zeros(0)  # context window per model (inf: unknown)
        self._min_context = math.inf
        self._fits_all = np.zeros(0, dtype=bool)  # the "no model is too small" mask, shared
        self._cats: dict[str, _Category] = {}
        self._epochs: dict[str, int] = {}  # per category: the arms' storage epoch last persisted
        self._rng = np.random.default_rng(self.settings.seed)
        # latency draws have their own stream, so latency hints never shift the quality draws
        self._lat_rng = np.random.default_rng((self.settings.seed, 1))
        self._lz = np.zeros((0, 0))
        self._lzi = 0
        self._z: list[list[float]] = []  # a block of the draws' standard normals (times explore), row by row
        self._zi = 0
        self._input_per_token: list[float] = []
        h = self.settings.half_life_events
        self._event_decay = 1.0 if h is None else 0.5 ** (1.0 / h)
        self._log_event_decay = math.log(self._event_decay)
        for name in categories:
            self._category(name)
        for spec in models:
            self.add_model(spec)

    # -- models ------------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def categories(self) -> list[str]:
        return list(self._cats)

    def add_model(self, spec: ModelSpec) -> None:
        """Add a model; it starts from its prior in every category and gets explored."""
        if spec.name in self.index:
            raise ValueError(f"models.{spec.name}: already known")
        self.index[spec.name] = len(self.specs)
        self.specs.append(spec)
        self.prices.set(spec.name, spec.price)
        self.enabled = np.append(self.enabled, spec.enabled)
        self.max_context = np.append(self.max_context, spec.max_context_tokens or np.inf)
        self._fits_all = np.zeros(len(self.max_context), dtype=bool)
        self._min_context = float(self.max_context.min())
        for cat in self._cats.values():
            self._add_arm(cat, spec)
        self._z = []
        self._lz = np.zeros((0, len(self.specs)))
        self._refresh_costs()

    def _refresh_costs(self, cat: _Category | None = None) -> None:
        """Recompute the cached per-category eligibility penalty and output cost (after a model,
        price or enablement change, or a new output-length estimate)."""
        for c in [cat] if cat is not None else self._cats.values():
            if len(c.serves) != len(self.specs):
                continue  # mid-way through adding a model
            c.penalty = np.where(self.enabled & c.serves, 0.0, -np.inf).tolist()
            c.out_cost = (c.out.mean * self.prices.output_per_token).tolist()
        self._input_per_token = self.prices.input_per_token.tolist()

    def _add_arm(self, cat: _Category, spec: ModelSpec) -> None:
        s = self.settings
        q, strength = spec.priors.get(cat.name, (s.prior_quality, s.prior_strength))
        if not (0.0 <= q <= 1.0 and strength > 0):
            raise ValueError(f"models.{spec.name}.priors.{cat.name}: quality must be in [0,1] and strength > 0")
        m0 = np.zeros(self.dim)
        m0[0] = q
        a0 = np.full(self.dim, s.feature_precision)
        a0[0] = strength
        cat.arms.add_arm(m0, a0)
        cat.out.add_model(spec.output_tokens)
        cat.lat.add_model(spec.ttft_s, spec.latency_s)
        cat.serves = np.append(cat.serves, spec.categories is None or cat.name in spec.categories)
        self._refresh_costs(cat)

    def _category(self, name: str) -> _Category:
        cat = self._cats.get(name)
        if cat is None:
            if len(self._cats) >= self.max_categories:
                raise TooManyCategories(
                    f"category: {name!r} is new and this router already keeps {len(self._cats)} categories, its "
                    f"limit (max_categories={self.max_categories}); use one of: {', '.join(sorted(self._cats))}")
            lat = LatencyEstimates(quantile=self.settings.latency_quantile, decay=self._event_decay)
            cat = self._cats[name] = _Category(name, self.dim, lat)
            for spec in self.specs:
                self._add_arm(cat, spec)
        return cat

    def serving(self, category: str) -> np.ndarray:
        """Per model: enabled and serving ``category`` (a new mask, the caller may change it)."""
        return np.isfinite(self._category(category).penalty)

    def set_enabled(self, model: str, enabled: bool) -> None:
        """Disable (deprecate) or re-enable a model; a disabled model is never chosen."""
        self.enabled[self._model_index(model)] = enabled
        self._refresh_costs()

    def set_price(self, model: str, price: Price) -> None:
        self._model_index(model)
        self.prices.set(model, price)
        self._refresh_costs()

    def scale_price(self, model: str, factor: float) -> Price:
        """A price change: every price of the model (cached input too) times ``factor``."""
        self._model_index(model)
        new = self.prices.scale(model, factor)
        self._refresh_costs()
        return new

    def _model_index(self, model: str) -> int:
        try:
            return self.index[model]
        except KeyError:
            raise KeyError(f"model: {model!r} is not configured (known: {', '.join(self.index)})") from None

    # -- deciding ----------------------------------------------------------------------------
    def infer_category(self, messages: Sequence[Message]) -> str:
        return self.classifier.classify(messages)

    def decide(self, messages: Sequence[Message], *, category: str | None = None,
               cost_weight: float | None = None, exclude: Iterable[str] = (),
               max_cost_usd: float | None = None, max_output_tokens: int | None = None,
               event_id: str | None = None, timestamp: float | None = None, model: str | None = None,
               allowed: np.ndarray | None = None, latency_weight: float | None = None,
               max_latency_s: float | None = None, stream: bool = False) -> Decision:
        """Choose a model for a chat request (``category`` inferred when not given).

        ``model`` forces the choice (a pass-through request): only that model is eligible, whether
        or not it serves the category (the caller asked for it), as long as the request fits its
        context window. ``allowed`` (a mask by model, e.g. the circuit breakers) narrows the choice.

        Not eligible: disabled models, ``exclude``, models whose context window is smaller than the
        prompt plus ``max_output_tokens``, and (when given) models whose expected cost exceeds
        ``max_cost_usd``. Latency: see :meth:`decide_features`."""
        x = featurize(messages)
        cat = category or self.infer_category(messages)
        tokens = estimate_tokens(messages)
        eligible = None
        excluded = list(exclude)
        needed = tokens + (max_output_tokens or 0)
        # the scalar test first: most requests fit every window, and this is the hot path
        too_long = self.max_context < needed if needed > self._min_context else self._fits_all
        if model is not None:
            eligible = np.zeros(len(self.specs), dtype=bool)
            eligible[self._model_index(model)] = True
            eligible &= ~too_long
        elif excluded or too_long is not self._fits_all or allowed is not None:
            eligible = ~too_long
            for m in excluded:
                eligible[self._model_index(m)] = False
            if allowed is not None:
                eligible &= allowed
        try:
            return self.decide_features(x, cat, tokens, cost_weight=cost_weight, eligible=eligible,
                                        max_cost_usd=max_cost_usd, event_id=event_id, timestamp=timestamp,
                                        forced=model is not None, latency_weight=latency_weight,
                                        max_latency_s=max_latency_s, stream=stream)
        except NoEligibleModel:
            if too_long is not self._fits_all and too_long.any():
                short = ", ".join(m for m, t in zip(self.models, too_long, strict=True) if t)
                raise NoEligibleModel(f"no eligible model: the request needs about {needed} tokens of context, "
                                      f"more than {short} take, and no other model may serve it") from None
            if max_cost_usd is not None:
                raise NoEligibleModel(f"no eligible model: none is expected to cost under max_cost_usd="
                                      f"{max_cost_usd:g}") from None
            raise

    def decide_features(self, x: np.ndarray, category: str, prompt_tokens: float, *,
                        cost_weight: float | None = None, eligible: np.ndarray | None = None,
                        max_cost_usd: float | None = None, event_id: str | None = None,
                        timestamp: float | None = None, forced: bool = False, latency_weight: float | None = None,
                        max_latency_s: float | None = None, stream: bool = False) -> Decision:
        """The hot path: one Thompson draw per arm, minus the cost penalty, best eligible arm.

        ``forced``: ``eligible`` alone decides (the category's serving and enablement are ignored).

        Latency (only when asked; otherwise no extra work): each model's expected latency is the
        ``latency_quantile`` of its time to first token (``stream``) or of its whole answer. The score
        loses ``latency_weight`` × that (quality points per second); with ``max_latency_s``, models
        expected to take longer are not eligible, and when that leaves none, the fastest eligible model
        is chosen (the lowest estimate) and the decision says ``deadline_met=False``. The weight and
        the deadline test use a draw around the estimate that narrows as a model's latency is observed
        (see :mod:`bandit_router.latency`), so a model whose latency is still unknown gets tried."""
        cat = self._cats.get(category) or self._category(category)
        if self._zi >= len(self._z):
            block = self._rng.standard_normal((1024, len(self.specs)))
            block *= self.settings.explore  # the draws' sd scale, applied once per block
            self._z, self._zi = block.tolist(), 0
        z = self._z[self._zi]
        self._zi += 1
        # Per model, in Python floats: a numpy call costs more than a handful of models' arithmetic.
        mean, sd = cat.arms.draw_moments(x)
        q = [s * zk + m for s, zk, m in zip(sd, z, mean, strict=True)]  # the Thompson draws
        costs = [prompt_tokens * a + b for a, b in zip(self._input_per_token, cat.out_cost, strict=True)]
        penalty = cat.penalty
        if eligible is not None or max_cost_usd is not None:
            ok = [True] * len(costs) if eligible is None else eligible.tolist()
            if max_cost_usd is not None:
                ok = [o and c <= max_cost_usd for o, c in zip(ok, costs, strict=True)]
            penalty = [(0.0 if forced else p) if o else -math.inf for o, p in zip(ok, penalty, strict=True)]
        w = self.settings.cost_weight if cost_weight is None else cost_weight
        lat = met = None
        if latency_weight or max_latency_s is not None:
            lat = cat.lat.expected(stream)  # the point estimates, for the record
            if self._lzi >= len(self._lz):
                self._lz = self._lat_rng.standard_normal((1024, len(self.specs)))
                self._lzi = 0
            drawn = cat.lat.sample(stream, self._lz[self._lzi])  # what decides (exploring)
            self._lzi += 1
            if latency_weight:
                q = (np.array(q) - latency_weight * drawn).tolist()
            if max_latency_s is not None:
                pen, met = apply_deadline(np.array(penalty), drawn, lat, max_latency_s)
                penalty = pen.tolist()
        k, scores = choose(q, costs, w, penalty)
        return Decision(category, self.specs[k].name, k, x, int(prompt_tokens), costs[k], w,
                        scores, costs, event_id, timestamp, None, None, sd, z, self.settings.explore,
                        None if lat is None else float(lat[k]), lat, met)

    # -- learning ----------------------------------------------------------------------------
    def _forget(self, cat: _Category, now: float | None, events: int = 1) -> None:
        """Decay a category's sums for ``events`` feedback events and the time since its last decay
        (the time part also decays its latency histograms, which otherwise forget per timed answer)."""
        hs = self.settings.half_life_seconds
        if events == 1 and (hs is None or now is None):
            cat.arms.decay(self._event_decay, self._log_event_decay)
            return
        log_g = self._log_event_decay * events
        if hs is not None and now is not None:
            if cat.last_t is not None and now > cat.last_t:
                log_t = -math.log(2.0) * (now - cat.last_t) / hs
                log_g += log_t
                cat.lat.forget(math.exp(log_t))
            cat.last_t = now if cat.last_t is None else max(now, cat.last_t)
        cat.arms.decay(math.exp(log_g), log_g)

    def learn(self, decision: Decision, quality: float, *, now: float | None = None) -> None:
        """Fold a quality in [0,1] for this decision into its (category, model) posterior.

        A decision is one observation. Learning again on a decision that already has a quality
        (a second signal arrived, and the caller combined them with ``feedback.combine``)
        *replaces* its quality in the posterior at the observation's current weight; it never
        adds a second observation.
        """
        if not (0.0 <= quality <= 1.0) or math.isnan(quality):
            raise ValueError(f"quality: {quality!r} must be in [0, 1]")
        cat = self._category(decision.category)
        if decision.quality is None:
            self._forget(cat, now)
            cat.arms.update(decision.arm, decision.x, quality)
            decision.stamp = cat.arms.stamp(decision.arm)
        elif decision.stamp is not None:
            cat.arms.revise(decision.arm, decision.x, decision.stamp, decision.quality, quality)
        decision.quality = quality

    def observe(self, category: str, arm: int, x: np.ndarray, quality: float, *,
                now: float | None = None) -> float:
        """Fold one observation without a Decision object; returns its stamp."""
        cat = self._category(category)
        self._forget(cat, now)
        cat.arms.update(arm, x, quality)
        return cat.arms.stamp(arm)

    def observe_output(self, decision: Decision, completion_tokens: float) -> None:
        """Fold the completion tokens of an answer into the output-length estimate."""
        cat = self._cats[decision.category]
        cat.out.observe(decision.arm, completion_tokens)
        cat.out_cost[decision.arm] = float(cat.out.mean[decision.arm] * self.prices.output_per_token[decision.arm])

    def observe_latency(self, decision: Decision, ttft_s: float | None, total_s: float) -> None:
        """Fold an answer's timing into its (category, model) latency estimates (``ttft_s``: None for
        a call that was not streamed)."""
        self._cats[decision.category].lat.observe(decision.arm, ttft_s, total_s)

    def latency(self, category: str) -> np.ndarray:
        """(2, models): the latency quantile of time to first token and of the whole answer, seconds."""
        return self._category(category).lat.quantiles()

    def forget(self, now: float) -> None:
        """Time-based forgetting of every category up to ``now`` (run on a schedule by the service)."""
        if self.settings.half_life_seconds is None:
            return
        for cat in self._cats.values():
            self._forget(cat, now, events=0)

    def warm_start(self, records: Iterable[tuple[str, np.ndarray, Mapping[str, float],
                                                 Mapping[str, float]]]) -> int:
        """Pre-train with full information: (category, x, {model: quality}, {model: output tokens}).

        Returns the number of observations folded in. Unknown models are ignored.
        """
        n = 0
        for category, x, qualities, out_tokens in records:
            cat = self._category(category)
            self._forget(cat, None)
            for model, q in qualities.items():
                k = self.index.get(model)
                if k is None:
                    continue
                cat.arms.update(k, x, float(q))
                if model in out_tokens:
                    cat.out.observe(k, out_tokens[model])
                n += 1
        self._refresh_costs()
        return n

    # -- state -------------------------------------------------------------------------------
    def posterior(self, category: str, model: str) -> Posterior:
        return self._category(category).arms.get(self._model_index(model))

    def load_posterior(self, category: str, model: str, post: Posterior) -> None:
        self._category(category).arms.set(self._model_index(model), post)

    def state_keys(self, category: str, model: str | None = None) -> str:
        return f"category:{category}" if model is None else f"arm:{category}:{model}"

    def latency_states(self) -> dict[str, bytes]:
        """Every (category, model) latency estimate, under ``latency:{category}:{model}`` keys."""
        return {f"latency:{name}:{m}": cat.lat.export_model(k).tobytes()
                for name, cat in self._cats.items() for k, m in enumerate(self.models)}

    def export_state(self, category: str, model: str | None = None) -> bytes:
        """The exact learning state of a category (its forgetting clock) or of one (category, model)
        arm (its sums, prior, change detector and output-length estimate), as bytes."""
        cat = self._category(category)
        if model is None:
            clock = math.nan if cat.last_t is None else cat.last_t
            return np.concatenate([cat.arms.export_category(), [clock]]).tobytes()
        k = self._model_index(model)
        out = np.array([cat.out.mean[k], cat.out.n[k]])
        return np.concatenate([out, cat.arms.export_arm(k)]).tobytes()

    def import_state(self, states: Mapping[str, bytes]) -> int:
        """Restore states written by :meth:`export_state` (keys from :meth:`state_keys`); unknown
        models are skipped. Returns the number of arms restored."""
        n = 0
        touched = set()
        for key, blob in states.items():
            kind, _, rest = key.partition(":")
            if kind not in ("category", "arm", "latency"):
                continue  # another part's state (the service's model switches, budgets)
            v = np.frombuffer(blob, dtype=np.float64)
            if kind == "category":
                cat = self._category(rest)
                cat.arms.import_category(v)
                if len(v) > 3 and not math.isnan(v[3]):  # the forgetting clock (absent in older states)
                    cat.last_t = float(v[3])
                touched.add(rest)
            elif kind == "latency":
                category, _, model = rest.partition(":")
                if model in self.index:
                    try:
                        self._category(category).lat.import_model(self.index[model], v)
                    except ValueError:  # another layout (other buckets) or damaged: the estimate re-learns
                        pass
            elif kind == "arm":
                category, _, model = rest.partition(":")
                if model not in self.index:
                    continue
                cat = self._category(category)
                k = self.index[model]
                cat.out.mean[k], cat.out.n[k] = v[0], v[1]
                cat.arms.import_arm(k, v[2:])
                touched.add(category)
                n += 1
        for name in touched:
            self._cats[name].arms.refresh_all()
        self._refresh_costs()
        return n

    def dirty_states(self, decision: Decision | None = None) -> dict[str, bytes]:
        """What to persist after learning ``decision``: its arm and its category, or every arm of the
        category when the category's stored sums were all rewritten (a rare renormalisation)."""
        out: dict[str, bytes] = {} if decision is not None else self.latency_states()
        cats = [decision.category] if decision is not None else list(self._cats)
        for name in cats:
            cat = self._cats[name]
            out[self.state_keys(name)] = self.export_state(name)
            if decision is None or cat.arms.epoch != self._epochs.get(name):
                self._epochs[name] = cat.arms.epoch
                models = self.models
            else:
                models = [decision.model]
            for m in models:
                out[self.state_keys(name, m)] = self.export_state(name, m)
        return out

    def expected_output_tokens(self, category: str, model: str) -> float:
        return float(self._category(category).out.mean[self._model_index(model)])

    def arm_stats(self) -> dict[str, dict[str, dict[str, float | int | bool]]]:
        """Per category, per model: observations, posterior mean/sd of quality, output tokens."""
        out: dict[str, dict[str, dict[str, float | int | bool]]] = {}
        for name, cat in self._cats.items():
            rows = {}
            lat = cat.lat.quantiles()
            for k, spec in enumerate(self.specs):
                post = cat.arms.get(k)
                mean, sd = cat.arms.mean_quality(k)
                rows[spec.name] = {
                    "observations": int(cat.arms.count[k]),
                    "effective_observations": post.n,
                    "quality_mean": mean,
                    "quality_sd": sd,
                    "prior_quality": float(cat.arms.m0[k, 0]),
                    "prior_strength": float(cat.arms.a0[k, 0]),
                    "output_tokens": float(cat.out.mean[k]),
                    "enabled": bool(self.enabled[k]),
                    "serves": bool(cat.serves[k]),
                    "ttft_s": float(lat[0, k]),  # the latency_quantile (p90) of time to first token
                    "latency_s": float(lat[1, k]),  # ... and of the whole answer
                    "latency_observations": int(cat.lat.n[1, k]),
                }
            out[name] = rows
        return out
