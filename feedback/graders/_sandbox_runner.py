"""Trusted runner of the code sandbox, executed INSIDE each of its two children; stdlib only, never imported.

The parent (:mod:`feedback.graders.sandbox`, which explains the design) starts ``python -I -S -B -c BOOT``
twice, sends each child this source and its payload on stdin, and ``main(payload)`` runs in one role:

* ``answer`` -- limits, seatbelt, ``ready`` to the judge, and only then the answer's code; it reports what
  the code defined (``loaded``, or ``syntax``/``crash``) and serves the judge's requests until its pipe closes.
* ``judge`` -- limits, seatbelt, never a line of the answer: ``setup`` and each test run against
  :class:`Remote` proxies of the answer's names; it reports ``<nonce> WORD json`` lines (``READY``,
  ``SYNTAX``/``CRASH``/``ENDED``/``NOSTART``, ``GONE``, ``PASS``/``FAIL`` per test, ``DONE``) on a pipe only
  the parent reads.

Values cross as tagged JSON of plain data (a subclass of a built-in type arrives as that type); any other
object stays with the answer and the judge gets a handle. Proxies forward calls, attribute reads, iteration,
``len``, indexing, truth and ``repr``; never a comparison or arithmetic, whose other operand would be the
expected value (``==`` on a proxy is identity).
"""

import builtins
import importlib
import json
import os
import sys

MAX_MESSAGE = 4 << 20  # bytes of one message between the children (longer: the answer broke the protocol)
MAX_INLINE = 256 << 10  # a top-level value of the answer larger than this (as JSON) is sent as a handle
_BUILD = {"l": list, "t": tuple, "s": set, "fs": frozenset}
_CONTAINERS = ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "fs"))
_MODULE = type(sys)


def _describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except Exception:  # a hostile __str__
        text = type(exc).__name__
    return text[:300]


def _limits(spec: dict) -> None:
    import resource

    for name, value in spec.items():
        try:
            resource.setrlimit(getattr(resource, name), tuple(value))
        except (AttributeError, ValueError, OSError):
            pass


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


# --- plain values across the pipes ----------------------------------------------------------------------------

def encode(value: object, other) -> object:
    """``value`` as tagged JSON: scalars as themselves, the rest as ``[tag, body]``; an object that is not plain
    data (a function, an instance, an iterator ...) as whatever ``other(value)`` returns."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        return number if number - number == 0 else ["f", repr(number)]  # nan and infinities as text
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        return ["c", [encode(float(value.real), other), encode(float(value.imag), other)]]
    if isinstance(value, bytes | bytearray):
        return ["b", bytes(value).hex()]
    for kind, tag in _CONTAINERS:
        if isinstance(value, kind):
            return [tag, [encode(item, other) for item in kind.__iter__(value)]]
    if isinstance(value, dict):
        return ["d", [[encode(k, other), encode(v, other)] for k, v in dict.items(value)]]
    return other(value)


def decode(data: object, resolve) -> object:
    """The value :func:`encode` made; ``resolve(tag, body)`` makes the other tags (handles ...) into objects.
    Raises ValueError, TypeError or RecursionError on malformed data."""
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str)):
        raise ValueError("malformed value")
    tag, body = data
    if tag in _BUILD and isinstance(body, list):
        return _BUILD[tag](decode(item, resolve) for item in body)
    if tag == "d" and isinstance(body, list):
        return {decode(k, resolve): decode(v, resolve) for k, v in body}
    if tag == "f" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "c" and isinstance(body, list) and len(body) == 2:
        return complex(*(float(decode(part, resolve)) for part in body))  # type: ignore[arg-type]
    if tag == "b" and isinstance(body, str):
        return bytes.fromhex(body)
    return resolve(tag, body)


def _stdlib_module(value: object) -> str | None:
    name = getattr(value, "__name__", None) if isinstance(value, _MODULE) else None
    return name if isinstance(name, str) and name.partition(".")[0] in sys.stdlib_module_names else None


class Channel:
    """Newline-delimited JSON messages over two pipe fds."""

    def __init__(self, rx: int, tx: int) -> None:
        self.rfile = os.fdopen(rx, "rb")
        self.tx = tx

    def send(self, message: object) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        while data:
            data = data[os.write(self.tx, data):]

    def recv(self) -> object:
        """The next message, ``None`` at end of file; ValueError when it is too long or not JSON."""
        line = self.rfile.readline(MAX_MESSAGE + 1)
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise ValueError("message too long")
        return json.loads(line)


# --- the answer's side: run the code, then serve requests --------------------------------------------------------

class _Table:
    """The answer's objects that the judge holds handles to."""

    def __init__(self) -> None:
        self.objects: list = []
        self.ids: dict[int, int] = {}

    def handle(self, value: object) -> list:
        if id(value) not in self.ids:
            self.ids[id(value)] = len(self.objects)
            self.objects.append(value)
        return ["h", [self.ids[id(value)], type(value).__name__[:60]]]

    def other(self, value: object) -> list:
        module = _stdlib_module(value)
        return ["m", module] if module else self.handle(value)

    def encode(self, value: object) -> object:
        try:
            return encode(value, self.other)
        except (Exception, RecursionError):
            return self.handle(value)

    def resolve(self, tag: str, body: object) -> object:
        if tag == "h" and type(body) is int:
            return self.objects[body]
        if tag == "bi" and isinstance(body, str):
            return getattr(builtins, body)
        if tag == "m" and isinstance(body, str):
            return importlib.import_module(body)
        raise ValueError(f"malformed value tag {tag!r}")

    def apply(self, msg: dict) -> object:
        op, target = msg["op"], self.objects[msg["obj"]]

        def arg(data: object) -> object:
            return decode(data, self.resolve)

        if op == "call":
            return target(*[arg(a) for a in msg["args"]], **{k: arg(v) for k, v in msg["kwargs"].items()})
        if op == "getattr":
            return getattr(target, msg["name"])
        if op == "getitem":
            return target[arg(msg["key"])]
        operations = {"iter": iter, "next": next, "len": len, "bool": bool, "repr": repr, "str": str}
        return operations[op](target)


