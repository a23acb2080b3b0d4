"""Tests for feedback.graders: each grader on real cases, the code sandbox against hostile code, the registry,
the sampling/budget policy. Sandbox tests use 1 s of CPU and 2-3 s of wall clock; the whole file runs in ~20 s."""

from __future__ import annotations

import asyncio
import os
import pickle
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

from feedback.graders import (
    AsyncGrader,
    CodeTestsGrader,
    ExactMatchGrader,
    GradeRequest,
    GraderError,
    GradeResult,
    GraderSpecError,
    GradingPolicy,
    Isolation,
    SandboxLimits,
    detect_isolation,
    extract_choice,
    extract_code,
    make_grader,
    normalize_text,
    register_grader,
)
from feedback.signals import FeedbackSignal


def req(text: str, /, **reference: object) -> GradeRequest:
    return GradeRequest(answer=text, reference=reference or None)


def q(spec: dict, text: str, /, **reference: object) -> float:
    return make_grader(spec).grade(req(text, **reference)).quality


# --- interface -----------------------------------------------------------------------------------------------

def test_result_validates_truncates_and_converts_to_a_signal() -> None:
    r = GradeResult("exact_match", 1, "line one\nline two " + "x" * 500)
    assert r.quality == 1.0 and r.passed and len(r.reason) == 200 and "\n" not in r.reason
    assert r.to_signal() == FeedbackSignal(1.0, "grader:exact_match", "grader_score")
    assert r.to_signal(weight=2.0).weight == 2.0
    for bad in (-0.1, 1.5, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="quality"):
            GradeResult("g", bad, "")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="answer"):
        GradeRequest(answer=None)  # type: ignore[arg-type]
    err = pickle.loads(pickle.dumps(GraderError("regex", "reference.pattern: is required")))
    assert str(err) == "grader regex: reference.pattern: is required" and err.grader == "regex"


def test_agrade_runs_sync_graders_in_a_thread_and_async_graders_natively() -> None:
    grader = ExactMatchGrader()
    assert asyncio.run(grader.agrade(req("42", answer="42"))).quality == 1.0

    class Judge(AsyncGrader):
        type_name = "llm_judge"

        async def agrade(self, request: GradeRequest) -> GradeResult:
            await asyncio.sleep(0)
            return self.result(0.75, "judged")

    judge = Judge()
    assert judge.grade(req("x")).quality == 0.75  # outside a loop: runs agrade with asyncio.run

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="agrade"):
            judge.grade(req("x"))
        assert (await judge.agrade(req("x"))).to_signal().source == "grader:llm_judge"

    asyncio.run(inside())


# --- text graders --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "reference", "normalize", "expected"), [
    ("Paris", "Paris", False, 1.0), ("  Paris\n", "Paris", False, 1.0), ("paris", "Paris", False, 0.0),
    ("paris.", "Paris", True, 1.0), ("The  answer:   PARIS!", "the answer paris", True, 1.0),
    ("1,000", "1000", True, 1.0), ("$1,000,000.50", "1000000.5", True, 1.0), ("3.14", "3.140", True, 1.0),
    ("3.14", "314", True, 0.0), ("1,2,3", "123", False, 0.0), ("London", "Paris", True, 0.0),
    ("-5", "5", True, 0.0), ("x = -5.", "X = -5", True, 1.0), ("well-known", "wellknown", True, 1.0),
])
def test_exact_match(answer: str, reference: str, normalize: bool, expected: float) -> None:
    assert q({"type": "exact_match", "normalize": normalize}, answer, answer=reference) == expected


def test_exact_match_options_lists_and_bad_references() -> None:
    assert q({"type": "exact_match", "normalize": True, "case": False}, "paris", answer="Paris") == 0.0
    assert q({"type": "exact_match"}, "42", answer=42) == 1.0
    assert q({"type": "exact_match", "normalize": True}, "NYC", answer=["New York", "nyc"]) == 1.0
    assert normalize_text("Hello,  World!! 007 U.S.A.") == "hello world 7 usa"
    with pytest.raises(GraderError, match=r"reference\.answer: is required"):
        make_grader({"type": "exact_match"}).grade(req("x"))
    with pytest.raises(GraderError, match=r"reference\.answer"):
        make_grader({"type": "exact_match"}).grade(req("x", answer={"a": 1}))


@pytest.mark.parametrize(("answer", "letter"), [
    ("B", "B"), ("(B)", "B"), ("b", "B"), ("B.", "B"), ("**B**", "B"), ("Answer: B", "B"), ("answer: (b)", None),
    ("The answer is B.", "B"), ("The correct answer is (C) because ...", "C"), ("Final answer: **D**", "D"),
    ("B) Paris is the capital", "B"), ("Option A is tempting, but the answer is B.", "B"), (r"$\boxed{D}$", "D"),
    ("I choose option C.", "C"), ("The answer is a matter of taste.", None), ("I don't know", None), ("", None),
])
def test_extract_choice(answer: str, letter: str | None) -> None:
    assert extract_choice(answer) == letter


