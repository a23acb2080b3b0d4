"""Feedback signals: normalise user ratings and grader outcomes to a quality in [0, 1].

Standalone package: no imports from ``bandit_router`` and no I/O. See :mod:`feedback.signals`.
"""

from feedback.signals import (
    FeedbackSignal,
    SignalError,
    combine,
    from_grader,
    from_score,
    from_stars,
    from_ten_point,
    from_thumbs,
    parse_feedback,
)

__all__ = [
    "FeedbackSignal",
    "SignalError",
    "combine",
    "from_grader",
    "from_score",
    "from_stars",
    "from_ten_point",
    "from_thumbs",
    "parse_feedback",
]