def _answer(payload: dict, chan: Channel) -> None:
    chan.send({"op": "ready"})  # before any untrusted line: a missing "ready" is the sandbox's failure
    namespace: dict = {"__name__": "__answer__", "__builtins__": builtins}
    try:
        code = compile(payload["code"], "<answer>", "exec")
    except (SyntaxError, ValueError) as exc:
        chan.send({"op": "syntax", "line": getattr(exc, "lineno", None), "error": _describe(exc)})
        return
    try:
        exec(code, namespace)
    except BaseException as exc:  # SystemExit and the like count against the answer too
        chan.send({"op": "crash", "error": _describe(exc)})
        return
    table, names = _Table(), {}
    for name, value in list(namespace.items()):
        if not (name.startswith("__") and name.endswith("__")):
            data = table.encode(value)
            names[name] = data if len(json.dumps(data)) <= MAX_INLINE else table.handle(value)
    chan.send({"op": "loaded", "names": names})
    while (msg := chan.recv()) is not None:
        try:
            reply = {"id": msg["id"], "value": table.encode(table.apply(msg))}
        except BaseException as exc:
            reply = {"id": msg.get("id"), "error": [type(exc).__name__, _describe(exc).partition(": ")[2]]}
        chan.send(reply)


# --- the judge's side: run the tests against proxies ------------------------------------------------------------

class AnswerGone(Exception):
    """The answer's process ended, or broke the protocol: every later request fails the same way."""


class AnswerError(Exception):
    """The answer's code raised an exception that is not a built-in one (its name and message are kept)."""


def _rebuild(error: object) -> BaseException:
    """The judge's copy of an exception the answer's code raised: a built-in exception class, else AnswerError."""
    name, message = (str(part)[:300] for part in error) if isinstance(error, list) and len(error) == 2 else ("?", "")
    if name == "StopIteration":
        return StopIteration()
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message) if message else cls()
        except Exception:
            pass
    return AnswerError(f"{name}: {message}" if message else name)


class Remote:
    """The judge's proxy for one object that stays in the answer's process."""

    __slots__ = ("_link", "_ident", "_kind")

    def __init__(self, link: "_Link", ident: int, kind: str) -> None:
        self._link, self._ident, self._kind = link, ident, kind

    def _ask(self, op: str, **fields: object) -> object:
        return self._link.request(op, self._ident, **fields)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        put = self._link.encode
        return self._ask("call", args=[put(a) for a in args], kwargs={k: put(v) for k, v in kwargs.items()})

    def __iter__(self) -> object:
        return self._ask("iter")

    def __next__(self) -> object:
        return self._ask("next")

    def __len__(self) -> int:
        n = self._ask("len")
        if type(n) is not int or n < 0:
            raise TypeError("the answer's __len__ did not return a non-negative int")
        return n

    def __getitem__(self, key: object) -> object:
        return self._ask("getitem", key=self._link.encode(key))

    def __bool__(self) -> bool:
        value = self._ask("bool")
        if type(value) is not bool:
            raise TypeError("the answer's __bool__ did not return a bool")
        return value

    def _text(self, op: str) -> str:
        try:
            text = self._ask(op)
        except Exception:
            text = None
        return text[:300] if isinstance(text, str) else f"<{self._kind} of the answer>"

    def __repr__(self) -> str:
        return self._text("repr")

    def __str__(self) -> str:
        return self._text("str")


