"""Which isolation this machine gives the code sandbox: probed once per process, reported with every run.

Layers, strongest first; :func:`detect_isolation` probes once per process which of them work here, and every
run reports what it had (``Isolation.layers``):

* ``uid``   -- when the server runs as root, the child runs as a fresh random unprivileged uid/gid (no
  supplementary groups): it cannot read root-only files, signal or trace other processes, read their
  ``/proc/<pid>/environ``, or write outside world-writable places. Needs a same-version interpreter that
  this uid may execute (the running one, or e.g. ``/usr/bin/python3.X``).
* ``netns`` -- ``unshare --user --map-root-user --net``: a network namespace with only a downed loopback, so no
  connection of any kind (a listener on the host's 127.0.0.1 is unreachable).
* ``pidns`` -- ``--pid --fork --mount-proc``: its own PID namespace and ``/proc``; host processes are invisible
  (the probe checks that the child is pid 1 there).
* ``nproc`` -- RLIMIT_NPROC = 1, checked by a real fork attempt in the probe: no fork, no thread. The kernel
  does not enforce it for real root, so it is only listed when the probe saw a fork fail.

``uid`` and ``pidns`` are the *separating* layers (:attr:`Isolation.separated`): either keeps the answer away
from other processes -- the server's ``/proc/<pid>/environ`` (its API keys) and the sandbox's judge process.
The ``code_tests`` grader refuses to run without one unless configured with ``allow_weak_isolation``.

On top of these, always: see :mod:`feedback.graders.sandbox`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ENV", "SEPARATING", "Isolation", "detect_isolation", "fresh_uid", "user_kwargs"]

#: the child's whole environment: nothing is inherited from the server
ENV: Final = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_UID_BASE: Final = 1_500_000_000  # fresh uids far above any real account
_UID_SPAN: Final = 100_000_000
_PROBE_TIMEOUT: Final = 10.0
#: layers that keep the child away from other processes; one of them is required unless weak isolation is allowed
SEPARATING: Final = ("uid", "pidns")
_UNSHARE_VARIANTS: Final = (
    (("--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"), ("netns", "pidns")),
    (("--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc"), ("netns", "pidns")),
    (("--user", "--map-root-user", "--net"), ("netns",)),
)
_FORK_PROBE: Final = """import os, resource
resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
try:
    pid = os.fork()
except OSError:
    print("fork-blocked")
else:
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("fork-allowed")
"""


@dataclass(frozen=True, slots=True)
class Isolation:
    """What this machine allows: the interpreter, whether to drop to a fresh uid, the ``unshare`` prefix."""

    python: str
    drop_uid: bool
    prefix: tuple[str, ...]
    layers: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        return "+".join(self.layers)

    @property
    def separated(self) -> bool:
        """Whether a fresh uid or a PID namespace keeps the child away from the server and the judge."""
        return any(layer in self.layers for layer in SEPARATING)


def user_kwargs(uid: int | None) -> dict[str, Any]:
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


def fresh_uid() -> int:
    return _UID_BASE + secrets.randbelow(_UID_SPAN)


def _probe(argv: list[str], uid: int | None) -> str | None:
    try:
        done = subprocess.run(argv, env=ENV, cwd="/", stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=_PROBE_TIMEOUT, check=False, **user_kwargs(uid))
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode("utf-8", "replace").strip() if done.returncode == 0 else None


def _interpreters() -> list[str]:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = [os.path.realpath(sys.executable), os.path.realpath(getattr(sys, "_base_executable", sys.executable))]
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        path = shutil.which(f"python{version}", path=directory)
        if path:
            found.append(os.path.realpath(path))
    return list(dict.fromkeys(found))


def _detect() -> Isolation:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    check = ["-I", "-S", "-c", "import os, sys; print('%d.%d' % sys.version_info[:2], os.getpid())"]
    python, drop, notes = os.path.realpath(sys.executable), False, []
    if os.geteuid() == 0:
        for candidate in _interpreters():
            if (_probe([candidate, *check], fresh_uid()) or "").split(" ")[0] == version:
                python, drop = candidate, True
                break
        else:
            notes.append("running as root without a uid drop: no same-version interpreter runs as a fresh uid")
    uid = fresh_uid if drop else (lambda: None)
    prefix: tuple[str, ...] = ()
    layers = ["uid"] if drop else []
    unshare = shutil.which("unshare")
    for flags, adds in _UNSHARE_VARIANTS if unshare else ():
        seen = (_probe([unshare or "", *flags, python, *check], uid()) or "").split(" ")
        if seen[0] == version and ("pidns" not in adds or seen[1:] == ["1"]):
            prefix = (unshare or "", *flags)
            layers.extend(adds)
            break
    else:
        notes.append("unshare unavailable or refused: no network namespace")
    if _probe([*prefix, python, "-I", "-S", "-c", _FORK_PROBE], uid()) == "fork-blocked":
        layers.append("nproc")
    else:
        notes.append("RLIMIT_NPROC not enforced (real root): fork is blocked by the seatbelt only")
    layers.append("rlimits")
    return Isolation(python, drop, prefix, tuple(layers), tuple(notes))


_lock = threading.Lock()
_cached: Isolation | None = None


def detect_isolation(*, refresh: bool = False) -> Isolation:
    """The isolation this machine supports (probed once per process, about 0.1-0.3 s; thread-safe)."""
    global _cached
    with _lock:
        if _cached is None or refresh:
            _cached = _detect()
        return _cached
