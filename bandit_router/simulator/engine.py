"""The simulated provider fleet without HTTP: one :class:`Simulator` holds a profile's models,
their live (drifted) state and counters, and turns a request into an :class:`Outcome`.

Every random choice of a request (failure, right or wrong, answer length, the wrong answer, the
filler text) comes from one ``random.Random`` seeded by BLAKE2b of (seed, model, the model's
request number, the conversation text). Given the seed and the order of requests to each model,
a run is reproducible, and models do not disturb each other's draws.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from pydantic import Field

from ..categories import CategoryClassifier
from ..features import Message, conversation_text, estimate_tokens, text_tokens
from . import protocol
from .profile import ModelProfile, Profile, Score, StrictModel

PREFIX_CACHE_SIZE = 20_000
_FILLER = {
    "coding": ["Let me read the code and the failing case first.", "The loop bound is off by one here.",
               "A helper function keeps the parsing separate from the I/O.", "Edge cases: empty input and "
               "a single element.", "The tests cover the sorted and the reversed order.",
               "Complexity is linear in the input size."],
    "reasoning": ["Let me restate the problem.", "Suppose the first claim holds; then the second follows.",
                  "Checking the small cases rules out the other options.", "By symmetry both orders give "
                  "the same count.", "The contradiction shows the assumption was wrong.", "So step by step:"],
    "science": ["The key quantity here is conserved.", "Energy moves from the warmer body to the colder one.",
                "The options differ in the units they assume.", "A control group isolates the variable.",
                "At equilibrium the two rates are equal.", "The observation fits the second hypothesis."],
    "computer_use": ["First I take a screenshot to see the window.", "The settings button is in the top right.",
                     "I click the field and type the value.", "The page reloads after the form is sent.",
                     "Scrolling down shows the confirmation.", "The dialog closes on its own."],
    "general": ["Here is a short answer.", "There are a few things to weigh.", "The usual advice applies with "
                "one caveat.", "In short, it depends on the goal.", "A concrete example makes it clearer.",
                "That covers the main points."],
}


class SimError(Exception):
    """A request the simulated provider answers with an OpenAI-style error."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, delay_s: float = 0.0) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.delay_s = delay_s  # a hang: the error is sent only after this long

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class PricePatch(StrictModel):
    input: float | None = Field(default=None, ge=0.0)
    output: float | None = Field(default=None, ge=0.0)
    cached_input: float | None = Field(default=None, ge=0.0)


class AdminUpdate(StrictModel):
    """Body of ``POST /admin/models/{name}``: every field optional, each takes effect at once."""

    quality: dict[str, Annotated[float, Field(ge=0.0, le=1.0)] | None] | None = None
    quality_scale: float | None = Field(default=None, ge=0.0)
    price: PricePatch | None = None
    fail_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    hang_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    hang_s: float | None = Field(default=None, gt=0.0)
    latency_scale: float | None = Field(default=None, ge=0.0)
    available: bool | None = None


@dataclass
class Outcome:
    model: str
    category: str
    correct: bool
    content: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft_s: float
    s_per_token: float
    cost_usd: float
    request_id: str


@dataclass
class ModelState:
    spec: ModelProfile
    quality_scale: float = 1.0
    latency_scale: float = 1.0
    requests: int = 0
    completions: int = 0
    failures: int = 0
    hangs: int = 0
    correct: int = 0
    by_category: dict[str, dict[str, int]] = field(default_factory=dict)
    prefixes: OrderedDict[bytes, int] = field(default_factory=OrderedDict)

    def p(self, category: str) -> float | None:
        base = self.spec.p(category)
        return None if base is None else min(1.0, base * self.quality_scale)


def _draw_tokens(rng: random.Random, mean: float, cv: float) -> int:
    if cv <= 0:
        return max(1, round(mean))
    sigma2 = math.log1p(cv * cv)
    return max(1, min(100_000, round(rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2)))))


