"""Typed, strict reading of a plain-dict grader spec; every error names its field (``GraderSpecError``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from feedback.graders.base import GraderSpecError

_ABSENT: Any = object()


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class SpecReader:
    """Reads keys of one spec; :meth:`done` rejects any key that no reader asked for (typos fail loudly)."""

    def __init__(self, spec: Mapping[str, Any], where: str = "") -> None:
        self.spec = spec
        self.where = where
        self.used: set[str] = {"type"}

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, reason: str) -> GraderSpecError:
        return GraderSpecError(self.field(key), reason)

    def _get(self, key: str) -> Any:
        self.used.add(key)
        value = self.spec.get(key, _ABSENT)
        return _ABSENT if value is None else value  # YAML "key:" with no value means "default"

    def has(self, key: str) -> bool:
        return self.spec.get(key) is not None

    def text(self, key: str, default: Any = _ABSENT, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._get(key)
        if value is _ABSENT:
            if default is _ABSENT:
                raise self.fail(key, "is required")
            return default
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def flag(self, key: str, default: bool | None) -> Any:
        value = self._get(key)
        if value is _ABSENT:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_kind(value)}")
        return value

    def number(self, key: str, default: float | None, *, minimum: float = 0.0, integer: bool = False,
               exclusive: bool = False) -> Any:
        value = self._get(key)
        if value is _ABSENT:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"expected a number, got {_kind(value)}")
        if integer and not float(value).is_integer():
            raise self.fail(key, f"expected a whole number, got {value}")
        if value < minimum or (exclusive and value == minimum):
            raise self.fail(key, f"{value} must be {'>' if exclusive else '>='} {minimum:g}")
        return int(value) if integer else float(value)

    def str_list(self, key: str, *, allow_single: bool = True) -> list[str]:
        value = self._get(key)
        if value is _ABSENT:
            return []
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise self.fail(key, f"expected a list of strings, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise GraderSpecError(f"{self.field(key)}[{i}]", f"expected a non-empty string, got {_kind(item)}")
        return list(value)

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self._get(key)
        if value is _ABSENT:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {_kind(value)}")
        return value

    def regex(self, key: str, flags: int = 0, *, required: bool = False) -> re.Pattern[str] | None:
        source = self.text(key, _ABSENT if required else None)
        if source is None:
            return None
        try:
            return re.compile(source, flags)
        except re.error as exc:
            raise self.fail(key, f"not a valid regular expression ({exc})") from None

    def done(self) -> None:
        for key in self.spec:
            if key not in self.used:
                shown = key if isinstance(key, str) else repr(key)
                raise GraderSpecError(self.field(str(shown)), f"unknown key (allowed: {', '.join(sorted(self.used))})")
