"""Normalise user ratings and grader outcomes to a quality in [0, 1].

Standalone: imports nothing from ``bandit_router`` and performs no I/O.

Accepted values (anything else raises :class:`SignalError`, a ``ValueError`` whose message starts with the
offending field path, e.g. ``rating.stars: 6 is out of range 1..5``):

* ``from_score``     -- a number in [0, 1] -> itself.
* ``from_thumbs``    -- ``"up"``, ``"thumbs_up"``, the thumbs-up emoji or ``True`` -> 1.0;
  ``"down"``, ``"thumbs_down"``, the thumbs-down emoji or ``False`` -> 0.0.
  Strings must match exactly (case-sensitive, no surrounding whitespace).
* ``from_stars``     -- a whole number 1..5 -> (s - 1) / 4. ``4.0`` is accepted, ``3.5`` is rejected.
* ``from_ten_point`` -- a number in [0, 10] -> s / 10. Fractional values such as 7.5 are allowed.
* ``from_grader``    -- ``passed`` (a bool) -> 1.0 / 0.0, or ``score``/``max`` with ``max > 0`` and
  ``0 <= score <= max`` -> score / max.

A "number" is a finite ``int``/``float`` (any ``numbers.Real``). ``bool`` is never a number (``True`` is not a
star rating), numeric strings such as ``"4"`` are rejected, and NaN/inf are rejected.

Combining signals for one decision (:func:`combine`)
----------------------------------------------------
1. Signals are keyed by ``source``. Callers pass at most one signal per source; if a source occurs more than
   once, the last one in iteration order replaces the earlier ones (their quality and weight are discarded).
2. The decision's quality is the weight-weighted mean over the remaining sources:
   ``sum(w_s * q_s) / sum(w_s)``.
3. Human sources (any source not starting with ``"grader:"``) and grader sources are treated alike: each
   counts with its ``weight`` (default 1.0, so with default weights it is the plain mean over sources).
4. Empty input raises ``SignalError("signals", "empty")`` (message ``"signals: empty"``).

The result always lies between the smallest and largest quality combined (it is clamped to that range to
absorb floating-point rounding), so it is in [0, 1] and equals ``q`` exactly when every quality is ``q``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

__all__ = [
    "GRADER_PREFIX", "KINDS", "MAX_SOURCE_LEN", "FeedbackSignal", "Kind", "SignalError", "combine",
    "from_grader", "from_score", "from_stars", "from_ten_point", "from_thumbs", "parse_feedback",
]

Kind = Literal["score", "thumbs", "stars", "ten_point", "grader_pass", "grader_score"]
KINDS: Final = frozenset({"score", "thumbs", "stars", "ten_point", "grader_pass", "grader_score"})
MAX_SOURCE_LEN: Final = 100
GRADER_PREFIX: Final = "grader:"

_THUMBS: Final = {"up": 1.0, "thumbs_up": 1.0, "\N{THUMBS UP SIGN}": 1.0,
                  "down": 0.0, "thumbs_down": 0.0, "\N{THUMBS DOWN SIGN}": 0.0}
_PAYLOAD_KINDS: Final = ("score", "rating", "grader")
_PAYLOAD_KEYS: Final = (*_PAYLOAD_KINDS, "source", "event_id")
_RATING_KEYS: Final = ("thumbs", "stars", "scale", "value", "ten")
_GRADER_KEYS: Final = ("name", "passed", "score", "max")
_MISSING: Any = object()  # "key absent", as distinct from an explicit None/null


class SignalError(ValueError):
    """A malformed or out-of-range feedback value; ``str(err)`` is ``"<field>: <reason>"``.

    ``field`` is the path of the offending value, e.g. ``"rating.stars"``, ``"grader.max"``, ``"source"``.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable despite the two-argument constructor
        return (type(self), (self.field, self.reason))


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    """Render a value for an error message, bounded in length (payloads may be hostile)."""
    return _clip(str(value) if isinstance(value, numbers.Number) else repr(value))


