r"""Category inference: which task family a request belongs to.

The caller's category wins when given. Otherwise a :class:`CategoryClassifier`
scores the conversation text against weighted regular-expression rules, one list
per category, and returns the best-scoring category, or the fallback (``general``)
when no category reaches ``min_score``. Rules are plain data, so a config file can
replace or extend them. The defaults follow the routing table of the seed article:
``coding``, ``reasoning``, ``science``, ``computer_use`` and ``general``.

Patterns are matched against the *lower-cased* text: write them in lower case. They are Python
regular expressions, matched with RE2 (google-re2) wherever RE2 accepts them: one RE2 set finds which
rules match at all, in one linear pass, and only those are counted (by Python's ``re`` in a short
text, where it is quicker to start, by RE2 in a long one). That keeps inference at a few
microseconds for a short prompt and well under a millisecond for the longest window, where Python's
backtracking engine took about 0.24 µs a character for the default rules (1.9 ms for 8,000 characters;
``benchmarks/classify_speed.py``). Rules RE2 does not accept (lookarounds, backreferences, possessive
repeats), and rules it could count otherwise (see ``_re2``: inline flags, empty matches, big bounded
repeats, rules that are not ASCII), are run by Python's ``re``. ``\b``, ``\w``, ``\d`` and ``\s`` are
ASCII classes in both engines, except in a rule that is not ASCII itself or says ``(?u)``. Both count
the same matches on the 26,700 prompts and answers of the RouterBench subset (the benchmark checks).
"""

from __future__ import annotations

import re
import re._parser as _parser  # the minimum width of a pattern (can it match the empty string?)
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import re2

from .features import Message, conversation_text

_FLAGS = re.M | re.ASCII  # what RE2 does: ^ and $ at line ends, ASCII \b \w \d \s
_SHORT = 1000  # characters: up to here a matching rule's hits are counted by re, beyond by RE2
_POSIX_CLASS = re.compile(r"\[:\^?[a-z]+:\]")  # [:alpha:] (also seen inside a longer set)
_INLINE_FLAGS = re.compile(r"\(\?[aiLmsux-]")  # (?i) (?-m:...) (?s) ...
_REPEAT_BOUND = re.compile(r"\{(?:\d*,)?(\d+)\}")  # {n} {n,m} {,m}: the upper bound
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a pattern RE2 refuses falls back to re; no log line for it


class _Pattern(Protocol):
    def finditer(self, text: str) -> Iterator[Any]: ...


def _flags(pattern: str) -> int:
    """ASCII classes, as RE2's, unless the rule itself is not ASCII (``\\bпривет\\b`` needs Unicode
    ``\\b``) or asks for Unicode (``(?u)``): such a rule keeps Python's Unicode classes."""
    return re.M if not pattern.isascii() or "(?u" in pattern else _FLAGS


def _re2(pattern: str, slow: re.Pattern[str]) -> _Pattern | None:
    """The pattern compiled by RE2, or None where RE2 refuses it or could count otherwise than
    Python's ``re``: a rule that is not ASCII or asks for Unicode; inline flags (``(?i)`` folds ſ into
    s in RE2, ``(?-m:a$)`` differs before a final newline); ``{,n}`` (a repeat in Python, text in
    RE2) and ``[[:alpha:]]`` (characters in Python, a POSIX class in RE2); a rule that can match
    the empty string (the engines step past empty matches differently); a bounded repeat over 30
    (``[^\\n]{0,300}`` makes RE2's DFA thrash: 50 ms a long text against re's 0.4)."""
    if (slow.flags & re.ASCII == 0 or _INLINE_FLAGS.search(pattern) or "{," in pattern
            or _POSIX_CLASS.search(pattern) or any(int(m) > 30 for m in _REPEAT_BOUND.findall(pattern))):
        return None
    try:
        if _parser.parse(pattern, _FLAGS).getwidth()[0] == 0:
            return None
    except Exception:  # noqa: BLE001 (a private parser: anything unexpected keeps the rule on re)
        return None
    try:
        return re2.compile("(?m)" + pattern, options=_RE2_OPTIONS)
    except re2.error:
        return None


def _count(matches: Iterator[Any], cap: int) -> int:
    """Matches, up to ``cap``. (No rule that can match the empty string reaches RE2, so the two
    engines' different steps past an empty match never show here.)"""
    hits = 0
    for _ in matches:
        hits += 1
        if hits >= cap:
            break
    return hits


DEFAULT_CATEGORIES: tuple[str, ...] = ("coding", "reasoning", "science", "computer_use", "general")