def test_multiple_choice() -> None:
    spec = {"type": "multiple_choice", "letters": "ABCD"}
    assert q(spec, "The answer is (B).", answer="B") == 1.0
    assert q(spec, "The answer is (B).", answer="(b)") == 1.0
    assert q(spec, "Answer: C", answer="B") == 0.0
    result = make_grader(spec).grade(req("no idea", answer="B"))
    assert result.quality == 0.0 and "no option letter" in result.reason
    assert q(spec, "Answer: E", answer="B") == 0.0  # E is not an option here
    with pytest.raises(GraderError, match=r"reference\.answer"):
        make_grader(spec).grade(req("B", answer="Paris"))


def test_regex_modes_and_references() -> None:
    assert q({"type": "regex", "pattern": r"\d{3}"}, "code 123 ok") == 1.0
    assert q({"type": "regex", "pattern": r"\d{3}", "mode": "full"}, "code 123 ok") == 0.0
    assert q({"type": "regex", "pattern": r"\d{3}", "mode": "full"}, " 123\n") == 1.0
    assert q({"type": "regex", "pattern": "yes", "ignore_case": True}, "YES") == 1.0
    assert q({"type": "regex"}, "2024-01-31", pattern=r"\d{4}-\d\d-\d\d") == 1.0
    with pytest.raises(GraderError, match=r"reference\.pattern: is required"):
        make_grader({"type": "regex"}).grade(req("x"))
    with pytest.raises(GraderError, match=r"reference\.pattern: not a valid regular expression"):
        make_grader({"type": "regex"}).grade(req("x", pattern="("))


EVIL = "^(a|a)*$"  # exponential backtracking, even in the regex package: only its timeout stops it
SLOW = "a" * 40 + "b"


def timed_grade(spec: dict, text: str, /, **reference: object) -> tuple[GradeResult | GraderError, float]:
    start = time.monotonic()
    try:
        result: GradeResult | GraderError = make_grader(spec).grade(req(text, **reference))
    except GraderError as exc:
        result = exc
    return result, time.monotonic() - start


def test_regex_backtracking_pattern_from_the_review_returns_fast() -> None:
    result, took = timed_grade({"type": "regex"}, SLOW, pattern="(a+)+$")  # hangs Python's re for hours
    assert isinstance(result, GradeResult) and result.quality == 0.0 and took < 1.0, (result, took)


@pytest.mark.parametrize(("spec", "text", "reference"), [
    ({"type": "regex"}, SLOW, {"pattern": EVIL}),
    ({"type": "regex", "pattern": EVIL, "mode": "full"}, SLOW, {}),
    ({"type": "format", "ends_with_line": EVIL}, f"intro\n{SLOW}", {}),
    ({"type": "json_schema"}, f'{{"x": "{SLOW}"}}', {"schema": {"properties": {"x": {"pattern": EVIL}}}}),
    ({"type": "json_schema"}, f'{{"{SLOW}": 1}}', {"schema": {"patternProperties": {EVIL: {}}}}),
    ({"type": "json_schema"}, f'{{"{SLOW}": 1}}', {"schema": {"additionalProperties": False,
                                                               "patternProperties": {EVIL: {}}}}),
    ({"type": "json_schema", "schema": {"$schema": "http://json-schema.org/draft-04/schema#",
                                        "items": {"pattern": EVIL}}}, f'["{SLOW}", "{SLOW}"]', {}),
])
def test_catastrophic_patterns_time_out_as_grader_failures(spec: dict, text: str, reference: dict) -> None:
    result, took = timed_grade(spec, text, **reference)
    assert isinstance(result, GraderError), result  # the grader's pattern failed: counted, never a quality 0
    assert "timed out" in result.reason and EVIL in result.reason and took < 1.5, (result, took)


def test_bounded_patterns_keep_their_meaning() -> None:
    assert q({"type": "json_schema", "schema": {"additionalProperties": False, "patternProperties": {"^a": {}}}},
             '{"ab": 1, "zz": 2}') == 0.0
    assert q({"type": "json_schema", "schema": {"patternProperties": {"^a": {"type": "string"}}}}, '{"ab": 1}') == 0.0
    assert q({"type": "json_schema", "schema": {"additionalProperties": {"type": "integer"},
                                                "patternProperties": {"^a": {}}}}, '{"ab": "x", "zz": 2}') == 1.0
    assert q({"type": "json_schema", "schema": {"properties": {"x": {"pattern": "^a+$"}}}}, '{"x": "aaa"}') == 1.0
    assert q({"type": "regex", "pattern": "^YES$", "ignore_case": True, "multiline": True}, "no\nyes") == 1.0
    refused = make_grader({"type": "json_schema"})
    with pytest.raises(GraderError, match="unevaluatedProperties with patternProperties"):  # re there: unbounded
        refused.grade(req("{}", schema={"unevaluatedProperties": False, "patternProperties": {EVIL: {}}}))


