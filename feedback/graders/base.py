"""The grader interface: :class:`GradeRequest` in, :class:`GradeResult` out, :class:`GraderError` on failure.

A grader scores one answer with a quality in [0, 1]. Two kinds of "bad" are kept apart:

* the *answer* is wrong, malformed, too slow, hostile ... -> a normal :class:`GradeResult`, usually quality 0,
  with a reason;
* the *grader* could not do its job (missing or malformed reference, a sandbox that failed to start, a
  remote judge that is down) -> :class:`GraderError`. The caller logs and counts it; it is never a quality 0,
  because that would punish the model for the grader's fault.

Bad grader *configuration* (the plain-dict specs given to :func:`feedback.graders.make_grader`) raises
:class:`GraderSpecError`, a ``ValueError`` whose message starts with the offending field.

Sync graders implement :meth:`Grader.grade`; :meth:`Grader.agrade` runs it in a worker thread, so a service can
``await grader.agrade(req)`` for every grader. Graders whose work is I/O (an LLM judge) subclass
:class:`AsyncGrader` and implement ``agrade`` natively instead.
"""

from __future__ import annotations

import asyncio
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from feedback.signals import GRADER_PREFIX, MAX_SOURCE_LEN, FeedbackSignal, from_grader

__all__ = [
    "MAX_NAME_LEN", "MAX_REASON_LEN", "AsyncGrader", "GradeRequest", "GradeResult", "Grader", "GraderError",
    "GraderSpecError",
]

MAX_REASON_LEN: Final = 200
MAX_NAME_LEN: Final = MAX_SOURCE_LEN - len(GRADER_PREFIX)
_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


class GraderError(RuntimeError):
    """The grader itself failed (bad reference, sandbox failure ...): not a verdict on the answer.

    ``str(err)`` is ``"grader <name>: <reason>"``; the reason names the offending field where there is one,
    e.g. ``"reference.tests: is required"``. A paid grader sets ``cost_usd`` to what the failed attempt cost
    (``0.0``: nothing was spent; ``None``: unknown, so a budget keeps the whole reservation).
    """

    def __init__(self, grader: str, reason: str, *, cost_usd: float | None = None) -> None:
        super().__init__(f"grader {grader}: {reason}")
        self.grader = grader
        self.reason = reason
        self.cost_usd = cost_usd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_grader_error, (type(self), self.grader, self.reason, self.cost_usd))


def _grader_error(cls: type[GraderError], grader: str, reason: str, cost_usd: float | None) -> GraderError:
    return cls(grader, reason, cost_usd=cost_usd)


class GraderSpecError(ValueError):
    """A bad grader spec; ``str(err)`` is ``"<field>: <reason>"``, e.g. ``"graders[0].pattern: is required"``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.reason))


def short(text: str, limit: int = MAX_REASON_LEN) -> str:
    """``text`` on one line, whitespace collapsed, cut to ``limit`` characters (with ``...``)."""
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True, slots=True, kw_only=True)
class GradeRequest:
    """One answer to grade.

    ``reference`` carries what the grader compares against, e.g. ``{"answer": "B"}``, ``{"pattern": "..."}``,
    ``{"tests": ["assert f(1) == 2"]}`` or ``{"schema": {...}}``; ``messages`` are the chat messages that
    produced the answer (OpenAI shape); ``category`` and ``model`` are informational.
    """

    answer: str
    reference: Mapping[str, Any] | None = None
    messages: Sequence[Mapping[str, Any]] = ()
    category: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.answer, str):
            raise TypeError(f"answer: expected a str, got {type(self.answer).__name__}")
        if self.reference is not None and not isinstance(self.reference, Mapping):
            raise TypeError(f"reference: expected a mapping or None, got {type(self.reference).__name__}")


@dataclass(frozen=True, slots=True)
class GradeResult:
    """A grader's verdict: ``quality`` in [0, 1] and a one-line ``reason`` (at most 200 characters, cut to fit).

    ``details`` holds machine-readable extras (e.g. ``{"passed": 2, "total": 3}``).
    """

    grader: str
    quality: float
    reason: str
    details: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        q = self.quality
        if isinstance(q, bool) or not isinstance(q, int | float) or not math.isfinite(q) or not 0.0 <= q <= 1.0:
            raise ValueError(f"quality: {q!r} is not a number in [0, 1]")
        object.__setattr__(self, "quality", float(q) + 0.0)
        object.__setattr__(self, "reason", short(str(self.reason)))

    @property
    def passed(self) -> bool:
        """``True`` when the quality is 1 (every check passed)."""
        return self.quality >= 1.0

    def to_signal(self, *, weight: float = 1.0) -> FeedbackSignal:
        """The result as feedback: source ``"grader:<name>"``, kind ``grader_score``."""
        signal = from_grader(self.grader, score=self.quality, max=1.0)
        return signal if weight == 1.0 else FeedbackSignal(signal.quality, signal.source, signal.kind, weight)


class Grader(ABC):
    """Base class of all graders. ``name`` becomes the feedback source ``"grader:<name>"``."""

    #: the registry type name (``"exact_match"`` ...); also the default ``name``
    type_name: str = "grader"

    def __init__(self, name: str | None = None) -> None:
        name = self.type_name if name is None else name
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LEN:
            raise GraderSpecError("name", f"must be a non-empty string of at most {MAX_NAME_LEN} characters")
        self.name = name

    @abstractmethod
    def grade(self, request: GradeRequest) -> GradeResult:
        """Grade one answer; raises :class:`GraderError` if the grader (not the answer) fails."""

    async def agrade(self, request: GradeRequest) -> GradeResult:
        """Async form of :meth:`grade`; by default runs :meth:`grade` in a worker thread."""
        return await asyncio.to_thread(self.grade, request)

    def result(self, quality: float, reason: str, **details: Any) -> GradeResult:
        return GradeResult(self.name, quality, reason, MappingProxyType(details) if details else _EMPTY)

    def error(self, reason: str) -> GraderError:
        return GraderError(self.name, reason)

    def reference(self, request: GradeRequest, key: str) -> Any:
        """``request.reference[key]``, or a :class:`GraderError` naming ``reference.<key>`` when it is absent."""
        ref = request.reference
        if ref is None or key not in ref or ref[key] is None:
            raise self.error(f"reference.{key}: is required")
        return ref[key]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class AsyncGrader(Grader):
    """Extension point for graders whose work is I/O (e.g. an LLM judge calling the router's upstreams).

    Implement :meth:`agrade`; :meth:`grade` runs it with ``asyncio.run`` when called outside an event loop.
    """

    @abstractmethod
    async def agrade(self, request: GradeRequest) -> GradeResult:
        """Grade one answer without blocking the event loop."""

    def grade(self, request: GradeRequest) -> GradeResult:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agrade(request))
        raise RuntimeError(f"{self!r}: inside an event loop, use 'await grader.agrade(request)'")
