"""Run untrusted Python (a model's answer plus test cases) in a separate, confined subprocess.

The kernel-level layers (a fresh unprivileged uid, network and PID namespaces, RLIMIT_NPROC) are probed by
:mod:`feedback.graders.isolation`, and every run reports which were in force. Always, on top: rlimits (CPU
seconds, address space, file size, open files, no core dumps) set by the trusted runner before the answer
runs; an environment of ``PATH`` and ``LANG`` only, nothing inherited from the server; ``python -I -S`` (no
site-packages, no user site, no PYTHON* variables); cwd a fresh temporary directory, deleted afterwards; stdin
``/dev/null``; stdout+stderr read up to a cap (the process group is killed when the answer goes over); a
wall-clock deadline (``SIGKILL`` to the whole process group); and a Python seatbelt that makes
fork/exec/subprocess/socket/ctypes raise ``PermissionError``/``ImportError``.

What is NOT promised: the file system is confined only by cwd, the uid's permissions and RLIMIT_FSIZE (per
file). World-writable directories (``/tmp``, ``/dev/shm``) stay writable and files left there are not
cleaned up; without the ``uid`` layer the child can write wherever the server can. The seatbelt is bypassable
by a deliberately hostile program (ctypes, re-imports), which is why the kernel layers exist; the result
nonce stops printed fakes, not a program that inspects its own interpreter to find it.

``resource`` limits are applied by the runner inside the child rather than through ``preexec_fn``, which is
unsafe in a threaded parent (the service grades from worker threads); the runner sets them before any
untrusted line runs.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from feedback.graders.isolation import ENV, Isolation, detect_isolation, fresh_uid, user_kwargs

__all__ = ["RUNNER_NAME", "SandboxError", "SandboxLimits", "SandboxRun", "run_python_tests"]

_RUNNER: Final = Path(__file__).with_name("_sandbox_runner.py")
RUNNER_NAME: Final = "grader_sandbox_runner.py"  # its name in the child's cwd (and argv)


class SandboxError(RuntimeError):
    """The sandbox itself failed (could not start, no runner output): the grader's fault, not the answer's."""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Per-run limits. ``cpu_seconds`` is CPU time (RLIMIT_CPU, rounded up); ``wall_seconds`` wall-clock time."""

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
class SandboxRun:
    """Raw outcome of one run; ``stdout``/``stderr`` hold at most ``max_output_bytes`` together."""

    nonce: str
    isolation: Isolation
    stdout: bytes = b""
    stderr: bytes = b""
    returncode: int | None = None
    timed_out: bool = False
    output_exceeded: bool = False
    elapsed: float = 0.0
    cpu_seconds: float = 0.0


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


def _collect(proc: subprocess.Popen[bytes], run: SandboxRun, limits: SandboxLimits, deadline: float) -> str:
    """Read stdout/stderr until EOF, the output cap, the DONE line or the deadline, whichever comes first."""
    assert proc.stdout is not None and proc.stderr is not None
    done_tag = f"\n{run.nonce} DONE".encode()
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    total = 0
    with selectors.DefaultSelector() as sel:
        for fd in buffers:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                run.timed_out = True
                _store(run, proc, buffers)
                return "timeout"
            for key, _ in sel.select(remaining):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                keep = min(len(chunk), limits.max_output_bytes - total)
                buffers[fd] += chunk[:keep]
                total += len(chunk)
                if total > limits.max_output_bytes:
                    run.output_exceeded = True
                    _store(run, proc, buffers)
                    return "output"
                if fd == proc.stdout.fileno() and done_tag in buffers[fd][-len(chunk) - len(done_tag):]:
                    _store(run, proc, buffers)
                    return "done"
    _store(run, proc, buffers)
    return "eof"


def _store(run: SandboxRun, proc: subprocess.Popen[bytes], buffers: dict[int, bytearray]) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    run.stdout = bytes(buffers[proc.stdout.fileno()])
    run.stderr = bytes(buffers[proc.stderr.fileno()])


def run_python_tests(code: str, tests: list[str], *, setup: str = "", limits: SandboxLimits | None = None,
                     isolation: Isolation | None = None) -> SandboxRun:
    """Run ``code``, then ``setup``, then each test statement, in one confined child; see the module doc.

    Returns the raw outcome; the runner's protocol lines (``<nonce> WORD json``) are in ``stdout``.
    Raises :class:`SandboxError` if the child could not be started.
    """
    if os.name != "posix":
        raise SandboxError(f"code sandbox needs a POSIX system, not {os.name}")
    limits = limits or SandboxLimits()
    iso = isolation or detect_isolation()
    run = SandboxRun(nonce=secrets.token_hex(16), isolation=iso)
    uid = fresh_uid() if iso.drop_uid else None
    payload = {"nonce": run.nonce, "code": code, "setup": setup, "tests": tests, "limits": limits.rlimits()}
    # the server's pid in the name (and so in the child's argv) tells whose sandbox a process is
    with tempfile.TemporaryDirectory(prefix=f"grader-sandbox-{os.getpid()}-", ignore_cleanup_errors=True) as tmp:
        runner, data = Path(tmp, RUNNER_NAME), Path(tmp, "_payload.json")
        runner.write_bytes(_RUNNER.read_bytes())
        runner.chmod(0o644)
        data.write_text(json.dumps(payload), encoding="utf-8")
        data.chmod(0o600)
        if uid is not None:
            os.chown(tmp, uid, uid)
            os.chown(data, uid, uid)
        argv = [*iso.prefix, iso.python, "-I", "-S", "-B", str(runner)]
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=tmp, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                    **user_kwargs(uid))
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"could not start the sandbox: {exc}") from None
        with proc:
            try:
                if _collect(proc, run, limits, start + limits.wall_seconds) == "eof":
                    run.timed_out = not _exited(proc.pid, start + limits.wall_seconds)
            finally:
                # kill the whole group before reaping: the leader's pid (= pgid) cannot be reused meanwhile
                _killpg(proc.pid)
                try:
                    _, status, usage = os.wait4(proc.pid, 0)  # rusage includes the reaped descendants
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    run.cpu_seconds = usage.ru_utime + usage.ru_stime
                except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored by the host process)
                    proc.returncode = -signal.SIGKILL
        run.returncode = proc.returncode
        run.elapsed = time.monotonic() - start
    return run