# --- structured output and format rules ----------------------------------------------------------------------

SCHEMA = {"type": "object", "required": ["name", "items"], "additionalProperties": False,
          "properties": {"name": {"type": "string"},
                         "items": {"type": "array", "items": {"type": "object", "required": ["qty"],
                                                              "properties": {"qty": {"type": "integer"}}}}}}


def test_json_valid() -> None:
    assert q({"type": "json_valid"}, ' {"a": [1, 2]} ') == 1.0
    assert q({"type": "json_valid"}, 'Here you go:\n```json\n{"a": 1}\n```\nDone.') == 1.0
    assert q({"type": "json_valid", "fenced": False}, '```json\n{"a": 1}\n```') == 0.0
    bad = make_grader({"type": "json_valid"}).grade(req("{'a': 1}"))
    assert bad.quality == 0.0 and "no valid JSON" in bad.reason
    assert q({"type": "json_valid"}, '{"a": NaN}') == 0.0
    assert q({"type": "json_valid"}, "[" * 100_000) == 0.0  # too deep: a verdict, not a crash


def test_json_schema_names_the_first_violation() -> None:
    grader = make_grader({"type": "json_schema", "schema": SCHEMA})
    assert grader.grade(req('```json\n{"name": "x", "items": [{"qty": 2}]}\n```')).quality == 1.0
    wrong = grader.grade(req('{"name": "x", "items": [{"qty": 2}, {"qty": "3"}]}'))
    assert wrong.quality == 0.0 and "$.items[1].qty" in wrong.reason and "integer" in wrong.reason
    assert "'items' is a required property" in grader.grade(req('{"name": "x"}')).reason
    by_ref = make_grader({"type": "json_schema"})
    assert by_ref.grade(req("[1]", schema={"type": "array"})).quality == 1.0
    with pytest.raises(GraderError, match=r"reference\.schema: is required"):
        by_ref.grade(req("[1]"))
    with pytest.raises(GraderError, match=r"reference\.schema: not a valid JSON Schema"):
        by_ref.grade(req("[1]", schema={"type": "nope"}))


def test_format_rules_score_the_share_passed() -> None:
    spec = {"type": "length", "min_words": 3, "max_chars": 40, "contains": ["Sources:"], "not_contains": "As an AI",
            "ends_with_line": r"Answer: \d+"}
    assert q(spec, "Short text. Sources: none\nAnswer: 42\n") == 1.0
    result = make_grader(spec).grade(req("As an AI I think\nAnswer: many"))
    assert result.quality == pytest.approx(2 / 5) and "contains 'Sources:'" in result.reason
    assert result.grader == "length"
    assert q({"type": "format", "contains": ["sources"], "case_sensitive": False}, "SOURCES: x") == 1.0


# --- code_tests: correctness ---------------------------------------------------------------------------------

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]
FAST = {"type": "code_tests", "cpu_seconds": 1, "wall_seconds": 3}


def code(answer: str, tests: list[str] = ADD_TESTS, **spec: object) -> GradeResult:
    return make_grader({**FAST, **spec}).grade(req(answer, tests=tests))


def test_extract_code() -> None:
    answer = "Sure:\n```python\ndef f():\n    return 1\n```\nUsage:\n```\nf()\n```\n```py\ng = f\n```"
    assert extract_code(answer) == "def f():\n    return 1\n\n\ng = f\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("def f(): pass") == "def f(): pass"
    assert extract_code("```python\ndef f(): pass") == "def f(): pass"  # answer cut off mid-fence


def test_code_tests_scores_passed_tests() -> None:
    right = code("Here:\n```python\ndef add(a, b):\n    print('noise')\n    return a + b\n```")
    assert right.quality == pytest.approx(2 / 3) and right.details["passed"] == 2
    assert right.reason.startswith("2/3 tests passed; test 2 (assert add(2, 2) == 5): AssertionError")
    assert "[sandbox " in right.reason and right.to_signal().source == "grader:code_tests"
    assert code("def add(a, b):\n    return a + b", ADD_TESTS[:2]).quality == 1.0
    partial = code("def add(a, b):\n    return a / b * b + a", ["assert add(1, 0) == 1", "assert add(2, 1) == 4"])
    assert partial.quality == 0.5 and "ZeroDivisionError" in partial.reason  # one test failing doesn't stop the rest


@pytest.mark.parametrize(("answer", "why"), [
    ("def add(a, b) return a + b", "syntax error at line 1"),
    ("def add(a, b):\n    return a + b\nundefined_name", "failed before the tests: NameError"),
    ("name = input()", "failed before the tests: EOFError"),  # stdin is /dev/null: no hang
    ("import sys\nsys.exit(0)", "failed before the tests: SystemExit"),
    ("import os\nos._exit(0)", "ended before the tests finished"),
])
def test_code_tests_broken_answers_score_zero(answer: str, why: str) -> None:
    result = code(answer)
    assert result.quality == 0.0 and why in result.reason


