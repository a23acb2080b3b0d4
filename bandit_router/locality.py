"""Data locality: which models a request's data may reach.

Models carry a locality tag in the config (``local``, or a region such as ``eu``; untagged models
have none). A request is *restricted* to a locality when it says so (``router.locality`` or the
``X-Router-Locality`` header), or when the :class:`SensitiveDataDetector` finds personal data
anywhere in it (message text, names, tool-call arguments, tool definitions) and the config routes
such requests somewhere (``locality.sensitive.route_to``); personal data in a request that asked
for another locality is refused. A restricted
request is routed only among models with that tag: the decision, its retries and its fallbacks
all draw from that set. When no such model may serve it, it fails closed (:class:`LocalityError`).

Pure: regular expressions over the request's text, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import regex

__all__ = ["BUILTIN_DETECTORS", "LocalityError", "LocalityPolicy", "SensitiveDataDetector", "locality_mask",
           "request_text"]


class LocalityError(Exception):
    """A restricted request has no model of its locality (``status``: 422 none configured, 503 none
    eligible now)."""

    def __init__(self, message: str, status: int = 422, code: str = "locality_unavailable") -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # locality_unavailable, or locality_conflict (personal data asked elsewhere)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and _luhn(digits)


_EXAMPLE_DOMAIN = re.compile(r"@(?:[A-Za-z0-9\-]+\.)*example\.(?:com|org|net)$|\.(?:example|test|invalid)$", re.I)


def _email(match: str) -> bool:
    """Not an address at a domain reserved for examples (RFC 2606: example.com, .test, ...)."""
    return _EXAMPLE_DOMAIN.search(match) is None


def _phone(match: str) -> bool:
    return 8 <= len(re.sub(r"\D", "", match)) <= 15  # E.164 allows up to 15 digits


# name -> (pattern, check of the matched text or None). Built-in patterns are ours (no catastrophic
# backtracking); operators' patterns run with a time budget.
BUILTIN_DETECTORS: dict[str, tuple[re.Pattern[str], Any]] = {
    "email": (re.compile(r"\b[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b"),
              _email),
    # +44 20 7946 0958, (555) 123-4567, 555-123-4567, +1.555.123.4567: a separator-structured number
    "phone": (re.compile(r"(?<![\w+.\-])(?<!\d[ .])(?:\+\d{1,3}[ .\-]?)?"
                         r"(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{4}(?![\w\-]|[ .]\d)"), _phone),
    # 13-19 digits, optionally in groups separated by spaces or dashes, passing the Luhn check, not
    # part of a longer word (hex ids and tool-call ids hold Luhn-valid digit runs)
    # (the lookbehind follows the first digit: checked only where a digit is, 2.4x faster on prose)
    "card": (re.compile(r"\d(?<![\w\-]\d)(?:[ \-]?\d){12,18}(?![\w\-])"), _card),
    # US SSN (not 000/666/9xx area, 00 group, 0000 serial) and UK National Insurance numbers
    "national_id": (re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"
                               r"|\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"), None),
}


# Values that are not text a person wrote: provider-issued ids, and opaque payloads (a data: URL's
# base64, input audio). A regular expression finds nothing personal in them, only false alarms, and
# scanning a megabyte of base64 would stall the event loop.
_OPAQUE_KEYS = frozenset({"id", "tool_call_id", "data"})


def request_text(payload: Any) -> str:
    """Every piece of text in a request, newline-joined: message contents and text parts, but also
    names, tool-call arguments, tool definitions, object keys and numbers (a card number sent as a
    JSON number is still one): everything a provider receives, except our own hints (a top-level
    ``router`` field, never sent upstream), ids (``id``, ``tool_call_id``) and opaque data (``data``
    fields, ``data:`` URLs)."""
    parts: list[str] = []
    stack = [payload]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.startswith("data:"):
                parts.append(v)
        elif isinstance(v, Mapping):
            for k, x in v.items():
                if k in _OPAQUE_KEYS or (v is payload and k == "router"):
                    continue
                parts.append(str(k))
                stack.append(x)
        elif isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            parts.append(str(v))
    parts.reverse()
    return "\n".join(parts)


class SensitiveDataDetector:
    """Finds personal data in a request: the built-in kinds named in ``detect`` plus the operator's
    own ``patterns`` (name -> regular expression, matched with a time budget per request)."""

    def __init__(self, detect: Iterable[str] = tuple(BUILTIN_DETECTORS), patterns: Mapping[str, str] | None = None,
                 *, timeout_s: float = 0.05) -> None:
        self.detect = list(detect)
        unknown = [d for d in self.detect if d not in BUILTIN_DETECTORS]
        if unknown:
            raise ValueError(f"locality.sensitive.detect: unknown {unknown}; built in: {sorted(BUILTIN_DETECTORS)}")
        self.patterns: dict[str, regex.Pattern[str]] = {}
        for name, pattern in (patterns or {}).items():
            try:
                self.patterns[name] = regex.compile(pattern)
            except regex.error as e:
                raise ValueError(f"locality.sensitive.patterns.{name}: not a valid regular expression: {e}") from None
        self.timeout_s = timeout_s

    def find(self, text: str) -> list[str]:
        """The kinds of sensitive data in ``text`` (empty: none found). A custom pattern that runs
        out of time counts as a match: when in doubt, keep the data local."""
        found = []
        for name in self.detect:
            pattern, check = BUILTIN_DETECTORS[name]
            if name == "email" and "@" not in text:
                continue  # (the pattern tries every letter as the start of an address: slow on long text)
            for m in pattern.finditer(text):
                if check is None or check(m.group()):
                    found.append(name)
                    break
        for name, pat in self.patterns.items():
            try:
                if pat.search(text, timeout=self.timeout_s) is not None:
                    found.append(name)
            except TimeoutError:
                found.append(name)
        return found

    def find_in(self, payload: Any) -> list[str]:
        """The kinds of sensitive data anywhere in a request (or its messages): see :func:`request_text`."""
        return self.find(request_text(payload))


def locality_mask(localities: Sequence[str | None], wanted: str) -> np.ndarray:
    """Per model: whether it carries the ``wanted`` locality tag."""
    return np.array([loc == wanted for loc in localities], dtype=bool)


class LocalityPolicy:
    """The models' locality tags and the detector's route, as the service applies them.

    ``tags``: model name -> locality tag (None: untagged); ``route_to``: the locality for requests
    with sensitive data (None: the detector is off)."""

    def __init__(self, tags: Mapping[str, str | None], route_to: str | None = None,
                 detector: SensitiveDataDetector | None = None) -> None:
        self.tags = dict(tags)
        self.route_to = route_to
        self.detector = detector if route_to is not None else None

    def restrict(self, payload: Any, asked: str | None) -> tuple[str | None, list[str]]:
        """The request's locality and what the detector found in ``payload`` (the request, or its
        messages). With personal data in it, the locality is ``route_to``; a request that asked for
        another locality is refused (:class:`LocalityError`, 422) rather than sent where the
        operator's rule for personal data does not allow. Without, it is the one asked for (or none)."""
        if self.detector is None:
            return asked, []
        found = self.detector.find_in(payload)
        if not found:
            return asked, []
        if asked is not None and asked != self.route_to:
            raise LocalityError(f"locality: this request asks for locality {asked!r}, but it holds personal data "
                                f"({', '.join(found)}), which this router sends only to models with locality "
                                f"{self.route_to!r}; ask for {self.route_to!r} or remove the data",
                                code="locality_conflict")
        return self.route_to, found

    def mask(self, models: Sequence[str], locality: str) -> np.ndarray:
        """Per model (in ``models`` order): tagged ``locality``. Raises :class:`LocalityError` (422)
        when no model is."""
        mask = locality_mask([self.tags.get(m) for m in models], locality)
        if not mask.any():
            configured = sorted({t for t in self.tags.values() if t})
            raise LocalityError(f"locality: no model has locality {locality!r}, so this request cannot be served "
                                f"without its data leaving that locality (configured localities: "
                                f"{', '.join(configured) or 'none'})")
        return mask

    def allows(self, model: str, locality: str) -> None:
        """Raises :class:`LocalityError` when a request restricted to ``locality`` names a model outside it."""
        if self.tags.get(model) != locality:
            raise LocalityError(f"model: {model!r} has locality {self.tags.get(model)!r}, and this request may "
                                f"only reach models with locality {locality!r}")

    @staticmethod
    def unavailable(locality: str | None, cause: Exception) -> LocalityError:
        return LocalityError(f"no model with locality {locality!r} may serve this request now: {cause}", 503)

    def within(self, locality: str, models: Iterable[str | None]) -> bool:
        """Whether every named model (e.g. a judge and its alternates) has this locality."""
        return all(self.tags.get(m) == locality for m in models if m)