def _filler(rng: random.Random, category: str, chars: int) -> str:
    sentences = _FILLER.get(category, _FILLER["general"])
    parts: list[str] = []
    size = 0
    while size < chars:
        s = rng.choice(sentences)
        if parts and s == parts[-1]:
            continue
        parts.append(s)
        size += len(s) + 1
    return " ".join(parts)[:chars].rstrip()


class Simulator:
    """The fleet's live state. Not thread-safe; one event loop owns it."""

    def __init__(self, profile: Profile, *, seed: int = 0, classifier: CategoryClassifier | None = None) -> None:
        self.profile = profile.model_copy(deep=True)
        self.seed = seed
        self.classifier = classifier or CategoryClassifier()
        self.reset()

    def reset(self) -> None:
        """Back to the profile as loaded: drift undone, counters and prompt caches cleared."""
        self.latency_scale = self.profile.latency_scale
        self.models = {name: ModelState(spec.model_copy(deep=True)) for name, spec in self.profile.models.items()}

    def lookup(self, model: str) -> ModelState:
        state = self.models.get(model)
        if state is None:
            raise SimError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        if not state.spec.available:
            raise SimError(404, f"The model `{model}` has been deprecated.", param="model", code="model_not_found")
        return state

    def category_of(self, messages: Sequence[Message], hint: str | None) -> str:
        if hint is None:
            return self.classifier.classify(messages)
        if hint not in self.profile.categories:
            raise SimError(400, f"X-Sim-Category {hint!r} is not one of {self.profile.categories}",
                           param="X-Sim-Category", code="unknown_category")
        return hint

    def _cached_tokens(self, state: ModelState, messages: Sequence[Message]) -> int:
        """Prompt caching: tokens of the longest earlier-seen prefix (whole messages, before the last)."""
        h = hashlib.blake2b(digest_size=16)
        cached = 0
        for i, m in enumerate(messages):
            try:
                h.update(orjson.dumps(m, option=orjson.OPT_SORT_KEYS, default=str))
            except orjson.JSONEncodeError:  # nested deeper than orjson goes (254 levels)
                h.update(json.dumps(m, sort_keys=True, default=str).encode())
            key = h.copy().digest()
            if i < len(messages) - 1 and key in state.prefixes:
                cached = state.prefixes[key]
                state.prefixes.move_to_end(key)
            state.prefixes[key] = estimate_tokens(messages[: i + 1])
        while len(state.prefixes) > PREFIX_CACHE_SIZE:
            state.prefixes.popitem(last=False)
        return 0 if cached < self.profile.cache_min_tokens else cached // 128 * 128

    def complete(self, model: str, messages: Sequence[Message], *, category: str | None = None,
                 max_tokens: int | None = None, stop: Sequence[str] = ()) -> Outcome:
        """One simulated completion; raises :class:`SimError` for the error responses."""
        state = self.lookup(model)
        category = self.category_of(messages, category)
        state.requests += 1
        counts = state.by_category.setdefault(category, {"requests": 0, "correct": 0})
        counts["requests"] += 1
        text = conversation_text(messages)
        digest = hashlib.blake2b(f"{self.seed}\x00{model}\x00{state.requests}\x00{text}".encode(
            "utf-8", "surrogatepass"), digest_size=16).digest()
        rng = random.Random(int.from_bytes(digest, "big"))
        if rng.random() < state.spec.fail_rate:
            state.failures += 1
            raise SimError(500, "The server had an error while processing your request. Sorry about that!",
                           "server_error", code="simulated_failure")
        if state.spec.hang_rate and rng.random() < state.spec.hang_rate:  # drawn only when set: seeds keep
            state.hangs += 1
            raise SimError(504, f"The model `{model}` timed out.", "server_error", code="simulated_hang",
                           delay_s=state.spec.hang_s)
        p = state.p(category)
        if p is None and self.profile.unserved == "error":
            raise SimError(400, f"The model `{model}` does not support {category} requests.",
                           param="model", code="unsupported_category")
        correct = rng.random() < (p or 0.0)
        expected = protocol.expected_answer(messages)
        answer_line = f"ANSWER: {protocol.answer_value(correct, expected, rng)}"
        dist = self.profile.output_tokens(model, category)
        n_tokens = _draw_tokens(rng, dist.mean, dist.cv)
        body_chars = 4 * n_tokens - len(answer_line.encode()) - 1
        content = (_filler(rng, category, body_chars) + "\n" if body_chars > 0 else "") + answer_line
        finish = "stop"
        cuts = [i for i in (content.find(s) for s in stop if s) if i >= 0]
        if cuts:
            content = content[: min(cuts)]
        if max_tokens is not None and text_tokens(content) > max_tokens:
            content = content.encode()[: 4 * max_tokens].decode("utf-8", "ignore")
            finish = "length"
        correct = correct and protocol.grade(content, expected) == 1.0
        state.completions += 1
        state.correct += correct
        counts["correct"] += correct
        prompt_tokens = estimate_tokens(messages)
        cached = min(self._cached_tokens(state, messages), prompt_tokens)
        completion_tokens = text_tokens(content) if content else 0
        price = state.spec.price
        cached_price = price.input if price.cached_input is None else price.cached_input
        cost = ((prompt_tokens - cached) * price.input + cached * cached_price
                + completion_tokens * price.output) / 1e6
        scale = self.latency_scale * state.latency_scale
        lat = state.spec.latency
        ttft_s, s_per_token = lat.ttft_ms / 1000 * scale, scale / lat.tokens_per_s
        if lat.sigma:  # drawn last, and only when set: the other draws of a seed stay as they were
            ttft_s *= math.exp(lat.sigma * rng.gauss(0.0, 1.0))
            s_per_token *= math.exp(lat.sigma * rng.gauss(0.0, 1.0))
        return Outcome(model, category, correct, content, finish, prompt_tokens, cached, completion_tokens,
                       ttft_s, s_per_token, cost, digest.hex()[:24])

    def update(self, model: str, change: AdminUpdate) -> None:
        state = self.models.get(model)
        if state is None:
            raise SimError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        for category in change.quality or {}:
            if category not in self.profile.categories:
                raise SimError(400, f"quality.{category}: unknown category (categories: {self.profile.categories})",
                               param=f"quality.{category}")
        spec = state.spec
        for category, p in (change.quality or {}).items():
            old = spec.quality.get(category) or Score(p=None)
            spec.quality[category] = old.model_copy(update={"p": p, "source": "admin", "assumption": None})
        if change.price is not None:
            spec.price = spec.price.model_copy(update=change.price.model_dump(exclude_none=True))
        for name in ("quality_scale", "latency_scale"):
            if getattr(change, name) is not None:
                setattr(state, name, getattr(change, name))
        if change.fail_rate is not None:
            spec.fail_rate = change.fail_rate
        if change.hang_rate is not None:
            spec.hang_rate = change.hang_rate
        if change.hang_s is not None:
            spec.hang_s = change.hang_s
        if change.available is not None:
            spec.available = change.available

    def snapshot(self) -> dict[str, Any]:
        """The live state as JSON-able data (``GET /admin/models``)."""
        models = {}
        for name, s in self.models.items():
            base = self.profile.models[name]
            models[name] = {
                "available": s.spec.available, "owned_by": s.spec.owned_by,
                "quality": {c: s.p(c) for c in self.profile.categories},
                "profile_quality": {c: base.p(c) for c in self.profile.categories},
                "quality_scale": s.quality_scale, "fail_rate": s.spec.fail_rate,
                "hang_rate": s.spec.hang_rate, "hang_s": s.spec.hang_s, "hangs": s.hangs,
                "price": s.spec.price.model_dump(exclude={"assumption"}),
                "latency": {"ttft_ms": s.spec.latency.ttft_ms, "tokens_per_s": s.spec.latency.tokens_per_s,
                            "latency_scale": s.latency_scale},
                "requests": s.requests, "completions": s.completions, "failures": s.failures,
                "correct": s.correct, "by_category": s.by_category,
            }
        return {"profile": self.profile.name, "seed": self.seed, "latency_scale": self.latency_scale,
                "categories": self.profile.categories, "models": models}
