"""Automated graders: quality signals without humans.

``make_grader({"type": ..., ...})`` builds one from a config dict; ``grader.grade(GradeRequest(...))`` (or
``await grader.agrade(...)``) returns a :class:`GradeResult` whose ``to_signal()`` is a ``FeedbackSignal``
with source ``"grader:<name>"``. A :class:`GraderError` means the grader failed, never that the answer was
bad. :class:`GradingPolicy` decides which answers to grade and keeps paid graders within a budget.

Standalone like :mod:`feedback`: nothing here imports ``bandit_router``.
"""

from feedback.graders.base import AsyncGrader, Grader, GradeRequest, GraderError, GradeResult, GraderSpecError
from feedback.graders.code import CodeTestsGrader, extract_code
from feedback.graders.isolation import Isolation, detect_isolation
from feedback.graders.judge import LLMJudgeGrader
from feedback.graders.policy import GradingPolicy
from feedback.graders.registry import GRADER_TYPES, make_grader, register_grader
from feedback.graders.rules import FormatGrader
from feedback.graders.sandbox import SandboxLimits
from feedback.graders.structured import JsonSchemaGrader, JsonValidGrader, parse_json_answer
from feedback.graders.text import ExactMatchGrader, MultipleChoiceGrader, RegexGrader, extract_choice, normalize_text

__all__ = [
    "GRADER_TYPES", "AsyncGrader", "CodeTestsGrader", "ExactMatchGrader", "FormatGrader", "GradeRequest",
    "GradeResult", "Grader", "GraderError", "GraderSpecError", "GradingPolicy", "Isolation", "JsonSchemaGrader",
    "JsonValidGrader", "LLMJudgeGrader", "MultipleChoiceGrader", "RegexGrader", "SandboxLimits", "detect_isolation",
    "extract_choice",
    "extract_code", "make_grader", "normalize_text", "parse_json_answer", "register_grader",
]
