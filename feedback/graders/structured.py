"""Structured output: ``json_valid`` and ``json_schema`` (JSON Schema validation by the ``jsonschema`` library).

The answer is parsed as JSON as a whole or, failing that, from the first fenced code block that parses (```json
... ``` or an unlabelled fence). Strict JSON: ``NaN``/``Infinity`` are rejected. Scores are 1 or 0; the reason
names the parse error or the schema violation that matters most (``jsonschema``'s ``best_match``: its JSON path,
e.g. ``$.items[1].qty``, and message), and ``details["violations"]`` counts them all.

A schema's ``pattern`` and ``patternProperties`` (also as consulted by ``additionalProperties``) are matched by
the bounded matcher of :mod:`feedback.graders._spec` through keywords plugged into the ``jsonschema``
validator class: a pattern that backtracks catastrophically is a :class:`GraderError` saying it timed out (or
that it does not compile), never a quality 0. ``jsonschema`` evaluates ``patternProperties`` for
``unevaluatedProperties`` with plain ``re``, which cannot be bounded, so a schema combining the two is refused.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from jsonschema import exceptions as js_exceptions
from jsonschema import validators as js_validators

from feedback.graders._spec import (
    PatternError,
    PatternTimeout,
    SpecReader,
    bounded_match,
    compile_pattern,
    pattern_budget,
)
from feedback.graders.base import Grader, GradeRequest, GradeResult, GraderSpecError, short

__all__ = ["JsonSchemaGrader", "JsonValidGrader", "check_schema", "parse_json_answer"]

_FENCE: Final = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


class JsonAnswerError(ValueError):
    """The answer holds no parseable JSON; ``str(err)`` says why."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def parse_json_answer(answer: str, *, fenced: bool = True) -> Any:
    """The JSON value in ``answer`` (whole, or from a fenced block when ``fenced``); raises ``JsonAnswerError``."""
    try:
        return _loads(answer.strip())
    except RecursionError:
        raise JsonAnswerError("JSON nested too deeply") from None
    except ValueError as exc:
        first = exc
    if fenced:
        blocks = sorted(_FENCE.findall(answer), key=lambda b: b[0].lower() != "json")  # ```json blocks first
        for _, body in blocks:
            try:
                return _loads(body.strip())
            except (ValueError, RecursionError):
                continue
    where = "the answer (or a fenced block)" if fenced else "the answer"
    raise JsonAnswerError(f"no valid JSON in {where}: {first}")


def _search(pattern: str, text: str) -> bool:
    return bounded_match(compile_pattern(pattern), text) is not None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[js_exceptions.ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield js_exceptions.ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Mapping[str, Any], instance: Any,
                        schema: Any) -> Iterator[js_exceptions.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, extra_schema: Any, instance: Any,
                           schema: Any) -> Iterator[js_exceptions.ValidationError]:
    """``jsonschema``'s own ``additionalProperties``, with the patterns matched by the bounded matcher."""
    if not validator.is_type(instance, "object"):
        return
    properties, patterns = schema.get("properties", {}), list(schema.get("patternProperties", {}))
    extras = {key for key in instance if key not in properties and not any(_search(p, key) for p in patterns)}
    if validator.is_type(extra_schema, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], extra_schema, path=extra)
    elif not extra_schema and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            shown = ", ".join(repr(each) for each in sorted(patterns))
            yield js_exceptions.ValidationError(f"{joined} {verb} not match any of the regexes: {shown}")
        else:
            listed = ", ".join(repr(extra) for extra in sorted(extras, key=str))
            verb = "was" if len(extras) == 1 else "were"
            yield js_exceptions.ValidationError(f"Additional properties are not allowed ({listed} {verb} unexpected)")


_BOUNDED: Final = {"pattern": _pattern, "patternProperties": _pattern_properties,
                   "additionalProperties": _additional_properties}


@functools.cache
def _bounded(cls: Any) -> Any:
    """``cls`` with the pattern keywords replaced by bounded ones (one subclass per draft)."""
    return js_validators.extend(cls, {k: v for k, v in _BOUNDED.items() if k in cls.VALIDATORS})