def test_code_tests_grader_failures_raise() -> None:
    grader = make_grader(FAST)
    for reference, field in [(None, r"tests: is required"), ({"tests": []}, "tests: expected a non-empty list"),
                             ({"tests": "assert 1"}, "tests: expected"), ({"tests": ["assert ("]}, r"tests\[0\]"),
                             ({"tests": ["assert 1"], "setup": 3}, "setup")]:
        with pytest.raises(GraderError, match=rf"reference\.{field}"):
            grader.grade(GradeRequest(answer="x = 1", reference=reference))
    missing = Isolation("/nonexistent/python3", False, (), ("rlimits",))
    with pytest.raises(GraderError, match="could not start the sandbox"):
        CodeTestsGrader(isolation=missing, allow_weak_isolation=True).grade(req("x = 1", tests=["assert x"]))
    not_python = Isolation(shutil.which("false") or "/bin/false", False, (), ("rlimits",))
    with pytest.raises(GraderError, match="sandbox failed before running the answer"):
        CodeTestsGrader(isolation=not_python, allow_weak_isolation=True).grade(req("x = 1", tests=["assert x"]))
    with pytest.raises(GraderError, match="lacks required isolation netns"):
        CodeTestsGrader(require=["netns"], isolation=Isolation("python3", False, (), ("rlimits",))).grade(
            req("x = 1", tests=["assert x"]))


def test_weak_isolation_is_a_grader_failure_unless_allowed() -> None:
    weak = Isolation(os.path.realpath(sys.executable), False, (), ("nproc", "rlimits"),
                     ("unshare unavailable or refused: no network namespace",))
    with pytest.raises(GraderError, match="isolation too weak: neither uid nor pidns.*allow_weak_isolation: true"):
        CodeTestsGrader(isolation=weak).grade(req("def add(a, b):\n    return a + b", tests=ADD_TESTS))
    allowed = CodeTestsGrader(isolation=weak, allow_weak_isolation=True)
    assert allowed.grade(req("def add(a, b):\n    return a + b", tests=ADD_TESTS)).quality == pytest.approx(2 / 3)
    assert make_grader({"type": "code_tests", "allow_weak_isolation": True}).allow_weak_isolation is True
    assert not make_grader({"type": "code_tests"}).allow_weak_isolation


def test_code_tests_judge_values_the_answer_returns() -> None:
    """Tests run in the judge against proxies: objects, generators, exceptions, modules and setup all work."""
    answer = """
        import math
        from collections import namedtuple

        Point = namedtuple("Point", "x y")
        LIMIT = {"max": [1, 2.5, (3, None)], 7: {b"k", frozenset({1})}}

        def area(r):
            return math.pi * r * r

        def evens(n):
            return (i for i in range(0, n, 2))

        def check(n):
            if n < 0:
                raise ValueError(f"negative: {n}")
            return n

        def point(x, y):
            return Point(x, y)

        class Stack:
            def __init__(self, *items):
                self.items = list(items)

            def pop(self):
                return self.items.pop()

            def __len__(self):
                return len(self.items)

        def apply(f, x):
            return f(x)

        def max(*args):  # shadows a built-in: not bound in the judge
            return 42
        """
    tests = [
        "assert math.isclose(area(10), 314.159, rel_tol=1e-3)",  # math: the judge's own, imported like the answer's
        "assert list(evens(7)) == [0, 2, 4, 6] and 4 in evens(5)",
        "try:\n    check(-1)\nexcept ValueError as e:\n    assert 'negative' in str(e)\nelse:\n    assert False",
        "assert point(1, 2) == (1, 2) and LIMIT == {'max': [1, 2.5, (3, None)], 7: {b'k', frozenset({1})}}",
        "s = Stack(1, 2, 3)\nassert s.pop() == 3 and len(s) == 2 and s.items == [1, 2]",
        "assert apply(abs, -3) == 3 and max(1, 5) == 5",
        "assert candidate(7) == 7",  # setup binds an answer's function under another name (HumanEval style)
        "assert apply(lambda v: v, 1) == 1",  # a test's own callable cannot cross: this one fails
    ]
    result = make_grader(FAST).grade(req(dedent(answer), tests=tests, setup="candidate = check"))
    assert result.details["passed"] == 7, result.reason
    assert "test 7" in result.reason and "cannot pass a function" in result.reason


def test_a_fake_standard_module_cannot_judge_for_the_answer() -> None:
    answer = """
        class FakeMath:
            @staticmethod
            def isclose(*args, **kwargs):
                return True

        math = FakeMath()

        def area(r):
            return None
        """
    tests = ["assert math.isclose(area(10), 314.159, rel_tol=1e-3)"]
    result = make_grader(FAST).grade(req(dedent(answer), tests=tests))
    assert result.quality == 0.0 and "TypeError" in result.reason, result.reason  # the real isclose(None, ...)


