"""Category inference: which task family a request belongs to.

The caller's category wins when given. Otherwise a :class:`CategoryClassifier`
scores the conversation text against weighted regular-expression rules, one list
per category, and returns the best-scoring category, or the fallback (``general``)
when no category reaches ``min_score``. Rules are plain data, so a config file can
replace or extend them. The defaults follow the routing table of the seed article:
``coding``, ``reasoning``, ``science``, ``computer_use`` and ``general``.

Patterns are matched against the *lower-cased* text: write them in lower case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .features import Message, conversation_text

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
    _compiled: list[tuple[str, list[tuple[re.Pattern[str], float]]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._compiled = []
        for category, rules in self.rules.items():
            compiled = []
            for i, (pattern, weight) in enumerate(rules):
                try:
                    # matched against lower-cased text, so no IGNORECASE (which made it 2x slower)
                    compiled.append((re.compile(pattern, re.M), float(weight)))
                except re.error as e:
                    raise ValueError(f"categories.rules.{category}[{i}]: bad pattern {pattern!r}: {e}") from e
            self._compiled.append((category, compiled))

    @property
    def categories(self) -> tuple[str, ...]:
        names = [c for c, _ in self._compiled]
        return tuple(names + ([self.fallback] if self.fallback not in names else []))

    def scores(self, text: str) -> dict[str, float]:
        text = text[: self.max_chars // 2] + text[-self.max_chars // 2 :] if len(text) > self.max_chars else text
        text = text.lower()
        out = {}
        for category, rules in self._compiled:
            s = 0.0
            for pattern, weight in rules:
                hits = 0
                for _ in pattern.finditer(text):
                    hits += 1
                    if hits >= self.cap:
                        break
                s += weight * hits
            out[category] = s
        return out

    def classify_text(self, text: str) -> str:
        scores = self.scores(text)
        best = max(scores, key=scores.__getitem__, default=self.fallback)
        return best if scores.get(best, 0.0) >= self.min_score else self.fallback

    def classify(self, messages: Sequence[Message]) -> str:
        """The category of a conversation (user and system text)."""
        return self.classify_text(conversation_text(messages))
