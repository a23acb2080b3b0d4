"""Typed, strict reading of a plain-dict grader spec; every error names its field (``GraderSpecError``).

Also the graders' bounded pattern matching. Patterns come from configs and from clients' references (the
``regex`` grader's ``reference.pattern``, a JSON Schema's ``pattern``/``patternProperties``), and the text they
run on is a model's answer: with Python's ``re`` a pattern such as ``^(a|a)*$`` backtracks for hours while
holding the GIL, freezing the server. So every such pattern is compiled with the ``regex`` package (the syntax
of ``re``) and matched with its ``timeout`` and ``concurrent`` (GIL released) options, within a wall-clock
budget shared by all matches of one grade (:func:`pattern_budget`, :data:`PATTERN_SECONDS`). Running over it
raises :class:`PatternTimeout`, which graders turn into a :class:`GraderError`: a failure of the grader's
pattern, never a quality 0 for the answer.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

import regex

from feedback.graders.base import GraderSpecError, short

__all__ = ["PATTERN_SECONDS", "PatternError", "PatternTimeout", "SpecReader", "bounded_match", "compile_pattern",
           "pattern_budget"]

#: wall-clock seconds of pattern matching allowed per grade, all patterns together
PATTERN_SECONDS: Final = 0.25
_ABSENT: Any = object()
_deadline: ContextVar[float | None] = ContextVar("feedback_pattern_deadline", default=None)


class PatternError(ValueError):
    """A pattern that does not compile; ``str(err)`` names it, ``detail`` is the compiler's complaint."""

    def __init__(self, pattern: str, detail: str) -> None:
        super().__init__(f"pattern /{short(pattern, 60)}/ is not a valid regular expression ({detail})")
        self.detail = detail


class PatternTimeout(RuntimeError):
    """A pattern ran past its time budget (catastrophic backtracking); ``str(err)`` names it."""

    def __init__(self, pattern: str, seconds: float) -> None:
        super().__init__(f"pattern /{short(pattern, 60)}/ timed out (over {seconds:g} s of matching: "
                         "catastrophic backtracking?)")
        self.pattern = pattern


@functools.lru_cache(maxsize=512)
def compile_pattern(source: str, flags: int = 0) -> regex.Pattern[str]:
    """``source`` compiled by the ``regex`` package (``re`` flags work: same values); raises :class:`PatternError`."""
    try:
        return regex.compile(source, flags)
    except (regex.error, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise PatternError(str(source), str(exc)) from None


@contextmanager
def pattern_budget(seconds: float = PATTERN_SECONDS) -> Iterator[None]:
    """Every :func:`bounded_match` inside shares ``seconds`` of wall-clock time (per thread / task)."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def bounded_match(pattern: regex.Pattern[str], text: str, *, full: bool = False) -> regex.Match[str] | None:
    """``pattern.search(text)`` (``fullmatch`` when ``full``) within the current :func:`pattern_budget` (else
    :data:`PATTERN_SECONDS` for this match alone), with the GIL released; :class:`PatternTimeout` past it."""
    deadline = _deadline.get()
    remaining = PATTERN_SECONDS if deadline is None else deadline - time.monotonic()
    if remaining <= 0:
        raise PatternTimeout(pattern.pattern, PATTERN_SECONDS)
    method = pattern.fullmatch if full else pattern.search
    try:
        return method(text, timeout=remaining, concurrent=True)
    except TimeoutError:
        raise PatternTimeout(pattern.pattern, PATTERN_SECONDS) from None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class SpecReader:
    """Reads keys of one spec; :meth:`done` rejects any key that no reader asked for (typos fail loudly)."""

    def __init__(self, spec: Mapping[str, Any], where: str = "") -> None:
        self.spec = spec
        self.where = where
        self.used: set[str] = {"type"}

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, reason: str) -> GraderSpecError:
        return GraderSpecError(self.field(key), reason)

    def _get(self, key: str) -> Any:
        self.used.add(key)
        value = self.spec.get(key, _ABSENT)
        return _ABSENT if value is None else value  # YAML "key:" with no value means "default"

    def has(self, key: str) -> bool:
        return self.spec.get(key) is not None

    def text(self, key: str, default: Any = _ABSENT, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key)
        if value is _ABSENT:
            if default is _ABSENT:
                raise self.fail(key, "is required")
            return default
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def flag(self, key: str, default: bool | None) -> Any:
        value = self._get(key)
        if value is _ABSENT:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_kind(value)}")
        return value

    def number(self, key: str, default: float | None, *, minimum: float = 0.0, integer: bool = False,
               exclusive: bool = False) -> Any:
        value = self._get(key)
        if value is _ABSENT:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"expected a number, got {_kind(value)}")
        if integer and not float(value).is_integer():
            raise self.fail(key, f"expected a whole number, got {value}")
        if value < minimum or (exclusive and value == minimum):
            raise self.fail(key, f"{value} must be {'>' if exclusive else '>='} {minimum:g}")
        return int(value) if integer else float(value)

    def str_list(self, key: str, *, allow_single: bool = True) -> list[str]:
        value = self._get(key)
        if value is _ABSENT:
            return []
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise self.fail(key, f"expected a list of strings, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise GraderSpecError(f"{self.field(key)}[{i}]", f"expected a non-empty string, got {_kind(item)}")
        return list(value)

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self._get(key)
        if value is _ABSENT:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {_kind(value)}")
        return value

    def regex(self, key: str, flags: int = 0, *, required: bool = False) -> regex.Pattern[str] | None:
        """The pattern at ``key``, compiled for :func:`bounded_match`."""
        source = self.text(key, _ABSENT if required else None)
        if source is None:
            return None
        try:
            return compile_pattern(source, flags)
        except PatternError as exc:
            raise self.fail(key, f"not a valid regular expression ({exc.detail})") from None

    def done(self) -> None:
        for key in self.spec:
            if key not in self.used:
                shown = key if isinstance(key, str) else repr(key)
                raise GraderSpecError(self.field(str(shown)), f"unknown key (allowed: {', '.join(sorted(self.used))})")