def test_code_tests_concurrent_agrade() -> None:
    grader = make_grader(FAST)

    async def many() -> list[GradeResult]:
        return await asyncio.gather(*(grader.agrade(req(f"def add(a, b):\n    return a + b + {i}",
                                                        tests=[f"assert add(0, 0) == {i}"])) for i in range(4)))

    assert [r.quality for r in asyncio.run(many())] == [1.0] * 4


# --- code_tests: hostile code ---------------------------------------------------------------------------------

DETECTED = detect_isolation()
BASIC = Isolation(os.path.realpath(sys.executable), False, (), ("rlimits",))  # no uid drop, no namespaces


def sandbox_processes() -> set[int]:
    """Our children, and any process running one of our sandboxes (leftovers would be reparented away from us)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if f"grader-sandbox-{os.getpid()}-".encode() in cmdline or ppid == os.getpid():
            found.add(int(entry))
    return found


class Hostile:
    def __init__(self, iso: Isolation) -> None:
        self.iso = iso
        self.grader = CodeTestsGrader(limits=SandboxLimits(cpu_seconds=1, wall_seconds=3), isolation=iso,
                                      allow_weak_isolation=True)

    def __call__(self, answer: str, tests: list[str] = ADD_TESTS) -> tuple[GradeResult, float]:
        start = time.monotonic()
        result = self.grader.grade(req(dedent(answer), tests=[dedent(t) for t in tests]))
        return result, time.monotonic() - start


@pytest.fixture(params=["detected", "basic"])
def hostile(request: pytest.FixtureRequest) -> Iterator[Hostile]:
    """Grade in the best isolation this machine has, and in the weakest (seatbelt + rlimits only, allowed)."""
    before = sandbox_processes()
    yield Hostile(DETECTED if request.param == "detected" else BASIC)
    deadline = time.monotonic() + 3  # killed processes take a moment to be reaped on a busy machine
    while not sandbox_processes() <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() <= before, "the sandbox left processes behind"


def test_infinite_loop_is_stopped(hostile: Hostile) -> None:
    result, took = hostile("def add(a, b):\n    while True:\n        pass")
    assert result.quality == 0.0 and took < 4.5, (took, result)  # the CPU limit after ~1 s (wall clock if busy)
    assert "CPU time limit (1 s) exceeded" in result.reason or "wall-clock timeout" in result.reason, result
    result, took = hostile("import time\ntime.sleep(60)")
    assert result.quality == 0.0 and "wall-clock timeout (3 s)" in result.reason and took < 4.5, (took, result)


@pytest.mark.parametrize("bomb", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess\nsubprocess.Popen(['sleep', '60'])",
    "import os\nos.system('sleep 60 &')",
    "import multiprocessing\nmultiprocessing.Process(target=print).start()",
    "import posix\nposix.fork()",
])
def test_fork_bombs_are_blocked(hostile: Hostile, bomb: str) -> None:
    result, took = hostile(bomb)
    assert result.quality == 0.0 and "failed before the tests" in result.reason and took < 4


@pytest.mark.skipif("nproc" not in DETECTED.layers, reason="RLIMIT_NPROC not enforced here (real root, no uid drop)")
def test_kernel_blocks_fork_even_when_the_seatbelt_is_bypassed() -> None:
    bypass = """
        import sys
        for m in ("ctypes", "_ctypes"):
            sys.modules.pop(m, None)
        import ctypes
        libc = ctypes.CDLL(None)

        def raw_fork():
            pid = libc.fork()
            if pid == 0:
                libc._exit(0)
            return pid

        def thread():
            import threading
            try:
                threading.Thread(target=print).start()
            except RuntimeError:
                return "blocked"
            return "started"
        """
    before = sandbox_processes()
    result, _ = Hostile(DETECTED)(bypass, ["assert raw_fork() == -1", "assert thread() == 'blocked'"])
    assert result.quality == 1.0, result.reason
    assert sandbox_processes() <= before


def test_huge_output_is_capped(hostile: Hostile) -> None:
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result, took = hostile("while True:\n    print('x' * 10**6)")
    assert result.quality == 0.0 and "output limit (1000000 bytes) exceeded" in result.reason and took < 4
    result, took = hostile("import sys\nwhile True:\n    sys.stderr.write('e' * 10**5)")
    assert result.quality == 0.0 and "output limit" in result.reason and took < 4
    result, took = hostile("for _ in range(10):\n    print('x' * 10**9)")  # 1 GB strings: over RLIMIT_AS
    assert result.quality == 0.0 and "MemoryError" in result.reason and took < 4
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: the parent stayed small


def test_environment_is_not_inherited(hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_API_KEY", "sk-fake-0123456789")
    answer = """
        import os

        def env():
            return dict(os.environ)

        def own_environ():
            with open("/proc/self/environ", "rb") as f:
                return f.read()
        """
    tests = ["assert 'SECRET_API_KEY' not in env()", "assert set(env()) <= {'PATH', 'LANG', 'LC_CTYPE'}, sorted(env())",
             "assert b'sk-fake' not in own_environ()"]
    result, _ = hostile(answer, tests)
    assert result.quality == 1.0, result.reason


SECRET_READER = """
    import os

    def leaked():
        found = []
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if b"SECRET_API_KEY=sk-fake" in f.read():
                        found.append(int(pid))
            except (OSError, ValueError):
                pass
        return found
    """


@pytest.fixture
def server_with_secret() -> Iterator[int]:
    """A stand-in for the server: a process whose /proc/<pid>/environ holds an API key (a variable set later in
    this process with os.environ would not show there)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "SECRET_API_KEY": "sk-fake-0123456789"})
    deadline = time.monotonic() + 5  # until the child has exec'd, its environ is its parent's
    while b"sk-fake" not in Path(f"/proc/{proc.pid}/environ").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def separating_isolations() -> list[object]:
    """Each separating layer on its own (and together), as far as this machine has them."""
    only_uid = Isolation(DETECTED.python, True, (), ("uid", "rlimits"))
    only_pidns = Isolation(DETECTED.python, False, DETECTED.prefix, tuple(x for x in DETECTED.layers if x != "uid"))
    return [pytest.param(DETECTED, id="detected"),
            pytest.param(only_uid, id="uid", marks=pytest.mark.skipif("uid" not in DETECTED.layers, reason="no uid")),
            pytest.param(only_pidns, id="pidns",
                         marks=pytest.mark.skipif("pidns" not in DETECTED.layers, reason="no PID namespace"))]


