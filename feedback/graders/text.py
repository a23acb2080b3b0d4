"""Text graders: ``exact_match``, ``multiple_choice`` and ``regex``. Pure CPU, no I/O."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Final

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

__all__ = ["ExactMatchGrader", "MultipleChoiceGrader", "RegexGrader", "extract_choice", "normalize_text"]

# a number, optionally with thousands separators ("1,000,000") and a decimal part; not part of a longer token
_NUMBER: Final = re.compile(r"(?<![\w.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w,]|\.\d)")
# punctuation, except a decimal point between two digits ("3.14") and a minus sign ("-5" is not "5")
_PUNCT: Final = re.compile(r"(?!(?<=\d)\.(?=\d))(?!(?<!\w)-(?=\d))[^\w\s]|_")


def _canonical_number(match: re.Match[str]) -> str:
    try:
        value = Decimal(match.group().replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid numbers
        return match.group()
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def normalize_text(text: str, *, case: bool = True, whitespace: bool = True, punctuation: bool = True,
                   numbers: bool = True) -> str:
    """Canonical form of ``text``: each flag enables one rule.

    ``numbers``: "1,000" -> "1000", "2.50" -> "2.5", "007" -> "7"; ``punctuation``: drop it (keeping decimal
    points and minus signs); ``case``: casefold; ``whitespace``: strip and collapse runs to one space.
    """
    if numbers:
        text = _NUMBER.sub(_canonical_number, text)
    if punctuation:
        text = _PUNCT.sub("", text)
    if case:
        text = text.casefold()
    if whitespace:
        text = " ".join(text.split())
    return text


def _references(grader: Grader, request: GradeRequest) -> list[str]:
    value = grader.reference(request, "answer")
    values = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise grader.error(f"reference.answer: expected a string, a number or a list of them, got {v!r:.40}")
        out.append(str(v))
    if not out:
        raise grader.error("reference.answer: is an empty list")
    return out


class ExactMatchGrader(Grader):
    """1 if the answer equals ``reference["answer"]`` (or any item of a list of accepted answers), else 0.

    Spec: ``{"type": "exact_match", "normalize": false}``; ``normalize: true`` turns on the four rules of
    :func:`normalize_text`, and ``case``/``whitespace``/``punctuation``/``numbers`` switch each one on or off
    individually. Without normalisation only surrounding whitespace is ignored.
    """

    type_name = "exact_match"

    def __init__(self, name: str | None = None, *, normalize: bool = False, case: bool | None = None,
                 whitespace: bool | None = None, punctuation: bool | None = None, numbers: bool | None = None) -> None:
        super().__init__(name)
        self.rules = {k: normalize if v is None else v for k, v in
                      (("case", case), ("whitespace", whitespace), ("punctuation", punctuation), ("numbers", numbers))}

    @classmethod
    def from_spec(cls, r: SpecReader, name: str | None) -> ExactMatchGrader:
        return cls(name, normalize=r.flag("normalize", False), case=r.flag("case", None),
                   whitespace=r.flag("whitespace", None), punctuation=r.flag("punctuation", None),
                   numbers=r.flag("numbers", None))

    def _norm(self, text: str) -> str:
        return normalize_text(text.strip(), **self.rules)

    def grade(self, request: GradeRequest) -> GradeResult:
        refs = _references(self, request)
        got = self._norm(request.answer)
        if any(got == self._norm(ref) for ref in refs):
            return self.result(1.0, "exact match")
        return self.result(0.0, f"expected {refs[0]!r}, got {short(request.answer, 60)!r}")


_LETTERS: Final = "ABCDEFGHIJ"


def _choice_patterns(letters: str) -> list[re.Pattern[str]]:
    opt = f"[{re.escape(letters)}]"
    end = r"(?![A-Za-z0-9])"
    return [
        re.compile(rf"\\boxed\{{\s*(?:\\text\{{)?\s*\(?({opt})\)?\s*\}}?\s*\}}"),  # \boxed{B}
        # "answer is B", "Answer: (B)", "final answer: option B", "correct answer would be B"
        re.compile(rf"(?i:answer)\s*(?:(?i:is|would\s+be|should\s+be)\s*)?[:=]?\s*"
                   rf"(?:(?i:option|choice)\s+)?[(\[]?({opt})[)\]]?{end}"),
        # "option B is correct", "I choose (B)", "choice: B"
        re.compile(rf"(?i:option|choice|choose|select|pick)\s*[:=]?\s*[(\[]?({opt})[)\]]?{end}"),
    ]


def extract_choice(answer: str, letters: str = _LETTERS) -> str | None:
    """The option letter an answer chose, or ``None``.

    Accepts a bare letter ("B", "(B)", "B.", "**B**"), an explicit statement ("Answer: B", "The answer is (B).",
    ``\\boxed{B}``; the last one wins) or an answer that starts with an option ("B) Paris ..."). Letters must be
    upper case except in a bare one-letter answer, so the article "a" is never read as option A.
    """
    text = re.sub(r"[*`$]", "", answer).strip()
    bare = re.fullmatch(rf"[(\[]?\s*([{letters}{letters.lower()}])\s*[)\]]?\s*[.:]?", text)
    if bare:
        return bare.group(1).upper()
    for pattern in _choice_patterns(letters):
        found = pattern.findall(text)
        if found:
            return str(found[-1])
    lead = re.match(rf"[(\[]?([{letters}])[)\].:](?:\s|$)", text)
    return lead.group(1) if lead else None


class MultipleChoiceGrader(Grader):
    """1 if the option letter chosen in the answer equals ``reference["answer"]`` (e.g. ``"B"``), else 0.

    Spec: ``{"type": "multiple_choice", "letters": "ABCD"}`` (default A-J). No letter found scores 0.
    """

    type_name = "multiple_choice"

    def __init__(self, name: str | None = None, *, letters: str = _LETTERS) -> None:
        super().__init__(name)
        if not re.fullmatch(r"[A-Z]+", letters) or len(set(letters)) != len(letters):
            raise GraderSpecError("letters", f"expected distinct upper-case letters, got {letters!r:.40}")
        self.letters = letters

    @classmethod
    def from_spec(cls, r: SpecReader, name: str | None) -> MultipleChoiceGrader:
        letters = r.text("letters", _LETTERS)
        try:
            return cls(name, letters=letters)
        except GraderSpecError as exc:
            raise r.fail("letters", exc.reason) from None

    def grade(self, request: GradeRequest) -> GradeResult:
        ref = self.reference(request, "answer")
        found = re.fullmatch(r"[(\[]?\s*([A-Z])\s*[)\]]?\.?", ref.strip().upper()) if isinstance(ref, str) else None
        expected = found.group(1) if found else None
        if expected is None or expected not in self.letters:
            raise self.error(f"reference.answer: {ref!r:.40} is not one of the option letters {self.letters}")
        chosen = extract_choice(request.answer, self.letters)
        if chosen is None:
            return self.result(0.0, "no option letter found in the answer")
        if chosen == expected:
            return self.result(1.0, f"chose {chosen}", chosen=chosen)
        return self.result(0.0, f"chose {chosen}, expected {expected}", chosen=chosen)


class RegexGrader(Grader):
    """1 if the answer matches the pattern, else 0.

    Spec: ``{"type": "regex", "pattern": "^\\\\d+$", "mode": "search", "ignore_case": false,
    "multiline": false, "dotall": false, "strip": true}``. ``mode`` is ``search`` (anywhere) or ``full`` (the
    whole answer, after stripping surrounding whitespace unless ``strip: false``). The configured pattern wins;
    without one, ``reference["pattern"]`` is used (a bad reference pattern is a :class:`GraderError`). Patterns
    are matched with a time bound (see :mod:`feedback.graders._spec`): one that backtracks catastrophically on
    the answer is a :class:`GraderError` saying it timed out, not a quality 0.
    """

    type_name = "regex"

    def __init__(self, name: str | None = None, *, pattern: str | re.Pattern[str] | regex.Pattern[str] | None = None,
                 mode: str = "search", flags: int = 0, strip: bool = True) -> None:
        super().__init__(name)
        if mode not in ("search", "full"):
            raise GraderSpecError("mode", f"{mode!r} is not one of search, full")
        self.mode, self.flags, self.strip = mode, flags, strip
        if isinstance(pattern, re.Pattern):  # recompiled for the bounded matcher
            pattern, flags = pattern.pattern, pattern.flags
        try:
            self.pattern = compile_pattern(pattern, flags) if isinstance(pattern, str) else pattern
        except PatternError as exc:
            raise GraderSpecError("pattern", f"not a valid regular expression ({exc.detail})") from None

    @classmethod
    def from_spec(cls, r: SpecReader, name: str | None) -> RegexGrader:
        flags = 0
        for key, flag in (("ignore_case", regex.IGNORECASE), ("multiline", regex.MULTILINE), ("dotall", regex.DOTALL)):
            if r.flag(key, False):
                flags |= flag
        return cls(name, pattern=r.regex("pattern", flags), mode=r.text("mode", "search", choices=("search", "full")),
                   flags=flags, strip=r.flag("strip", True))

    def _pattern(self, request: GradeRequest) -> regex.Pattern[str]:
        if self.pattern is not None:
            return self.pattern
        source = self.reference(request, "pattern")
        if not isinstance(source, str):
            raise self.error(f"reference.pattern: expected a string, got {type(source).__name__}")
        try:
            return compile_pattern(source, self.flags)
        except PatternError as exc:
            raise self.error(f"reference.pattern: not a valid regular expression ({exc.detail})") from None

    def grade(self, request: GradeRequest) -> GradeResult:
        pattern = self._pattern(request)
        text = request.answer.strip() if self.strip else request.answer
        try:
            with pattern_budget():
                match = bounded_match(pattern, text, full=self.mode == "full")
        except PatternTimeout as exc:
            raise self.error(str(exc)) from None
        shown = short(pattern.pattern, 80)
        if match:
            return self.result(1.0, f"matches /{shown}/")
        return self.result(0.0, f"does not {'fully ' if self.mode == 'full' else ''}match /{shown}/")