def _real(value: Any, field: str) -> float:
    """``value`` as a finite float; rejects bools, strings, None, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SignalError(field, f"expected a number, got {type(value).__name__} {_show(value)}")
    try:
        x = float(value)
    except (OverflowError, ValueError):
        x = math.inf
    if not math.isfinite(x):
        raise SignalError(field, f"{_show(value)} is not a finite number")
    return x


@dataclass(frozen=True, slots=True)
class FeedbackSignal:
    """One normalised quality observation about one routing decision.

    Validated on construction (also by ``dataclasses.replace``): ``quality`` in [0, 1], ``source`` a non-empty
    string of at most 100 characters, ``kind`` one of :data:`KINDS`, ``weight`` finite and > 0. To weight a
    signal, use ``dataclasses.replace(sig, weight=2.0)``.
    """

    quality: float
    source: str
    kind: Kind
    weight: float = 1.0

    def __post_init__(self) -> None:
        q = _real(self.quality, "quality")
        if not 0.0 <= q <= 1.0:
            raise SignalError("quality", f"{_show(self.quality)} is out of range 0..1")
        src = self.source
        if not isinstance(src, str) or not src.strip():
            raise SignalError("source", f"must be a non-empty string, got {_show(src)}")
        if len(src) > MAX_SOURCE_LEN:
            raise SignalError("source", f"must be at most {MAX_SOURCE_LEN} characters, got {len(src)}")
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise SignalError("kind", f"{_show(self.kind)} is not one of {', '.join(sorted(KINDS))}")
        w = _real(self.weight, "weight")
        if w <= 0.0:
            raise SignalError("weight", f"{_show(self.weight)} must be > 0")
        object.__setattr__(self, "quality", q + 0.0)  # + 0.0 turns -0.0 into 0.0
        object.__setattr__(self, "weight", w)


def _score(value: Any, source: str, field: str) -> FeedbackSignal:
    q = _real(value, field)
    if not 0.0 <= q <= 1.0:
        raise SignalError(field, f"{_show(value)} is out of range 0..1")
    return FeedbackSignal(q, source, "score")


def _thumbs(value: Any, source: str, field: str) -> FeedbackSignal:
    if isinstance(value, bool):
        return FeedbackSignal(1.0 if value else 0.0, source, "thumbs")
    if isinstance(value, str) and value in _THUMBS:
        return FeedbackSignal(_THUMBS[value], source, "thumbs")
    raise SignalError(field, f"{_show(value)} is not a thumbs value (expected 'up' or 'down')")


def _stars(value: Any, source: str, field: str) -> FeedbackSignal:
    s = _real(value, field)
    if not s.is_integer():
        raise SignalError(field, f"{_show(value)} is not a whole number of stars")
    if not 1.0 <= s <= 5.0:
        raise SignalError(field, f"{_show(value)} is out of range 1..5")
    return FeedbackSignal((s - 1.0) / 4.0, source, "stars")


def _ten_point(value: Any, source: str, field: str) -> FeedbackSignal:
    s = _real(value, field)
    if not 0.0 <= s <= 10.0:
        raise SignalError(field, f"{_show(value)} is out of range 0..10")
    return FeedbackSignal(s / 10.0, source, "ten_point")


def _grader(name: Any, passed: Any, score: Any, max_: Any) -> FeedbackSignal:
    """Grader outcome; ``_MISSING`` marks an argument that was not given."""
    if not isinstance(name, str) or not name.strip():
        raise SignalError("grader.name", f"must be a non-empty string, got {_show(name)}")
    if len(GRADER_PREFIX) + len(name) > MAX_SOURCE_LEN:
        limit = MAX_SOURCE_LEN - len(GRADER_PREFIX)
        raise SignalError("grader.name", f"must be at most {limit} characters, got {len(name)}")
    source = GRADER_PREFIX + name
    has_score = score is not _MISSING or max_ is not _MISSING
    if passed is not _MISSING:
        if has_score:
            raise SignalError("grader", "give either passed or score+max, not both")
        if not isinstance(passed, bool):
            raise SignalError("grader.passed", f"expected a bool, got {_show(passed)}")
        return FeedbackSignal(1.0 if passed else 0.0, source, "grader_pass")
    if not has_score:
        raise SignalError("grader", "one of passed or score+max is required")
    if score is _MISSING or max_ is _MISSING:
        missing, other = ("score", "max") if score is _MISSING else ("max", "score")
        raise SignalError(f"grader.{missing}", f"is required when {other} is given")
    m = _real(max_, "grader.max")
    if m <= 0.0:
        raise SignalError("grader.max", f"{_show(max_)} must be > 0")
    s = _real(score, "grader.score")
    if not 0.0 <= s <= m:
        raise SignalError("grader.score", f"{_show(score)} must be between 0 and max ({_show(max_)})")
    return FeedbackSignal(s / m, source, "grader_score")


def from_score(score: float, *, source: str = "user") -> FeedbackSignal:
    """A quality score already in [0, 1] (field ``score``); returned unchanged."""
    return _score(score, source, "score")


def from_thumbs(value: str | bool, *, source: str = "user") -> FeedbackSignal:
    """Thumbs up/down (field ``thumbs``): ``"up"``/``"thumbs_up"``/emoji/``True`` -> 1.0, down -> 0.0."""
    return _thumbs(value, source, "thumbs")


def from_stars(value: int, *, source: str = "user") -> FeedbackSignal:
    """A whole-number 1..5 star rating (field ``stars``) -> (s - 1) / 4."""
    return _stars(value, source, "stars")


def from_ten_point(value: float, *, source: str = "user") -> FeedbackSignal:
    """A score on a 0..10 scale (field ``ten_point``) -> s / 10; fractional values are allowed."""
    return _ten_point(value, source, "ten_point")


def from_grader(
    name: str, *, passed: bool | None = None, score: float | None = None, max: float | None = None
) -> FeedbackSignal:
    """A grader outcome with source ``"grader:<name>"``: exactly one of ``passed`` or ``score`` + ``max``.

    ``passed`` -> 1.0 / 0.0 (kind ``grader_pass``); ``score / max`` (kind ``grader_score``) requires
    ``max > 0`` and ``0 <= score <= max``. Fields are reported as ``grader.name``, ``grader.score`` ...
    """
    passed_, score_, max_ = (_MISSING if v is None else v for v in (passed, score, max))
    return _grader(name, passed_, score_, max_)


def _reject_unknown(obj: Mapping[Any, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            name = _clip(key) if isinstance(key, str) else _show(key)
            raise SignalError(f"{prefix}{name}", f"unknown key (allowed: {', '.join(allowed)})")


def _parse_rating(value: Any, source: str) -> FeedbackSignal:
    if isinstance(value, str | bool):
        return _thumbs(value, source, "rating")
    if not isinstance(value, Mapping):
        raise SignalError("rating", f"expected 'up', 'down' or an object, got {type(value).__name__}")
    _reject_unknown(value, _RATING_KEYS, "rating.")
    forms = [f for f in ("thumbs", "stars", "ten") if f in value]
    if "scale" in value or "value" in value:
        forms.append("scale+value")
    if len(forms) != 1:
        got = ", ".join(forms) or "none"
        raise SignalError("rating", f"expected exactly one of thumbs, stars, scale+value, ten; got {got}")
    form = forms[0]
    if form != "scale+value":
        parse = {"thumbs": _thumbs, "stars": _stars, "ten": _ten_point}[form]
        return parse(value[form], source, f"rating.{form}")
    for key in ("scale", "value"):
        if key not in value:
            raise SignalError(f"rating.{key}", "is required: the 0..10 form is {'scale': 10, 'value': v}")
    if _real(value["scale"], "rating.scale") != 10.0:
        raise SignalError("rating.scale", f"{_show(value['scale'])} is not supported (only 10)")
    return _ten_point(value["value"], source, "rating.value")


def _parse_grader(value: Any) -> FeedbackSignal:
    if not isinstance(value, Mapping):
        raise SignalError("grader", f"expected an object, got {type(value).__name__}")
    _reject_unknown(value, _GRADER_KEYS, "grader.")
    if "name" not in value:
        raise SignalError("grader.name", "is required")
    get = value.get
    return _grader(value["name"], get("passed", _MISSING), get("score", _MISSING), get("max", _MISSING))


def parse_feedback(payload: Mapping[str, Any]) -> FeedbackSignal:
    """Parse the HTTP wire shape into a :class:`FeedbackSignal`.

    ``payload`` holds exactly one of ``score`` (number in [0, 1]), ``rating`` (``"up"``/``"down"`` or any
    :func:`from_thumbs` value, or an object with exactly one of ``{"thumbs": ...}``, ``{"stars": 1..5}``,
    ``{"scale": 10, "value": 0..10}``, ``{"ten": 0..10}``) or ``grader`` (``{"name": str, "passed": bool}`` or
    ``{"name": str, "score": number, "max": number}``); plus optional ``source`` (non-empty string, at most
    100 characters; ``null`` means absent; default ``"user"``, or ``"grader:<name>"`` for graders) and
    optional ``event_id`` (ignored here; the caller handles it). Any other key is rejected.
    """
    if not isinstance(payload, Mapping):
        raise SignalError("payload", f"expected an object, got {type(payload).__name__}")
    _reject_unknown(payload, _PAYLOAD_KEYS, "")
    kinds = [k for k in _PAYLOAD_KINDS if k in payload]
    if len(kinds) != 1:
        got = ", ".join(kinds) or "none"
        raise SignalError("payload", f"expected exactly one of score, rating, grader; got {got}")
    source = payload.get("source")  # validated by FeedbackSignal; None/null means "use the default"
    if kinds[0] == "score":
        return _score(payload["score"], "user" if source is None else source, "score")
    if kinds[0] == "rating":
        return _parse_rating(payload["rating"], "user" if source is None else source)
    signal = _parse_grader(payload["grader"])
    return signal if source is None else replace(signal, source=source)


def combine(signals: Iterable[FeedbackSignal]) -> float:
    """One quality for one decision: last signal per source wins, then the weight-weighted mean over sources.

    See the module docstring for the full rule. Raises ``SignalError`` (``"signals: empty"``) on empty input.
    """
    latest: dict[str, FeedbackSignal] = {}
    for i, sig in enumerate(signals):
        if not isinstance(sig, FeedbackSignal):
            raise SignalError(f"signals[{i}]", f"expected a FeedbackSignal, got {type(sig).__name__}")
        latest[sig.source] = sig
    if not latest:
        raise SignalError("signals", "empty")
    chosen = list(latest.values())
    top = max(s.weight for s in chosen)  # rescale weights to (0, 1] so the sums cannot overflow
    total = math.fsum(s.weight / top for s in chosen)
    mean = math.fsum(s.weight / top * s.quality for s in chosen) / total
    lo, hi = min(s.quality for s in chosen), max(s.quality for s in chosen)
    return min(max(mean, lo), hi)