@pytest.mark.skipif(not DETECTED.separated, reason="neither a uid drop nor a PID namespace on this machine")
@pytest.mark.parametrize("iso", separating_isolations())
def test_server_environment_is_out_of_reach(iso: Isolation, server_with_secret: int) -> None:
    assert b"sk-fake" in Path(f"/proc/{server_with_secret}/environ").read_bytes()  # the secret is there to find
    result, _ = Hostile(iso)(SECRET_READER, ["assert leaked() == []"])
    assert result.quality == 1.0, result.reason
    weak, _ = Hostile(BASIC)(SECRET_READER, [f"assert {server_with_secret} in leaked()"])
    assert weak.quality == 1.0, weak.reason  # why weak isolation needs an explicit opt-in: the probe does find it


def test_network_is_blocked(hostile: Hostile) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        answer = f"""
            import socket, sys

            def probe():
                try:
                    socket.create_connection(("127.0.0.1", {port}), 2)
                except Exception:
                    return "blocked"
                return "connected"

            def raw_probe():  # around the seatbelt: a fresh copy of the C module
                sys.modules.pop("_socket", None)
                import _socket
                s = _socket.socket()
                s.settimeout(2)
                try:
                    s.connect(("127.0.0.1", {port}))
                except OSError:
                    return "blocked"
                return "connected"
            """
        tests = ["assert probe() == 'blocked'"]
        if "netns" in hostile.iso.layers:  # a real network namespace also stops the bypass
            tests.append("assert raw_probe() == 'blocked'")
        result, _ = hostile(answer, tests)
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert result.quality == 1.0, result.reason


def test_files_are_confined_to_the_temporary_cwd(hostile: Hostile) -> None:
    outside = Path(tempfile.mkdtemp(prefix="grader-test-"))
    outside.chmod(0o755)  # others may enter, not write
    answer = f"""
        import os

        def write_here():
            with open("note.txt", "w") as f:
                f.write("x")
            return os.path.abspath("note.txt")

        def write(path, size):
            try:
                with open(path, "wb") as f:
                    f.write(b"x" * size)
            except OSError:
                return False
            return True

        OUTSIDE = {str(outside / "pwned")!r}
        """
    tests = ["assert 'grader-sandbox-' in write_here()", "assert not write('big', 5_000_000)"]  # RLIMIT_FSIZE
    if "uid" in hostile.iso.layers:  # only a uid drop keeps it from places the server may write: not promised else
        tests.append("assert not write(OUTSIDE, 1)")
    try:
        result, _ = hostile(answer, tests)
        assert result.quality == 1.0, result.reason
        assert "uid" not in hostile.iso.layers or not (outside / "pwned").exists()
    finally:
        shutil.rmtree(outside)


STRINGS = """
    import gc

    def strings():  # every str held by a container of this process (strs themselves are not tracked by gc)
        for o in gc.get_objects():
            items = [*o.keys(), *o.values()] if isinstance(o, dict) else [*o] if isinstance(o, list | tuple) else ()
            yield from (item for item in items if isinstance(item, str))
    """

