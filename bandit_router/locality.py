"""Data locality: which models a request's data may reach.

Models carry a locality tag in the config (``local``, or a region such as ``eu``; untagged models
have none). A request is *restricted* to a locality when it says so (``router.locality`` or the
``X-Router-Locality`` header), or when the :class:`SensitiveDataDetector` finds personal data in it
and the config routes such requests somewhere (``locality.sensitive.route_to``). A restricted
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

__all__ = ["BUILTIN_DETECTORS", "LocalityError", "SensitiveDataDetector", "locality_mask", "message_text"]


class LocalityError(Exception):
    """A restricted request has no model of its locality (``status``: 422 none configured, 503 none
    eligible now)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


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


def _phone(match: str) -> bool:
    return 8 <= len(re.sub(r"\D", "", match)) <= 15  # E.164 allows up to 15 digits


# name -> (pattern, check of the matched text or None). Built-in patterns are ours (no catastrophic
# backtracking); operators' patterns run with a time budget.
BUILTIN_DETECTORS: dict[str, tuple[re.Pattern[str], Any]] = {
    "email": (re.compile(r"\b[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b"),
              None),
    # +44 20 7946 0958, (555) 123-4567, 555-123-4567, +1.555.123.4567: a separator-structured number
    "phone": (re.compile(r"(?<![\w+.\-])(?<!\d[ .])(?:\+\d{1,3}[ .\-]?)?"
                         r"(?:\(\d{2,4}\)[ .\-]?|\d{2,4}[ .\-])\d{3,4}[ .\-]\d{4}(?![\w\-]|[ .]\d)"), _phone),
    # 13-19 digits, optionally in groups separated by spaces or dashes, passing the Luhn check
    "card": (re.compile(r"(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-])"), _card),
    # US SSN (not 000/666/9xx area, 00 group, 0000 serial) and UK National Insurance numbers
    "national_id": (re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"
                               r"|\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"), None),
}


def message_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of a chat request's messages (string contents and text parts), newline-joined."""
    parts: list[str] = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p["text"] for p in c if isinstance(p, Mapping) and isinstance(p.get("text"), str))
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

    def find_in(self, messages: Sequence[Mapping[str, Any]]) -> list[str]:
        return self.find(message_text(messages))


def locality_mask(localities: Sequence[str | None], wanted: str) -> np.ndarray:
    """Per model: whether it carries the ``wanted`` locality tag."""
    return np.array([loc == wanted for loc in localities], dtype=bool)