class _Link:
    """The judge's end of the channel: numbered requests, one reply each, proxies for the answer's objects."""

    def __init__(self, chan: Channel, report) -> None:
        self.chan, self.report, self.serial, self.broken = chan, report, 0, ""
        self.remotes: dict[int, Remote] = {}

    def fail(self, why: str) -> AnswerGone:
        if not self.broken:
            self.broken = why
            self.report("GONE", why)
        return AnswerGone(self.broken)

    def receive(self) -> object:
        try:
            msg = self.chan.recv()
        except (ValueError, OSError, RecursionError) as exc:
            raise self.fail(f"the answer broke the protocol ({_describe(exc)})") from None
        if msg is None:
            raise self.fail("the answer's process ended")
        return msg

    def request(self, op: str, ident: int, **fields: object) -> object:
        if self.broken:
            raise AnswerGone(self.broken)
        self.serial += 1
        try:
            self.chan.send({"id": self.serial, "op": op, "obj": ident, **fields})
        except OSError:
            raise self.fail("the answer's process ended") from None
        msg = self.receive()
        while not (isinstance(msg, dict) and msg.get("id") == self.serial):
            msg = self.receive()  # not the reply to this request: the answer's own noise
        if "error" in msg:
            raise _rebuild(msg["error"])
        try:
            return decode(msg.get("value"), self.resolve)
        except (ValueError, TypeError, KeyError, ImportError, RecursionError) as exc:
            raise AnswerError(f"malformed value from the answer ({_describe(exc)})") from None

    def resolve(self, tag: str, body: object) -> object:
        if tag == "h" and isinstance(body, list) and len(body) == 2 and type(body[0]) is int:
            if body[0] not in self.remotes:
                self.remotes[body[0]] = Remote(self, body[0], str(body[1])[:60])
            return self.remotes[body[0]]
        if tag == "m" and isinstance(body, str) and body.partition(".")[0] in sys.stdlib_module_names:
            return importlib.import_module(body)  # the judge's own copy of a standard module, never the answer's
        raise ValueError(f"malformed value tag {tag!r}")

    def encode(self, value: object) -> object:
        return encode(value, self._reference)

    @staticmethod
    def _reference(value: object) -> list:
        if isinstance(value, Remote):
            return ["h", [value._ident, value._kind]]
        module = _stdlib_module(value)
        if module:
            return ["m", module]
        name = getattr(value, "__name__", None)
        if isinstance(name, str) and getattr(builtins, name, None) is value:
            return ["bi", name]
        raise TypeError(f"cannot pass a {type(value).__name__} to the answer's code")


def _judge(payload: dict, chan: Channel) -> None:
    out, tag = payload["report"], payload["nonce"]

    def report(word: str, data: object = None) -> None:
        line = f"{tag} {word} {json.dumps(data)}\n".encode()
        while line:
            line = line[os.write(out, line):]

    link = _Link(chan, report)
    report("READY")
    try:
        if link.receive() != {"op": "ready"}:
            raise AnswerGone("no ready")
    except AnswerGone:
        report("NOSTART")
        return
    try:
        loaded = link.receive()
    except AnswerGone:
        report("ENDED")
        return
    op = loaded.get("op") if isinstance(loaded, dict) else None
    names = loaded.get("names") if op == "loaded" else None
    if not isinstance(names, dict):
        line, error = (loaded.get("line"), loaded.get("error")) if op in ("syntax", "crash") else (None, "malformed")
        report("SYNTAX" if op == "syntax" else "CRASH", {"line": line if type(line) is int else None,
                                                         "error": str(error)[:300]})
        return
    namespace: dict = {"__name__": "__test__", "__builtins__": builtins}
    for name, data in names.items():  # a name that shadows a built-in (set, len, isinstance ...) is not bound,
        if isinstance(name, str) and name.isidentifier() and not hasattr(builtins, name):  # one of a standard
            try:  # module ("math", whatever the answer bound to it) is the judge's own import of that module
                stdlib = name in sys.stdlib_module_names
                namespace[name] = importlib.import_module(name) if stdlib else decode(data, link.resolve)
            except (ValueError, TypeError, KeyError, ImportError, RecursionError):
                continue
    try:
        if payload["setup"]:
            exec(compile(payload["setup"], "<setup>", "exec"), namespace)
    except BaseException as exc:
        report("CRASH", {"line": None, "error": f"setup: {_describe(exc)}"})
        return
    for i, test in enumerate(payload["tests"]):
        try:
            exec(compile(test, f"<test {i}>", "exec"), namespace)
        except BaseException as exc:
            report("FAIL", {"test": i, "error": _describe(exc)})
        else:
            report("PASS", {"test": i})
    report("DONE")


def main(payload: dict) -> None:
    """Entry point, called by the parent's boot snippet with the payload it read from stdin."""
    sys.set_int_max_str_digits(100_000)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # stdin is spent: the answer's input() sees end of file
    os.close(devnull)
    _limits(payload["limits"])
    chan = Channel(payload["rx"], payload["tx"])
    _seatbelt()
    if payload["role"] == "answer":
        _answer(payload, chan)
    else:
        _judge(payload, chan)
