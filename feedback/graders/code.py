"""``code_tests``: run the answer's Python against assert-style test cases (MBPP style) in the sandbox.

Quality = passed tests / total tests. A syntax error, an exception before the tests run, a CPU or wall-clock
timeout, or output over the cap scores 0 with the reason. Each test statement runs on its own (a failing one
does not stop the others) against the names the answer's code left behind. Pass or fail is decided in a
separate judge process that never runs a line of the answer (see :mod:`feedback.graders.sandbox`), so the
answer cannot forge its score. A missing or malformed reference, a sandbox that fails to start, or a machine
without a separating isolation layer (a fresh uid or a PID namespace) unless ``allow_weak_isolation`` is set,
raises :class:`GraderError`. The reason ends with the isolation layers that were in force, e.g.
``[sandbox uid+netns+pidns+nproc+rlimits]``.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

from feedback.graders._spec import SpecReader
from feedback.graders.base import Grader, GradeRequest, GradeResult, GraderSpecError, short
from feedback.graders.isolation import SEPARATING, Isolation, detect_isolation
from feedback.graders.sandbox import SandboxError, SandboxLimits, SandboxRun, run_python_tests

__all__ = ["LAYERS", "CodeTestsGrader", "extract_code"]

LAYERS: Final = ("uid", "netns", "pidns", "nproc")
_FENCE: Final = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON: Final = frozenset({"python", "py", "python3", "py3"})
_CPU_SLACK: Final = 0.8


def extract_code(answer: str) -> str:
    """The Python code in an answer: its ```python fenced blocks joined (else its unlabelled fenced blocks),
    or the whole answer when it has no fence. A fence left open at the end (a cut-off answer) runs to the end."""
    blocks = _FENCE.findall(answer)
    for wanted in (lambda lang: lang.lower() in _PYTHON, lambda lang: not lang):
        chosen = [body for lang, body in blocks if wanted(lang)]
        if chosen:
            return "\n\n".join(chosen)
    return answer.strip("\n")


def _tail(data: bytes, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:] if text else "no output"


class CodeTestsGrader(Grader):
    """MBPP-style Python tests in a sandboxed subprocess.

    Reference: ``{"tests": ["assert add(1, 2) == 3", ...], "setup": "import math"}`` (``setup`` optional, run
    after the answer's code and before the tests). Spec (all optional)::

        {"type": "code_tests", "cpu_seconds": 5, "wall_seconds": 10, "memory_mb": 256,
         "max_output_bytes": 1000000, "max_file_bytes": 1000000, "max_open_files": 64,
         "require": ["netns"],     # isolation layers that must be available, else GraderError
         "allow_weak_isolation": false}

    ``require`` takes any of ``uid``, ``netns``, ``pidns``, ``nproc`` (see :mod:`feedback.graders.isolation`).
    Without ``uid`` or ``pidns`` the answer could read the server's environment (its API keys) and attack the
    judge process, so grading fails unless ``allow_weak_isolation: true`` accepts that risk explicitly.
    """

    type_name = "code_tests"

    def __init__(self, name: str | None = None, *, limits: SandboxLimits | None = None,
                 require: Iterable[str] = (), isolation: Isolation | None = None,
                 allow_weak_isolation: bool = False) -> None:
        super().__init__(name)
        self.limits = limits or SandboxLimits()
        self.require = tuple(require)
        for i, layer in enumerate(self.require):
            if layer not in LAYERS:
                raise GraderSpecError(f"require[{i}]", f"{layer!r} is not one of {', '.join(LAYERS)}")
        self._isolation = isolation
        self.allow_weak_isolation = allow_weak_isolation

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
        require, weak = r.str_list("require"), r.flag("allow_weak_isolation", False)
        try:
            return cls(name, limits=limits, require=require, allow_weak_isolation=weak)
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
        if not iso.separated and not self.allow_weak_isolation:
            raise self.error(f"sandbox isolation too weak: neither {' nor '.join(SEPARATING)} is available here "
                             f"({'; '.join(iso.notes) or iso.describe()}), so the answer could read the server's "
                             "environment; set allow_weak_isolation: true to grade anyway")
        try:
            run = run_python_tests(extract_code(request.answer), tests, setup=setup, limits=self.limits,
                                   isolation=iso)
        except SandboxError as exc:
            raise self.error(str(exc)) from None
        return self._verdict(run, tests)

    def _verdict(self, run: SandboxRun, tests: list[str]) -> GradeResult:
        events, total, words = run.events, len(tests), run.words
        tag = f" [sandbox {run.isolation.describe()}]"
        info: dict[str, Any] = {"total": total, "isolation": run.isolation.layers, "elapsed": round(run.elapsed, 3)}

        def zero(reason: str) -> GradeResult:
            return self.result(0.0, short(reason, 200 - len(tag)) + tag, passed=0, **info)

        if run.output_exceeded:  # even before the judge's READY: the runners print nothing, the answer does
            return zero(f"output limit ({self.limits.max_output_bytes} bytes) exceeded")
        if "READY" not in words:
            raise self.error(f"sandbox failed before running the answer: {_tail(run.judge.stderr)}")
        if "NOSTART" in words:  # the answer's runner died before its first untrusted line
            raise self.error(f"sandbox failed before running the answer: {_tail(run.answer.stderr)}")

        first = {word: data for word, data in reversed(events)}
        # the kernel kills at RLIMIT_CPU, but rusage under-reports it by up to ~10% on a busy machine
        cpu_limit = max(1, math.ceil(self.limits.cpu_seconds)) * _CPU_SLACK
        if "SYNTAX" in first:
            data = first["SYNTAX"]
            return zero(f"syntax error at line {data.get('line')}: {data.get('error')}")
        if "CRASH" in first:
            return zero(f"the code failed before the tests: {first['CRASH'].get('error')}")
        if {"GONE", "ENDED"} & words and run.answer.cpu_seconds >= cpu_limit:  # died near its CPU limit
            return zero(f"CPU time limit ({self.limits.cpu_seconds:g} s) exceeded")
        if run.timed_out:
            return zero(f"wall-clock timeout ({self.limits.wall_seconds:g} s)")
        if "ENDED" in words:
            status = run.answer.returncode
            return zero(f"the program ended before the tests finished (status {status}): {_tail(run.answer.stderr)}")
        if "DONE" not in words:
            if run.judge.cpu_seconds >= cpu_limit:
                return zero(f"CPU time limit ({self.limits.cpu_seconds:g} s) exceeded")
            return zero(f"the tests ended early (status {run.judge.returncode}): {_tail(run.judge.stderr)}")
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
