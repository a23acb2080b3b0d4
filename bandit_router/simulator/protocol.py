"""The grading protocol between a caller and the simulated provider.

A simulated answer carries what an automated grader needs to score it:

* If the **last user message** contains a line ``EXPECTED: <answer>`` (the demo hides the
  expected answer of a task there), a right answer ends with the line ``ANSWER: <answer>``
  and a wrong one with ``ANSWER: <something else>`` (another option letter for a letter,
  another number for a number, the opposite for yes/no and true/false, else ``unknown``).
  The last such line counts when there are several.
* Without an ``EXPECTED`` line, the answer ends with ``ANSWER: correct`` or ``ANSWER: incorrect``.

:func:`grade` scores an answer text against the expected answer (or ``None``): 1.0 when the
last ``ANSWER:`` line matches (case, surrounding spaces and a trailing ``.`` ignored), else 0.0.
An answer cut short by ``max_tokens`` (finish reason ``length``) loses its ``ANSWER`` line and
so grades 0.0, as a truncated answer would with a real grader.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ..features import Message, message_text

EXPECTED_RE = re.compile(r"^[ \t]*EXPECTED:[ \t]*(.*?)[ \t]*$", re.M)
ANSWER_RE = re.compile(r"^[ \t]*ANSWER:[ \t]*(.*?)[ \t]*$", re.M)
CORRECT = "correct"
INCORRECT = "incorrect"
_LETTERS = "ABCDEFGH"
_OPPOSITES = {"yes": "no", "no": "yes", "true": "false", "false": "true"}


def normalize(answer: str) -> str:
    """Case-folded, inner whitespace collapsed, outer spaces and a trailing full stop dropped."""
    return " ".join(answer.split()).rstrip(".").strip().casefold()


def expected_answer(messages: Sequence[Message]) -> str | None:
    """The hidden expected answer: the last ``EXPECTED:`` line of the last user message."""
    for m in reversed(messages):
        if m.get("role") == "user":
            found = EXPECTED_RE.findall(message_text(m))
            return found[-1] if found and found[-1] else None
    return None


def parse_answer(text: str | None) -> str | None:
    """The value of the last ``ANSWER:`` line of an answer text, or ``None``."""
    found = ANSWER_RE.findall(text or "")
    return found[-1] if found else None


def grade(answer_text: str | None, expected: str | None) -> float:
    """1.0 if the answer's ``ANSWER:`` line is right, else 0.0.

    With ``expected=None`` the answer is right when it says ``ANSWER: correct``.

    >>> grade("Thinking...\\nANSWER: B", "b")
    1.0
    >>> grade("Thinking...\\nANSWER: incorrect", None)
    0.0
    """
    got = parse_answer(answer_text)
    if got is None:
        return 0.0
    want = CORRECT if expected is None else expected
    return 1.0 if normalize(got) == normalize(want) else 0.0


def wrong_answer(expected: str | None, rng: random.Random) -> str:
    """A plausible answer that :func:`grade` scores 0.0 against ``expected``."""
    if expected is None:
        return INCORRECT
    key = normalize(expected)
    if len(key) == 1 and key.upper() in _LETTERS:
        pool = [c for c in _LETTERS[: max(4, _LETTERS.index(key.upper()) + 1)] if c != key.upper()]
        return rng.choice(pool)
    if key in _OPPOSITES:
        return _OPPOSITES[key]
    try:
        value = int(key.replace(",", ""))
    except ValueError:
        return "unknown" if key != "unknown" else "none"
    return str(value + rng.choice([-1, 1]) * rng.randint(1, 9))


def answer_value(correct: bool, expected: str | None, rng: random.Random) -> str:
    """What the simulated model puts after ``ANSWER:``."""
    if correct:
        return CORRECT if expected is None else expected
    return wrong_answer(expected, rng)
