"""``code_tests``: run the answer's Python against assert-style test cases (MBPP style) in the sandbox.

Quality = passed tests / total tests. A syntax error, an exception before the tests run, a CPU or wall-clock
timeout, or output over the cap scores 0 with the reason. Each test statement runs on its own (a failing one
does not stop the others), in the namespace the answer's code left behind. A missing or malformed reference,
or a sandbox that fails to start, raises :class:`GraderError`. See :mod:`feedback.graders.sandbox` for the
isolation and its limits; the reason ends with the isolation layers that were in force, e.g.
``[sandbox uid+netns+pidns+nproc+rlimits]``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from feedback.graders._spec import SpecReader
from feedback.graders.base import Grader, GradeRequest, GradeResult, GraderSpecError, short
from feedback.graders.isolation import Isolation, detect_isolation
from feedback.graders.sandbox import SandboxError, SandboxLimits, SandboxRun, run_python_tests

__all__ = ["LAYERS", "CodeTestsGrader", "extract_code"]

LAYERS: Final = ("uid", "netns", "pidns", "nproc")
_FENCE: Final = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON: Final = frozenset({"python", "py", "python3", "py3"})


def extract_code(answer: str) -> str:
    """The Python code in an answer: its ```python fenced blocks joined (else its unlabelled fenced blocks),
    or the whole answer when it has no fence. A fence left open at the end (a cut-off answer) runs to the end."""
    blocks = _FENCE.findall(answer)
    for wanted in (lambda lang: lang.lower() in _PYTHON, lambda lang: not lang):
        chosen = [body for lang, body in blocks if wanted(lang)]
        if chosen:
            return "\n\n".join(chosen)
    return answer.strip("\n")


def _events(run: SandboxRun) -> list[tuple[str, Any]]:
    """The runner's protocol lines, in order; lines without this run's nonce are the answer's own output."""
    out: list[tuple[str, Any]] = []
    tag = run.nonce + " "
    for line in run.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith(tag):
            word, _, data = line[len(tag):].partition(" ")
            try:
                out.append((word, json.loads(data) if data else None))
            except ValueError:
                continue
    return out


def _tail(data: bytes, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:] if text else "no output"


class CodeTestsGrader(Grader):
    """MBPP-style Python tests in a sandboxed subprocess.

    Reference: ``{"tests": ["assert add(1, 2) == 3", ...], "setup": "import math"}`` (``setup`` optional, run
    after the answer's code and before the tests). Spec (all optional)::

        {"type": "code_tests", "cpu_seconds": 5, "wall_seconds": 10, "memory_mb": 256,
         "max_output_bytes": 1000000, "max_file_bytes": 1000000, "max_open_files": 64,
         "require": ["netns"]}     # isolation layers that must be available, else GraderError

    ``require`` takes any of ``uid``, ``netns``, ``pidns``, ``nproc`` (see :mod:`feedback.graders.sandbox`).
    """

    type_name = "code_tests"

    def __init__(self, name: str | None = None, *, limits: SandboxLimits | None = None,
                 require: Iterable[str] = (), isolation: Isolation | None = None) -> None:
        super().__init__(name)
        self.limits = limits or SandboxLimits()
        self.require = tuple(require)
        for i, layer in enumerate(self.require):
            if layer not in LAYERS:
                raise GraderSpecError(f"require[{i}]", f"{layer!r} is not one of {', '.join(LAYERS)}")
        self._isolation = isolation

    @classmethod
    def from_spec(cls, r: SpecReader, name: str | None) -> CodeTestsGrader:
        d = SandboxLimits()
        limits = SandboxLimits(
            cpu_seconds=r.number("cpu_seconds", d.cpu_seconds, exclusive=True),
            wall_seconds=r.number("wall_seconds", d.wall_seconds, exclusive=True),
            memory_bytes=int(r.number("memory_mb", d.memory_bytes / 2**20, minimum=32) * 2**20),
            max_output_bytes=r.number("max_output_bytes", d.max_output_bytes, minimum=4096, integer=True),
            max_file_bytes=r.number("max_file_bytes", d.max_file_bytes, integer=True),
            max_open_files=r.number("max_open_files", d.max_open_files, minimum=8, integer=True),
        )
        require = r.str_list("require")
        try:
            return cls(name, limits=limits, require=require)
        except GraderSpecError as exc:
            raise r.fail(exc.field, exc.reason) from None

    @property
    def isolation(self) -> Isolation:
        """The isolation runs get on this machine (probed on first use)."""
        return self._isolation or detect_isolation()

    def _tests(self, request: GradeRequest) -> tuple[list[str], str]:
        tests = self.reference(request, "tests")
        if not isinstance(tests, Sequence) or isinstance(tests, str) or not tests:
            raise self.error("reference.tests: expected a non-empty list of test statements")
        setup = (request.reference or {}).get("setup") or ""
        for key, source in [*((f"tests[{i}]", t) for i, t in enumerate(tests)), ("setup", setup)]:
            if not isinstance(source, str) or (key != "setup" and not source.strip()):
                raise self.error(f"reference.{key}: expected a non-empty string")
            try:
                ast.parse(source)
            except (SyntaxError, ValueError) as exc:
                raise self.error(f"reference.{key}: not valid Python ({exc})") from None
        return list(tests), setup

    def grade(self, request: GradeRequest) -> GradeResult:
        tests, setup = self._tests(request)
        iso = self.isolation
        missing = [layer for layer in self.require if layer not in iso.layers]
        if missing:
            raise self.error(f"sandbox lacks required isolation {', '.join(missing)} ({'; '.join(iso.notes)})")
        try:
            run = run_python_tests(extract_code(request.answer), tests, setup=setup, limits=self.limits,
                                   isolation=iso)
        except SandboxError as exc:
            raise self.error(str(exc)) from None
        return self._verdict(run, tests)

    def _verdict(self, run: SandboxRun, tests: list[str]) -> GradeResult:
        events, total = _events(run), len(tests)
        words = {word for word, _ in events}
        tag = f" [sandbox {run.isolation.describe()}]"
        info: dict[str, Any] = {"total": total, "isolation": run.isolation.layers, "elapsed": round(run.elapsed, 3)}
        if "READY" not in words:
            raise self.error(f"sandbox failed before running the answer: {_tail(run.stderr)}")

        def zero(reason: str) -> GradeResult:
            return self.result(0.0, short(reason, 200 - len(tag)) + tag, passed=0, **info)

        first = {word: data for word, data in reversed(events)}
        if "SYNTAX" in first:
            data = first["SYNTAX"]
            return zero(f"syntax error at line {data.get('line')}: {data.get('error')}")
        if "CRASH" in first:
            return zero(f"the code failed before the tests: {first['CRASH']}")
        if run.output_exceeded:
            return zero(f"output limit ({self.limits.max_output_bytes} bytes) exceeded")
        if run.timed_out:
            return zero(f"wall-clock timeout ({self.limits.wall_seconds:g} s)")
        if "DONE" not in words:
            if run.cpu_seconds >= max(1, math.ceil(self.limits.cpu_seconds)) - 0.05:
                return zero(f"CPU time limit ({self.limits.cpu_seconds:g} s) exceeded")
            return zero(f"the program ended before the tests finished (status {run.returncode}): {_tail(run.stderr)}")
        outcome: dict[int, str | None] = {}
        for word, data in events:
            if word in ("PASS", "FAIL") and isinstance(data, dict) and data.get("test") not in outcome:
                outcome[int(data["test"])] = None if word == "PASS" else str(data.get("error"))
        passed = sum(1 for i in range(total) if i in outcome and outcome[i] is None)
        failures = [(i, outcome.get(i) or "no result") for i in range(total) if outcome.get(i, "") is not None]
        reason = f"{passed}/{total} tests passed"
        if failures:
            i, error = failures[0]
            reason += f"; test {i} ({short(tests[i], 60)}): {error}"
        detail = {**info, "passed": passed, "failures": [{"test": i, "error": e} for i, e in failures[:5]]}
        return self.result(passed / total, short(reason, 200 - len(tag)) + tag, **detail)
