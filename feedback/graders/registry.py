"""``make_grader(spec)``: build a grader from a plain dict (one entry of the YAML config's grader list).

Every spec has ``type`` (see :data:`GRADER_TYPES`) and an optional ``name`` (default: the type; it becomes the
feedback source ``"grader:<name>"``, so two differently configured graders of one type need two names); the
other keys belong to the type and are documented on its class. Unknown keys, wrong types and bad values raise
:class:`GraderSpecError` naming the field, prefixed with ``where`` when given (e.g. ``"categories.coding
.graders[0].pattern: is required"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from feedback.graders._spec import SpecReader
from feedback.graders.base import MAX_NAME_LEN, Grader, GraderSpecError
from feedback.graders.code import CodeTestsGrader
from feedback.graders.judge import LLMJudgeGrader
from feedback.graders.rules import FormatGrader
from feedback.graders.structured import JsonSchemaGrader, JsonValidGrader
from feedback.graders.text import ExactMatchGrader, MultipleChoiceGrader, RegexGrader

__all__ = ["GRADER_TYPES", "GraderFactory", "make_grader", "register_grader"]

#: builds a grader from a spec reader and its name; must read every key it accepts before returning
GraderFactory = Callable[[SpecReader, str], Grader]

GRADER_TYPES: dict[str, GraderFactory] = {
    "exact_match": ExactMatchGrader.from_spec,
    "multiple_choice": MultipleChoiceGrader.from_spec,
    "regex": RegexGrader.from_spec,
    "json_valid": JsonValidGrader.from_spec,
    "json_schema": JsonSchemaGrader.from_spec,
    "format": FormatGrader.from_spec,
    "length": FormatGrader.from_spec,
    "code_tests": CodeTestsGrader.from_spec,
    "llm_judge": LLMJudgeGrader.from_spec,
}


def register_grader(type_name: str, factory: GraderFactory, *, replace: bool = False) -> None:
    """Add a grader type (the extension point for e.g. ``llm_judge``, which needs the router's upstreams)."""
    if not type_name or (type_name in GRADER_TYPES and not replace):
        raise ValueError(f"grader type {type_name!r} is empty or already registered")
    GRADER_TYPES[type_name] = factory


def make_grader(spec: Mapping[str, Any], *, where: str = "") -> Grader:
    """A grader from its spec, e.g. ``{"type": "exact_match", "normalize": True}``; see the module doc."""
    if not isinstance(spec, Mapping):
        raise GraderSpecError(where or "spec", f"expected a mapping with a 'type', got {type(spec).__name__}")
    r = SpecReader(spec, where)
    kind = spec.get("type")
    if kind is None:
        raise r.fail("type", f"is required (one of {', '.join(GRADER_TYPES)})")
    if not isinstance(kind, str) or kind not in GRADER_TYPES:
        raise r.fail("type", f"{kind!r:.40} is not one of {', '.join(GRADER_TYPES)}")
    name = r.text("name", kind)
    if len(name) > MAX_NAME_LEN:
        raise r.fail("name", f"must be at most {MAX_NAME_LEN} characters, got {len(name)}")
    try:
        grader = GRADER_TYPES[kind](r, name)
    except GraderSpecError as exc:
        if where and exc.field.startswith(where):
            raise
        raise r.fail(exc.field, exc.reason) from None
    r.done()
    return grader