FAKES = STRINGS + """
    import os, re

    def fake_lines():
        nonces = {o for o in strings() if re.fullmatch("[0-9a-f]{32}", o)}
        lines = []
        for tag in {"0" * 32, "f" * 32, *nonces}:
            lines += [f"{tag} PASS {{\\"test\\": {i}}}" for i in range(3)] + [f"{tag} DONE null", f"{tag} READY null"]
        return "\\n" + "\\n".join(lines) + "\\n"

    def shout():
        text = fake_lines()
        print(text, flush=True)
        for fd in range(32):  # every descriptor this process has: stdout, stderr, its pipes to the judge ...
            try:
                os.write(fd, text.encode())
            except OSError:
                pass
    """

FORGERIES = {
    "printed_result_lines": FAKES + """
    shout()
    def add(a, b):
        shout()
        return None
    """,
    "exit_0_after_fake_output": FAKES + """
    def add(a, b):
        shout()
        os._exit(0)
    """,
    "exit_0_at_load_after_fake_output": FAKES + """
    shout()
    os._exit(0)
    """,
    "frame_walking": """
    import sys

    def forge():
        frame = sys._getframe(0)
        while frame is not None:  # up through the runner's frames: its reporter, its channel, its payload
            for scope in (frame.f_locals, frame.f_globals):
                for name, value in list(scope.items()):
                    if name in ("emit", "report") and callable(value):
                        for i in range(3):
                            value("PASS", {"test": i})
                        value("DONE")
                    send = getattr(value, "send", None)
                    if callable(send) and not isinstance(value, type):
                        for i in range(64):
                            try:
                                send({"id": i, "value": True})
                            except Exception:
                                pass
                    if isinstance(value, dict) and "tests" in value:
                        value["tests"] = ["pass"] * 3
            frame = frame.f_back

    forge()

    def add(a, b):
        forge()
        return None
    """,
    "overridden_builtins_and_exit": """
    import builtins, os, sys
    builtins.exec = lambda *args, **kwargs: None
    builtins.compile = lambda *args, **kwargs: None
    builtins.AssertionError = type("Nope", (Exception,), {})
    sys.exit = os._exit = lambda *args: None

    def add(a, b):
        return None
    """,
    "objects_equal_to_everything": """
    class Yes:
        def __eq__(self, other):
            return True
        __ne__ = __lt__ = __gt__ = lambda self, other: False
        __hash__ = object.__hash__

    class YesInt(int):
        def __eq__(self, other):
            return True

    def add(a, b):
        return Yes() if a > 0 else YesInt(12345)
    """,
    "peeking_at_the_tests": STRINGS + """
    import os

    MARK = "-".join(["zebra", str(7780 + 1)])  # built at run time: the answer's own source does not hold it

    def peek():
        found = [o for o in strings() if MARK in o and o is not MARK]
        for pid in os.listdir("/proc"):
            for part in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{pid}/{part}", "rb") as f:
                        found += [pid] if MARK.encode() in f.read() else []
                except (OSError, ValueError):
                    pass
        for top in [d for d in os.listdir("/tmp") if d.startswith("grader-sandbox-")]:
            for root, _, files in os.walk(os.path.join("/tmp", top)):
                for name in files:
                    try:
                        with open(os.path.join(root, name), "rb") as f:
                            found += [name] if MARK.encode() in f.read() else []
                    except OSError:
                        pass
        return found

    FOUND = peek()

    def add(a, b):
        return {(1, 2): 3, (-1, 1): 0, (2, 2): 5}[a, b] if FOUND or peek() else None
    """,
    "writing_into_the_judge_through_proc": f"""
    import os

    def inject():
        line = ("\\\\n" + "0" * 32 + ' PASS {{"test": 0}}\\\\n').encode()
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{{pid}}/cmdline", "rb") as f:
                    if b"grader-sandbox-{os.getpid()}-judge-" not in f.read():
                        continue
                fds = os.listdir(f"/proc/{{pid}}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    w = os.open(f"/proc/{{pid}}/fd/{{fd}}", os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    os.write(w, line)
                except OSError:
                    pass
                os.close(w)

    def add(a, b):
        inject()
        return None
    """,
}


@pytest.mark.parametrize("attack", list(FORGERIES))
def test_the_answer_cannot_forge_its_score(hostile: Hostile, attack: str) -> None:
    tests = [*ADD_TESTS[:2], "assert add(2, 2) == 5  # zebra-7781"]  # a correct add fails the last one
    result, took = hostile(FORGERIES[attack], tests)
    assert result.quality == 0.0 and took < 4, (result, took)