def _keys(node: Any) -> set[str]:
    """Every key of every object inside ``node``."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            found.update(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


def check_schema(schema: Any) -> Any:
    """A validator for ``schema`` (draft from its ``$schema``, else 2020-12); ``ValueError`` if the schema is bad."""
    if not isinstance(schema, Mapping | bool):
        raise ValueError(f"expected a JSON Schema object, got {type(schema).__name__}")
    cls = js_validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except js_exceptions.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {short(exc.message, 120)}") from None
    if {"unevaluatedProperties", "patternProperties"} <= _keys(schema):
        raise ValueError("not supported: unevaluatedProperties with patternProperties (their patterns would be "
                         "matched without a time bound)")
    return _bounded(cls)(schema)


def _path(error: js_exceptions.ValidationError) -> str:
    out = "$"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


class JsonValidGrader(Grader):
    """1 if the answer is valid JSON (see :func:`parse_json_answer`), else 0.

    Spec: ``{"type": "json_valid", "fenced": true}`` (``fenced: false``: the whole answer must be JSON).
    """

    type_name = "json_valid"

    def __init__(self, name: str | None = None, *, fenced: bool = True) -> None:
        super().__init__(name)
        self.fenced = fenced

    @classmethod
    def from_spec(cls, r: SpecReader, name: str | None) -> JsonValidGrader:
        return cls(name, fenced=r.flag("fenced", True))

    def grade(self, request: GradeRequest) -> GradeResult:
        try:
            parse_json_answer(request.answer, fenced=self.fenced)
        except JsonAnswerError as exc:
            return self.result(0.0, str(exc))
        return self.result(1.0, "valid JSON")


class JsonSchemaGrader(JsonValidGrader):
    """1 if the answer's JSON validates against the schema, else 0 (the reason names the main violation).

    Spec: ``{"type": "json_schema", "schema": {...}, "fenced": true}``. Without a configured schema,
    ``reference["schema"]`` is used; a missing or invalid reference schema is a :class:`GraderError`. Formats
    (``"format": "email"``) are annotations only, as the JSON Schema spec's default.
    """

    type_name = "json_schema"

    def __init__(self, name: str | None = None, *, schema: Mapping[str, Any] | bool | None = None,
                 fenced: bool = True) -> None:
        super().__init__(name, fenced=fenced)
        try:
            self.validator = None if schema is None else check_schema(schema)
        except ValueError as exc:
            raise GraderSpecError("schema", str(exc)) from None

    @classmethod
    def from_spec(cls, r: SpecReader, name: str | None) -> JsonSchemaGrader:
        fenced, schema = r.flag("fenced", True), r.mapping("schema")
        try:
            return cls(name, schema=schema, fenced=fenced)
        except GraderSpecError as exc:
            raise r.fail(exc.field, exc.reason) from None

    def _validator(self, request: GradeRequest) -> Any:
        if self.validator is not None:
            return self.validator
        try:
            return check_schema(self.reference(request, "schema"))
        except ValueError as exc:
            raise self.error(f"reference.schema: {exc}") from None

    def grade(self, request: GradeRequest) -> GradeResult:
        validator = self._validator(request)
        try:
            value = parse_json_answer(request.answer, fenced=self.fenced)
        except JsonAnswerError as exc:
            return self.result(0.0, str(exc))
        try:
            with pattern_budget():
                errors = list(validator.iter_errors(value))
        except RecursionError:
            return self.result(0.0, "JSON nested too deeply to validate")
        except (PatternTimeout, PatternError) as exc:
            raise self.error(f"schema: {exc}") from None
        if not errors:
            return self.result(1.0, "valid against the schema")
        first = js_exceptions.best_match(errors)
        assert first is not None
        reason = f"schema violation at {_path(first)}: {first.message}"
        return self.result(0.0, short(reason), violations=len(errors), path=_path(first))