# (pattern, weight); every match counts, capped at `cap` matches per pattern.
DEFAULT_RULES: dict[str, list[tuple[str, float]]] = {
    "coding": [
        (r"\bwrite an? (?:python |javascript |java |rust |go |c\+\+ |sql )?(?:function|program|script|"
         r"class|method|query)\b", 3.0),
        (r"```|\bdef \w+\(|\bclass \w+[:(]|\bimport \w+|\bconsole\.log|#include|\bfn \w+\(", 2.0),
        (r"\b(?:python|javascript|typescript|rust|golang|java|c\+\+|sql|regex|compile[rs]?|debug|"
         r"refactor|stack ?trace|exception|unit tests?|api|bug)\b", 1.0),
    ],
    "computer_use": [
        (r"\b(?:click|double-click|scroll|screenshot|cursor|mouse|keyboard shortcut|browser|tab|"
         r"desktop|open the (?:app|application|settings)|navigate to|fill (?:in|out) the form|"
         r"log ?in to)\b", 2.0),
    ],
    "reasoning": [
        (r"(?:^|\s)_(?:\s|[.,;:!?])", 3.0),  # fill-in-the-blank (commonsense, Winograd-style)
        (r"\b(?:prove|proof|step by step|logic puzzle|riddle|deduce|infer|which of the two|"
         r"if and only if|how many ways|probability that)\b", 1.5),
        (r"\b(?:solve|equation|integer|theorem|lemma|compute|calculate)\b", 1.0),
    ],
    "science": [
        (r"\b(?:energy|heat|temperature|cells?|plants?|animals?|atoms?|molecules?|force|gravity|"
         r"electric\w*|magnet\w*|minerals?|rocks?|planets?|sun|moon|earth|weather|climate|organisms?|"
         r"species|ecosystems?|chemical|reactions?|light|sound|waves?|photosynthesis|evolution|"
         r"genes?|dna|proteins?|bacteria|virus|physics|chemistry|biology|geology|astronomy|"
         r"experiment|hypothesis|scientists?|mass|density|friction|circuit|fossils?|soil|oxygen|"
         r"carbon|water cycle|erosion|volcano\w*|earthquakes?|orbit)\b", 1.0),
    ],
}


@dataclass
class CategoryClassifier:
    """Weighted-regex category inference.

    >>> CategoryClassifier().classify([{"role": "user", "content": "Write a function that adds"}])
    'coding'
    """

    rules: Mapping[str, Sequence[tuple[str, float]]] = field(default_factory=lambda: DEFAULT_RULES)
    fallback: str = "general"
    min_score: float = 2.0
    cap: int = 5
    max_chars: int = 8000
    # per category: (rule number, re pattern, RE2 pattern or the re one again, weight)
    _compiled: list[tuple[str, list[tuple[int, _Pattern, _Pattern, float]]]] = field(
        init=False, repr=False, compare=False)
    _set: Any = field(init=False, repr=False, compare=False)  # re2.Set over the rules RE2 took
    _in_set: list[int] = field(init=False, repr=False, compare=False)  # set index -> rule number
    _always: frozenset[int] = field(init=False, repr=False, compare=False)  # rules matched by re: always scanned
    _every: frozenset[int] = field(init=False, repr=False, compare=False)  # every rule number
    _by_number: list[tuple[str, _Pattern, _Pattern, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._compiled, self._in_set = [], []
        always = []
        fast = re2.Set.SearchSet(_RE2_OPTIONS)
        n = 0  # the rule's number, over every category
        for category, rules in self.rules.items():
            compiled: list[tuple[int, _Pattern, _Pattern, float]] = []
            for i, (pattern, weight) in enumerate(rules):
                try:
                    # matched against lower-cased text, so no IGNORECASE (which made it 2x slower)
                    slow = re.compile(pattern, _flags(pattern))  # the syntax check, and the fallback
                except (re.error, ValueError) as e:
                    raise ValueError(f"categories.rules.{category}[{i}]: bad pattern {pattern!r}: {e}") from e
                matcher = _re2(pattern, slow)
                if matcher is None:
                    always.append(n)
                else:
                    fast.Add("(?m)" + pattern)
                    self._in_set.append(n)
                compiled.append((n, slow, matcher or slow, float(weight)))
                n += 1
            self._compiled.append((category, compiled))
        if self._in_set:
            fast.Compile()
        self._set = fast if self._in_set else None
        self._always = frozenset(always)
        self._every = frozenset(range(n))
        self._by_number = [(category, slow, fast, weight) for category, compiled in self._compiled
                           for _, slow, fast, weight in compiled]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (and copied) as its settings: the compiled engines are rebuilt (RE2's cannot be pickled)."""
        return (type(self), (self.rules, self.fallback, self.min_score, self.cap, self.max_chars))

    @property
    def categories(self) -> tuple[str, ...]:
        names = [c for c, _ in self._compiled]
        return tuple(names + ([self.fallback] if self.fallback not in names else []))

    def scores(self, text: str) -> dict[str, float]:
        text = text[: self.max_chars // 2] + text[-self.max_chars // 2 :] if len(text) > self.max_chars else text
        text = text.lower()
        # RE2 reads bytes: encoded once here (it would encode a str on every call, and map every
        # match back to characters); surrogatepass, so a lone surrogate cannot raise
        data = b""
        if "\v" in text:  # RE2's \s leaves out the vertical tab, Python's takes it: re alone, every rule
            maybe, short = self._every, True
        else:
            data = text.encode("utf-8", "surrogatepass")
            matched = self._set.Match(data) if self._set is not None else None
            maybe = self._always.union([self._in_set[j] for j in matched]) if matched else self._always
            short = len(text) <= _SHORT
        out = dict.fromkeys([c for c, _ in self._compiled], 0.0)
        for n in sorted(maybe):  # only the rules that can match, in order (so each sum adds up as it did)
            category, slow, fast, weight = self._by_number[n]
            out[category] += weight * _count(slow.finditer(text) if short or fast is slow else fast.finditer(data),
                                             self.cap)
        return out

    def classify_text(self, text: str) -> str:
        scores = self.scores(text)
        best = max(scores, key=scores.__getitem__, default=self.fallback)
        return best if scores.get(best, 0.0) >= self.min_score else self.fallback

    def classify(self, messages: Sequence[Message]) -> str:
        """The category of a conversation (user and system text)."""
        return self.classify_text(conversation_text(messages))
