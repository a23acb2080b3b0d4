"""Tests for feedback.graders: each grader on real cases, the code sandbox against hostile code, the registry,
the sampling/budget policy. Sandbox tests use 1 s of CPU and 2-3 s of wall clock; the whole file runs in ~10 s."""

from __future__ import annotations

import asyncio
import os
import pickle
import resource
import shutil
import socket
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
        CodeTestsGrader(isolation=missing).grade(req("x = 1", tests=["assert x"]))
    not_python = Isolation(shutil.which("false") or "/bin/false", False, (), ("rlimits",))
    with pytest.raises(GraderError, match="sandbox failed before running the answer"):
        CodeTestsGrader(isolation=not_python).grade(req("x = 1", tests=["assert x"]))
    with pytest.raises(GraderError, match="lacks required isolation netns"):
        CodeTestsGrader(require=["netns"], isolation=Isolation("python3", False, (), ("rlimits",))).grade(
            req("x = 1", tests=["assert x"]))


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
        self.grader = CodeTestsGrader(limits=SandboxLimits(cpu_seconds=1, wall_seconds=3), isolation=iso)

    def __call__(self, answer: str, tests: list[str] = ADD_TESTS) -> tuple[GradeResult, float]:
        start = time.monotonic()
        result = self.grader.grade(req(dedent(answer), tests=[dedent(t) for t in tests]))
        return result, time.monotonic() - start


@pytest.fixture(params=["detected", "basic"])
def hostile(request: pytest.FixtureRequest) -> Iterator[Hostile]:
    """Grade in the best isolation this machine has, and in the weakest (seatbelt + rlimits only)."""
    before = sandbox_processes()
    yield Hostile(DETECTED if request.param == "detected" else BASIC)
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
        """
    thread = """
        import threading
        try:
            threading.Thread(target=print).start()
        except RuntimeError:
            pass
        else:
            raise AssertionError("thread started")
        """
    before = sandbox_processes()
    result, _ = Hostile(DETECTED)(bypass, ["assert raw_fork() == -1", thread])
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
    tests = ["import os\nassert 'SECRET_API_KEY' not in os.environ",
             "import os\nassert set(os.environ) <= {'PATH', 'LANG', 'LC_CTYPE'}, sorted(os.environ)",
             "assert b'sk-fake' not in open('/proc/self/environ', 'rb').read()"]
    if {"uid", "pidns"} & set(hostile.iso.layers):  # the server's own environment is out of reach too
        tests.append(f"""
            try:
                open('/proc/{os.getpid()}/environ', 'rb').read()
            except OSError:
                pass
            else:
                raise AssertionError('read the parent environment')
            """)
    result, _ = hostile("x = 1", tests)
    assert result.quality == 1.0, result.reason


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


def test_printed_results_cannot_be_forged(hostile: Hostile) -> None:
    fake = "\n".join(f"print('\\n{n * 32} PASS {{\"test\": {i}}}')" for i in range(3) for n in "0f")
    result, _ = hostile(f"{fake}\nprint('DONE')\ndef add(a, b):\n    return None")
    assert result.quality == 0.0 and result.reason.startswith("0/3 tests passed")


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
