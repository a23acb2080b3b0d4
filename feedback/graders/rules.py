"""``format`` (alias ``length``): simple format rules; quality = share of rules passed. Pure CPU, no I/O.

``ends_with_line`` is matched with a time bound (see :mod:`feedback.graders._spec`): a pattern that
backtracks catastrophically on the answer is a :class:`GraderError` saying it timed out, not a low score.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import regex

from feedback.graders._spec import (
    PatternError,
    PatternTimeout,
    SpecReader,
    bounded_match,
    compile_pattern,
    pattern_budget,
)
from feedback.graders.base import Grader, GradeRequest, GradeResult, GraderSpecError, short

__all__ = ["FormatGrader", "Rule"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One named check on the answer text."""

    label: str
    check: Callable[[str], bool]


def _contains(needle: str, fold: Callable[[str], str], wanted: bool) -> Callable[[str], bool]:
    return lambda answer: (needle in fold(answer)) == wanted


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class FormatGrader(Grader):
    """Format rules; quality = rules passed / rules configured.

    Spec (every key optional, at least one rule)::

        {"type": "format",            # or "length"
         "min_chars": 10, "max_chars": 2000, "min_words": 3, "max_words": 300,
         "contains": ["Sources:"],    # each substring is one rule
         "not_contains": ["As an AI"],
         "case_sensitive": true,      # for contains / not_contains
         "ends_with_line": "Answer: \\\\d+"}   # the last non-empty line, stripped, must fully match

    Characters are counted on the stripped answer; words are whitespace-separated tokens.
    """

    type_name = "format"

    def __init__(self, name: str | None = None, *, min_chars: int | None = None, max_chars: int | None = None,
                 min_words: int | None = None, max_words: int | None = None, contains: Sequence[str] = (),
                 not_contains: Sequence[str] = (), case_sensitive: bool = True,
                 ends_with_line: str | re.Pattern[str] | regex.Pattern[str] | None = None) -> None:
        super().__init__(name)
        for low, high, what in ((min_chars, max_chars, "chars"), (min_words, max_words, "words")):
            if low is not None and high is not None and low > high:
                raise GraderSpecError(f"min_{what}", f"{low} is greater than max_{what} ({high})")
        fold: Callable[[str], str] = (lambda s: s) if case_sensitive else str.casefold
        rules: list[Rule] = []

        def add(label: str, check: Callable[[str], bool]) -> None:
            rules.append(Rule(label, check))

        if min_chars is not None:
            add(f"at least {min_chars} characters", lambda a, n=min_chars: len(a.strip()) >= n)
        if max_chars is not None:
            add(f"at most {max_chars} characters", lambda a, n=max_chars: len(a.strip()) <= n)
        if min_words is not None:
            add(f"at least {min_words} words", lambda a, n=min_words: len(a.split()) >= n)
        if max_words is not None:
            add(f"at most {max_words} words", lambda a, n=max_words: len(a.split()) <= n)
        for sub in contains:
            add(f"contains {sub!r}", _contains(fold(sub), fold, True))
        for sub in not_contains:
            add(f"does not contain {sub!r}", _contains(fold(sub), fold, False))
        if ends_with_line is not None:
            source = ends_with_line if isinstance(ends_with_line, str) else ends_with_line.pattern
            flags = 0 if isinstance(ends_with_line, str) else int(ends_with_line.flags)
            try:
                pattern = compile_pattern(source, flags)
            except PatternError as exc:
                raise GraderSpecError("ends_with_line", f"not a valid regular expression ({exc.detail})") from None
            add(f"last line matches /{pattern.pattern}/",
                lambda a, p=pattern: bounded_match(p, _last_line(a), full=True) is not None)
        if not rules:
            raise GraderSpecError("rules", "no rule configured (give min_chars, max_chars, min_words, max_words, "
                                           "contains, not_contains or ends_with_line)")
        self.rules: tuple[Rule, ...] = tuple(rules)

    @classmethod
    def from_spec(cls, r: SpecReader, name: str | None) -> FormatGrader:
        n = {key: r.number(key, None, integer=True) for key in ("min_chars", "max_chars", "min_words", "max_words")}
        contains, not_contains = r.str_list("contains"), r.str_list("not_contains")
        case_sensitive, ends_with_line = r.flag("case_sensitive", True), r.regex("ends_with_line")
        try:
            return cls(name, min_chars=n["min_chars"], max_chars=n["max_chars"], min_words=n["min_words"],
                       max_words=n["max_words"], contains=contains, not_contains=not_contains,
                       case_sensitive=case_sensitive, ends_with_line=ends_with_line)
        except GraderSpecError as exc:
            raise r.fail(exc.field, exc.reason) from None

    def grade(self, request: GradeRequest) -> GradeResult:
        try:
            with pattern_budget():
                failed = [rule.label for rule in self.rules if not rule.check(request.answer)]
        except PatternTimeout as exc:
            raise self.error(str(exc)) from None
        total = len(self.rules)
        passed = total - len(failed)
        if not failed:
            return self.result(1.0, f"all {total} format rules passed", passed=passed, total=total)
        reason = f"{passed}/{total} format rules passed; failed: " + "; ".join(failed)
        return self.result(passed / total, short(reason), passed=passed, total=total, failed=failed)