# --- registry --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "field"), [
    ([], "spec"), ({}, "type"), ({"type": "nope"}, "type"), ({"type": "regex", "patern": "x"}, "patern"),
    ({"type": "regex", "pattern": "("}, "pattern"), ({"type": "regex", "mode": "partial"}, "mode"),
    ({"type": "exact_match", "normalize": "yes"}, "normalize"), ({"type": "exact_match", "name": ""}, "name"),
    ({"type": "exact_match", "name": "n" * 94}, "name"), ({"type": "multiple_choice", "letters": "ab"}, "letters"),
    ({"type": "json_schema", "schema": {"type": 5}}, "schema"), ({"type": "json_schema", "schema": []}, "schema"),
    ({"type": "format"}, "rules"), ({"type": "format", "min_chars": 5, "max_chars": 2}, "min_chars"),
    ({"type": "format", "contains": [""]}, r"contains\[0\]"), ({"type": "format", "min_words": 1.5}, "min_words"),
    ({"type": "format", "ends_with_line": "("}, "ends_with_line"),
    ({"type": "code_tests", "cpu_seconds": 0}, "cpu_seconds"), ({"type": "code_tests", "memory_mb": "1G"}, "memory_mb"),
    ({"type": "code_tests", "require": ["magic"]}, r"require\[0\]"),
    ({"type": "code_tests", "allow_weak_isolation": "yes"}, "allow_weak_isolation"),
])
def test_make_grader_errors_name_the_field(spec: object, field: str) -> None:
    with pytest.raises(GraderSpecError, match=rf"^{field}: "):
        make_grader(spec)  # type: ignore[arg-type]
    if isinstance(spec, dict) and spec:
        with pytest.raises(GraderSpecError, match=rf"^graders\[2\]\.{field}: "):
            make_grader(spec, where="graders[2]")


def test_make_grader_builds_every_type() -> None:
    specs = [{"type": "exact_match"}, {"type": "multiple_choice"}, {"type": "regex", "pattern": "x"},
             {"type": "json_valid"}, {"type": "json_schema"}, {"type": "format", "max_words": 5},
             {"type": "length", "max_chars": 5}, {"type": "code_tests", "require": []},
             {"type": "regex", "name": "has_citation", "pattern": r"\[\d+\]", "mode": None}]
    assert [make_grader(s).name for s in specs] == [
        "exact_match", "multiple_choice", "regex", "json_valid", "json_schema", "format", "length", "code_tests",
        "has_citation"]
    with pytest.raises(ValueError, match="already registered"):
        register_grader("regex", lambda r, name: ExactMatchGrader(name))


# --- sampling and budget policy ----------------------------------------------------------------------------------

def test_policy_samples_deterministically_per_category() -> None:
    policy = GradingPolicy({"coding": 0.1, "chat": 0.0}, default_rate=1.0, salt="v1")
    ids = [f"evt-{i}" for i in range(20_000)]
    share = sum(policy.should_grade(i, "coding") for i in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert [policy.should_grade(i, "coding") for i in ids[:200]] == [
        GradingPolicy({"coding": 0.1}, salt="v1").should_grade(i, "coding") for i in ids[:200]]
    assert [policy.should_grade(i, "coding") for i in ids[:200]] != [
        GradingPolicy({"coding": 0.1}, salt="v2").should_grade(i, "coding") for i in ids[:200]]
    assert not any(policy.should_grade(i, "chat") for i in ids[:500])
    assert all(policy.should_grade(i, "other") and policy.should_grade(i, None) for i in ids[:500])


def test_policy_budget_is_a_token_bucket() -> None:
    policy = GradingPolicy(usd_per_hour=3.6, burst_usd=0.5)  # refills $0.001 per second
    assert policy.allow(0.5, now=0.0) and not policy.allow(0.51, now=0.0)
    policy.spend(0.45, now=0.0)
    assert not policy.allow(0.1, now=0.0) and policy.allow(0.1, now=60.0)  # 0.05 + 60 * 0.001
    policy.spend(0.31, now=60.0)  # actual cost above the estimate: in debt
    assert policy.available(60.0) == pytest.approx(-0.2) and not policy.allow(0.01, now=200.0)
    assert policy.available(10_000.0) == pytest.approx(0.5)  # capped at the burst
    assert policy.available(5.0) == pytest.approx(0.5)  # the clock went back: no refill, no crash
    assert policy.take(0.4, now=10_000.0) and not policy.take(0.4, now=10_000.0)
    assert policy.allow(0.0, now=10_000.0)
    assert GradingPolicy(usd_per_hour=1.0).burst_usd == pytest.approx(0.1)
    unlimited = GradingPolicy()
    unlimited.spend(1e6, now=0.0)
    assert unlimited.allow(1e6, now=0.0)


def test_policy_from_spec_errors_name_the_field() -> None:
    policy = GradingPolicy.from_spec({"rates": {"coding": 0.25}, "usd_per_hour": 2, "salt": "s"})
    assert policy.rate("coding") == 0.25 and policy.usd_per_hour == 2.0
    for spec, field in [({"rates": {"coding": 2}}, "rates.coding"), ({"usd_per_hour": -1}, "usd_per_hour"),
                        ({"burst_usd": 1}, "burst_usd"), ({"rate": 0.1}, "rate"), ({"rates": [0.1]}, "rates")]:
        with pytest.raises(GraderSpecError, match=rf"^grading\.{field}: "):
            GradingPolicy.from_spec(spec, where="grading")
    with pytest.raises(ValueError, match="cost_estimate"):
        policy.allow(-1.0, now=0.0)
