"""Run untrusted Python (a model's answer) against test cases in two separate, confined subprocesses.

**Who decides pass or fail.** Whatever runs in the same process as the answer's code can be forged by it:
it can walk the stack to the runner's reporting function, monkeypatch it or the builtins, print fake result
lines, ``os._exit(0)`` after them, or return an object whose ``__eq__`` always says yes. So the verdict is
taken in a process the answer's code never runs in:

* the **answer** child runs the answer's code and then only serves requests (call ``add`` with ``(1, 2)``,
  read an attribute, iterate, ...). It never receives a test: only the arguments a test passes in.
* the **judge** child runs ``setup`` and the test statements, with the answer's names bound to proxies that
  forward those requests over a pipe pair. Results come back as copies of plain data (numbers, strings,
  containers; other objects stay behind as handles), so comparisons, ``isclose`` and the like run on the
  judge's own values. Proxies never forward ``==`` or arithmetic: the answer never sees an expected value.
* the judge reports per-test PASS/FAIL on a third pipe that only the parent reads (lines carry a random
  nonce). The answer has no descriptor of that pipe, and cannot reach the judge's process: each child has
  its own fresh uid (``uid`` layer: no ptrace, no ``/proc/<judge>/fd``) and/or its own PID namespace
  (``pidns``: the judge is invisible). Payloads and the runner's source go in on stdin, never through files.
  With neither layer (``allow_weak_isolation``) a hostile answer running as the server's uid can attack the
  judge through ``/proc`` -- and read the server's secrets -- which is why the grader refuses that default.

See ``_sandbox_runner.py`` for the protocol. Tests that need the answer's objects to be mutated in place
(``f(lst); assert lst == ...``) or to receive callables defined by the test are not supported.

**Confinement of both children.** The kernel-level layers (a fresh unprivileged uid each, network and PID
namespaces, RLIMIT_NPROC) are probed by :mod:`feedback.graders.isolation`, and every run reports which were in
force. Always, on top: rlimits (CPU seconds, address space, file size, open files, no core dumps) set by the
trusted runner before the answer runs; an environment of ``PATH`` and ``LANG`` only; ``python -I -S`` (no
site-packages, no user site, no PYTHON* variables); cwd a fresh temporary directory per child, deleted
afterwards; stdin at ``/dev/null`` once the payload is read; stdout+stderr of both read up to a shared cap (the
process groups are killed when it is exceeded); a wall-clock deadline (``SIGKILL`` to both process groups);
and a Python seatbelt that makes fork/exec/subprocess/socket/ctypes raise ``PermissionError``/``ImportError``.

What is NOT promised: the file system is confined only by cwd, the uid's permissions and RLIMIT_FSIZE (per
file). World-writable directories (``/tmp``, ``/dev/shm``) stay writable and files left there are not
cleaned up; without the ``uid`` layer the child can write wherever the server can. The seatbelt is bypassable
by a deliberately hostile program (ctypes, re-imports), which is why the kernel layers exist.

``resource`` limits are applied by the runner inside each child rather than through ``preexec_fn``, which is
unsafe in a threaded parent (the service grades from worker threads).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from feedback.graders.isolation import ENV, Isolation, detect_isolation, fresh_uid, user_kwargs

__all__ = ["ChildRun", "SandboxError", "SandboxLimits", "SandboxRun", "run_python_tests"]

_RUNNER: Final = Path(__file__).with_name("_sandbox_runner.py")
#: run by ``python -c`` in each child: the runner's source and the payload arrive on stdin
_BOOT: Final = ("import json, sys\npayload = json.loads(sys.stdin.buffer.read())\n"
                "scope = {'__name__': 'grader_sandbox_runner', '__builtins__': __builtins__}\n"
                "exec(compile(payload.pop('runner'), 'grader_sandbox_runner.py', 'exec'), scope)\n"
                "scope['main'](payload)\n")
_CHUNK: Final = 65536
_GRACE: Final = 1.0  # seconds to let a dead answer's wrapper exit, so its CPU time is accounted


class SandboxError(RuntimeError):
    """The sandbox itself failed (could not start): the grader's fault, not the answer's."""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Per-child limits. ``cpu_seconds`` is CPU time (RLIMIT_CPU, rounded up); ``wall_seconds`` wall-clock time
    for the whole run; ``max_output_bytes`` caps stdout+stderr of both children together."""

    cpu_seconds: float = 5.0
    wall_seconds: float = 10.0
    memory_bytes: int = 256 * 2**20
    max_output_bytes: int = 1_000_000
    max_file_bytes: int = 1_000_000
    max_open_files: int = 64

    def rlimits(self) -> dict[str, tuple[int, int]]:
        cpu = max(1, math.ceil(self.cpu_seconds))
        # soft == hard: SIGKILL at the limit (a SIGXCPU would be ignored by pid 1 of a PID namespace)
        return {"RLIMIT_CPU": (cpu, cpu), "RLIMIT_AS": (self.memory_bytes, self.memory_bytes),
                "RLIMIT_FSIZE": (self.max_file_bytes, self.max_file_bytes),
                "RLIMIT_NOFILE": (self.max_open_files, self.max_open_files),
                "RLIMIT_NPROC": (1, 1), "RLIMIT_CORE": (0, 0)}


