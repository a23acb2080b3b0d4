"""Trusted runner executed INSIDE the sandbox child (``python -I -S _runner.py``); stdlib only, never imported.

Order matters: read and delete the payload, lower the resource limits, install the seatbelt, report READY,
and only then compile and run the untrusted code, then each test case on its own. Results go out as lines
``<nonce> <WORD> <json>`` on a private duplicate of stdout; the nonce is random per run, so the answer cannot
forge results by printing them (it could only by introspecting this interpreter: see sandbox.py).
"""

import json
import os
import sys


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:300]


def _limits(spec: dict) -> dict:
    import resource

    applied = {}
    for name, value in spec.items():
        try:
            resource.setrlimit(getattr(resource, name), tuple(value))
            applied[name] = True
        except (AttributeError, ValueError, OSError):
            applied[name] = False
    return applied


def _seatbelt() -> None:
    """Python-level blocks on process creation, signals and sockets. Bypassable (ctypes, re-imports): the
    kernel limits and namespaces are the boundary; this turns the common cases into a clean PermissionError."""
    import _posixsubprocess
    import _socket
    import posix
    import socket
    import subprocess

    def deny(*_args: object, **_kwargs: object) -> None:
        raise PermissionError("blocked by the grader sandbox")

    names = ("fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "kill", "killpg", "setsid", "setpgid",
             "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
             "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe")
    for module in (os, posix):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, deny)
    _posixsubprocess.fork_exec = deny
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, deny)
    for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        setattr(socket, name, deny)
    for name in ("socket", "socketpair", "getaddrinfo"):
        setattr(_socket, name, deny)
    for name in ("ctypes", "_ctypes", "multiprocessing", "_multiprocessing", "pty"):
        sys.modules[name] = None  # type: ignore[assignment]  # "import ctypes" now raises ImportError


def _main() -> None:
    with open("_payload.json", "rb") as f:
        payload = json.loads(f.read())
    os.unlink("_payload.json")
    out, tag, write, dumps = os.dup(1), payload["nonce"], os.write, json.dumps  # bound before the answer runs

    def emit(word: str, data: object = None) -> None:
        write(out, f"\n{tag} {word} {dumps(data)}\n".encode("utf-8", "replace"))

    emit("LIMITS", _limits(payload["limits"]))
    _seatbelt()
    emit("READY")
    namespace: dict = {"__name__": "__answer__", "__builtins__": __builtins__}
    try:
        code = compile(payload["code"], "<answer>", "exec")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        emit("SYNTAX", {"line": line, "error": _describe(exc)})
        return
    try:
        exec(code, namespace)
        if payload["setup"]:
            exec(compile(payload["setup"], "<setup>", "exec"), namespace)
    except BaseException as exc:  # SystemExit and the like count against the answer too
        emit("CRASH", _describe(exc))
        return
    for i, test in enumerate(payload["tests"]):
        try:
            exec(compile(test, f"<test {i}>", "exec"), namespace)
        except BaseException as exc:
            emit("FAIL", {"test": i, "error": _describe(exc)})
        else:
            emit("PASS", {"test": i})
    emit("DONE")


if __name__ == "__main__":  # run as a script by the sandbox; importing this module does nothing
    _main()
