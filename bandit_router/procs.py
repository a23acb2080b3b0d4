"""Starting and stopping the router and simulator as real processes (the demo and tests use it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

CLI = [sys.executable, "-m", "bandit_router.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200, or fail with the process's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = getattr(proc, "stderr_log", None)
            err = proc.stderr.read() if proc.stderr else ""
            if log is not None:
                log.seek(0)
                err = log.read()
            raise RuntimeError(f"process exited with {proc.returncode}: {err}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


def start(args: Sequence[str], health_url: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Run ``bandit-router *args`` and wait for ``health_url``; ``env`` is added to this process's
    environment (e.g. ``{"BANDIT_ROUTER_ADMIN_TOKEN": token}``). The child's stderr is kept in a
    temporary file: :func:`stderr_text` reads it."""
    # stderr goes to a file, not a pipe nobody reads: a chatty child would block on a full pipe
    log = tempfile.TemporaryFile(mode="w+")
    child_env = {**os.environ, **env} if env is not None else None
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=log, text=True, env=child_env)
    proc.stderr_log = log  # type: ignore[attr-defined]
    try:
        wait_http(health_url, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stderr_text(proc: subprocess.Popen) -> str:
    """What a process started by :func:`start` has written to stderr so far (read without moving
    the file offset the child shares, so it may still be running)."""
    log = getattr(proc, "stderr_log", None)
    if log is None:
        return proc.stderr.read() if proc.stderr else ""
    fd = log.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")