@dataclass(slots=True)
class ChildRun:
    """What one child left: its output (within the shared cap), exit status and CPU time."""

    role: str
    stdout: bytes = b""
    stderr: bytes = b""
    returncode: int | None = None
    cpu_seconds: float = 0.0


@dataclass(slots=True)
class SandboxRun:
    """Raw outcome of one run: the judge's ``events`` (``(WORD, data)`` in order) and both children."""

    isolation: Isolation
    answer: ChildRun = field(default_factory=lambda: ChildRun("answer"))
    judge: ChildRun = field(default_factory=lambda: ChildRun("judge"))
    events: list[tuple[str, Any]] = field(default_factory=list)
    timed_out: bool = False
    output_exceeded: bool = False
    elapsed: float = 0.0

    @property
    def words(self) -> set[str]:
        return {word for word, _ in self.events}


class _Fds:
    """The pipe ends the parent holds; every one is closed exactly once."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.open.update((r, w))
        return r, w

    def close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self.open:
                self.open.discard(fd)
                os.close(fd)

    def close_all(self) -> None:
        self.close(*list(self.open))


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(pid: int, deadline: float) -> bool:
    """Wait (without reaping, so the pid stays ours) until ``pid`` has exited; ``False`` at the deadline."""
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        time.sleep(0.005)
    return False


def _reap(procs: list[tuple[subprocess.Popen[bytes], ChildRun]]) -> None:
    for proc, _ in procs:  # kill every group before reaping: a leader's pid (= pgid) cannot be reused meanwhile
        _killpg(proc.pid)
    for proc, child in procs:
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage includes the reaped descendants
            proc.returncode = os.waitstatus_to_exitcode(status)
            child.cpu_seconds = usage.ru_utime + usage.ru_stime
        except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored by the host process)
            proc.returncode = -signal.SIGKILL
        child.returncode = proc.returncode


def _parse(report: bytes, nonce: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    tag = nonce + " "
    for line in report.decode("utf-8", "replace").split("\n")[:-1]:  # complete lines only
        if line.startswith(tag):
            word, _, data = line[len(tag):].partition(" ")
            try:
                events.append((word, json.loads(data) if data else None))
            except ValueError:
                continue
    return events


def _pump(run: SandboxRun, limits: SandboxLimits, deadline: float, feeds: dict[int, bytes],
          outputs: dict[int, tuple[ChildRun, str]], report_fd: int, nonce: str, report_cap: int, fds: _Fds) -> None:
    """Feed the payloads, read every output and the judge's report until DONE, the report's end of file,
    the output cap or the deadline, whichever comes first."""
    pending = {fd: memoryview(data) for fd, data in feeds.items()}
    buffers = {fd: bytearray() for fd in outputs}
    report, total, done = bytearray(), 0, f"\n{nonce} DONE".encode()
    with selectors.DefaultSelector() as sel:
        for fd in (*pending, *outputs, report_fd):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_WRITE if fd in pending else selectors.EVENT_READ)
        try:
            while report_fd in sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    run.timed_out = True
                    return
                for key, _ in sel.select(remaining):
                    fd = int(key.fd)
                    if fd in pending:
                        try:
                            sent = os.write(fd, pending[fd][:_CHUNK])
                        except BlockingIOError:
                            continue
                        except OSError:  # the child is gone; the report will say so
                            sent = len(pending[fd])
                        pending[fd] = pending[fd][sent:]
                        if not pending[fd]:
                            sel.unregister(fd)
                            fds.close(fd)  # end of file: the child's payload is complete
                        continue
                    try:
                        chunk = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(fd)
                    elif fd == report_fd:
                        report += chunk
                        if len(report) > report_cap or done in report[-len(chunk) - len(done) - 1:]:
                            return
                    else:
                        buffers[fd] += chunk[:max(0, limits.max_output_bytes - total)]
                        total += len(chunk)
                        if total > limits.max_output_bytes:
                            run.output_exceeded = True
                            return
        finally:
            run.events = _parse(bytes(report), nonce)
            for fd, (child, stream) in outputs.items():
                setattr(child, stream, bytes(buffers[fd]))


def run_python_tests(code: str, tests: list[str], *, setup: str = "", limits: SandboxLimits | None = None,
                     isolation: Isolation | None = None) -> SandboxRun:
    """Run ``code`` in one confined child, ``setup`` then each test statement in another; see the module doc.

    Returns the raw outcome (the judge's events, both children's output and status). Raises
    :class:`SandboxError` if a child could not be started.
    """
    if os.name != "posix":
        raise SandboxError(f"code sandbox needs a POSIX system, not {os.name}")
    limits = limits or SandboxLimits()
    iso = isolation or detect_isolation()
    run, nonce, fds = SandboxRun(iso), secrets.token_hex(16), _Fds()
    procs: list[tuple[subprocess.Popen[bytes], ChildRun]] = []
    common = {"runner": _RUNNER.read_text(encoding="utf-8"), "limits": limits.rlimits()}
    with ExitStack() as stack:
        # one cwd per child (the server's pid in the name, and in the child's argv, tells whose sandbox it is)
        markers = {role: f"grader-sandbox-{os.getpid()}-{role}-" for role in ("judge", "answer")}
        dirs = {role: stack.enter_context(tempfile.TemporaryDirectory(prefix=m, ignore_cleanup_errors=True))
                for role, m in markers.items()}
        stack.callback(fds.close_all)
        stack.callback(_reap, procs)  # on the way out: reap, close, then delete the directories
        to_answer, to_judge, report = fds.pipe(), fds.pipe(), fds.pipe()
        roles = {
            "judge": ({**common, "role": "judge", "rx": to_judge[0], "tx": to_answer[1], "report": report[1],
                       "nonce": nonce, "tests": tests, "setup": setup}, (to_judge[0], to_answer[1], report[1])),
            "answer": ({**common, "role": "answer", "rx": to_answer[0], "tx": to_judge[1], "code": code},
                       (to_answer[0], to_judge[1])),
        }
        feeds: dict[int, bytes] = {}
        outputs: dict[int, tuple[ChildRun, str]] = {}
        start = time.monotonic()
        for role, (payload, pass_fds) in roles.items():
            child = run.judge if role == "judge" else run.answer
            uid = fresh_uid() if iso.drop_uid else None  # one uid per child: neither can touch the other
            tmp, marker = dirs[role], markers[role]
            if uid is not None:
                os.chown(tmp, uid, uid)
            stdin, stdout, stderr = fds.pipe(), fds.pipe(), fds.pipe()
            argv = [*iso.prefix, iso.python, "-I", "-S", "-B", "-c", _BOOT, marker]
            try:
                proc = subprocess.Popen(argv, cwd=tmp, env=ENV, stdin=stdin[0], stdout=stdout[1], stderr=stderr[1],
                                        start_new_session=True, close_fds=True, pass_fds=pass_fds, **user_kwargs(uid))
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxError(f"could not start the sandbox: {exc}") from None
            procs.append((proc, child))
            fds.close(stdin[0], stdout[1], stderr[1], *pass_fds)  # the child's ends: end of file follows its exit
            feeds[stdin[1]] = json.dumps(payload).encode()
            outputs.update({stdout[0]: (child, "stdout"), stderr[0]: (child, "stderr")})
        _pump(run, limits, start + limits.wall_seconds, feeds, outputs, report[0], nonce,
              65536 + 4096 * len(tests), fds)
        if "GONE" in run.words or "ENDED" in run.words:  # let the dead answer's wrapper exit: its CPU time counts
            _exited(procs[1][0].pid, min(start + limits.wall_seconds, time.monotonic() + _GRACE))
    run.elapsed = time.monotonic() - start
    return run
