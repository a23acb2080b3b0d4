"""The upstream HTTP/1.1 client: keep-alive pools, three timeouts, and nothing else.

Every provider POSTs a JSON body to one URL and reads a JSON answer or a stream of server-sent
events. This client does exactly that, on asyncio protocols with the llhttp parser (``httptools``,
the parser Node.js and uvicorn use): about 25 µs of CPU per call, where aiohttp's ClientSession
takes about 100 (``benchmarks/overhead.py`` measures the difference the router sees). What it
does not do: redirects, cookies, proxies, compression (it does not ask for any), HTTP/2.

* One pool of kept-alive connections per (scheme, host, port), at most ``limit_per_host`` open at
  once; an idle connection is closed after ``keepalive_s`` or when the upstream closes it.
* :class:`Timeouts`: ``connect`` (a new connection, TLS included), ``read`` (the wait for the
  response headers, then the longest gap between two reads of the body), ``total`` (the whole
  call, from the wait for a connection to the last byte of the body).
* A kept-alive connection the upstream closed before it answered a byte is retried once on a new
  connection (the upstream closed it while idle; the request never reached it).
* Errors are :class:`HttpClientError`; timeouts are also :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

MAX_BODY = 64 * 1024 * 1024  # a response body longer than this is an error
HIGH_WATER = 1024 * 1024  # a stream pauses reading from the upstream while this much waits unread
DRAIN_S = 1.0  # how long a response left before its end may take to finish and join the pool


class HttpClientError(Exception):
    """The upstream could not be reached, broke the protocol or timed out (see the subclasses)."""


class ConnectFailed(HttpClientError):
    pass


class Disconnected(HttpClientError):
    """The connection closed before the whole response arrived."""


class ProtocolError(HttpClientError):
    """The response is not valid HTTP/1.1, or it is larger than the client accepts."""


class LineTooLong(ProtocolError):
    """A line of the body (see :meth:`Response.lines`) longer than asked."""


class UpstreamTimeout(HttpClientError, TimeoutError):
    pass


@dataclass(frozen=True)
class Timeouts:
    """Seconds (None: no limit). See the module docstring for what each one covers."""

    total: float | None = 120.0
    connect: float | None = 10.0
    read: float | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where a provider POSTs: a URL parsed once, and its request head without Content-Length."""

    scheme: str
    host: str
    port: int
    head: bytes

    @classmethod
    def of(cls, url: str, headers: Mapping[str, str]) -> Endpoint:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"base_url: {url!r} is not an http(s) URL")
        port = u.port or (443 if u.scheme == "https" else 80)
        host = u.hostname if ":" not in u.hostname else f"[{u.hostname}]"
        host_header = host if u.port is None else f"{host}:{port}"
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {host_header}", "Accept: application/json",
                 "User-Agent: bandit-router"]
        for k, v in headers.items():
            if any(c in k or c in v for c in "\r\n\0") or ":" in k:
                raise ValueError(f"header {k!r}: names and values may not contain ':' (names), CR, LF or NUL")
            lines.append(f"{k}: {v}")
        return cls(u.scheme, u.hostname, port, ("\r\n".join(lines) + "\r\n").encode("latin-1"))


class _Connection(asyncio.Protocol):
    """One TCP connection, and the response being read on it (callbacks from llhttp).

    Between calls it is idle in its pool (``in_use`` False); bytes arriving then are not an answer
    to anything, so the connection is closed. A call that ends before its response does may leave
    it *draining* (``drain_to``): it joins the pool when the rest arrives, or is closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: _Pool) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.closed = False
        self.in_use = False
        self.idle_since = 0.0
        self.drain_to: _Pool | None = None
        self.drain_timer: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # the waiting call's timeout check
        self.new_response(streaming=False)

    def new_response(self, streaming: bool) -> None:
        self.streaming = streaming
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.interim = False  # inside a 1xx answer: not the response, skipped
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received = False  # any byte of this response
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: HttpClientError | None = None
        self.last_read = self.loop.time()
        self.paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.open.add(self)

    def data_received(self, data: bytes) -> None:
        if not self.in_use and self.drain_to is None:
            self.close()  # an idle connection answering nothing: its state is unknown
            return
        self.received = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.fail(ProtocolError(f"invalid HTTP response: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.open.discard(self)
        self.parser = None  # it holds this protocol (its callbacks): a cycle; no data comes after this
        if not self.complete and self.error is None:
            if self.headers_done and exc is None and self._ends_at_close():
                self.complete = True  # a body without a length ends when the connection does
            else:
                self.error = Disconnected("the upstream closed the connection before the response ended")
        self.end_drain()
        self.wake()

    # -- llhttp callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: the parse stops, and fail() closes
            raise ProtocolError("the upstream sent more than one answer")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # not a chunked body's trailers
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the response follows
            self.interim = True
            self.reason, self.raw_headers = b"", []
            return
        self.status = status
        self.headers_done = True
        self.wake()

    def on_body(self, body: bytes) -> None:
        if self.error is not None or self.drain_to is not None:
            return  # failed, or nobody reads it any more
        self.chunks.append(body)
        self.buffered += len(body)
        if self.streaming:
            if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
                self.transport.pause_reading()
                self.paused = True
            self.wake()
        elif self.buffered > MAX_BODY:
            self.fail(ProtocolError(f"the response body is longer than {MAX_BODY} bytes"))

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.drain_to is not None:  # given back before its end: it may join the pool now
            pool = self.drain_to
            self.end_drain()
            pool.release(self, self.loop.time())
        self.wake()

    # -------------------------------------------------------------------------------------------
    def _ends_at_close(self) -> bool:
        names = {k.lower() for k, _ in self.raw_headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def fail(self, error: HttpClientError) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.close()
        self.wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self.paused = False

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        self.resume()
        return data

    def drain(self, pool: _Pool) -> None:
        """Nobody reads the rest: join ``pool`` once it has arrived (within DRAIN_S), or close.
        Holds its pool slot until then."""
        self.chunks.clear()
        self.buffered = 0
        self.resume()
        self.drain_to = pool
        self.drain_timer = self.loop.call_later(DRAIN_S, self._drain_timeout)

    def _drain_timeout(self) -> None:
        self.drain_timer = None
        if self.drain_to is not None:
            self.end_drain()
            self.close()

    def end_drain(self) -> None:
        if self.drain_to is not None:
            pool, self.drain_to = self.drain_to, None
            pool.slots.release()
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None


class Response:
    """An upstream's answer: status and headers at once, the body by :meth:`read` or :meth:`iter_any`."""

    def __init__(self, conn: _Connection, deadline: float | None, read_s: float | None) -> None:
        self._conn = conn
        self._deadline = deadline
        self._read_s = read_s
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1")

    @functools.cached_property
    def headers(self) -> dict[str, str]:
        """Header names in lower case (a repeated header: its last value)."""
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._conn.raw_headers}

    @property
    def charset(self) -> str | None:
        for part in self.headers.get("content-type", "").split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.lower() == "charset" and v:
                return v.strip('"')
        return None

    async def read(self, limit: int | None = None) -> bytes:
        """The body (the first ``limit`` bytes of it: enough for an error message)."""
        c = self._conn
        while not c.complete and (limit is None or c.buffered < limit):
            c.resume()  # a stream paused at HIGH_WATER: everything is wanted here
            await wait(c, self._deadline, self._read_s)
        data = c.take()
        return data if limit is None else data[:limit]

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: whatever each wait brought, in one piece."""
        c = self._conn
        while True:
            if c.chunks:
                yield c.take()
            elif c.complete:
                return
            else:
                await wait(c, self._deadline, self._read_s)

    async def lines(self, max_line: int) -> AsyncIterator[bytes]:
        """The body line by line (each with its ``\n``; the last one may lack it); a line longer
        than ``max_line`` bytes is a :class:`LineTooLong`."""
        parts: list[bytes] = []  # the line being read, over several reads
        held = 0
        async for data in self.iter_any():
            if b"\n" not in data:
                parts.append(data)
                held += len(data)
                if held > max_line:
                    raise LineTooLong(f"a line of the response is longer than {max_line} bytes")
                continue
            if parts:
                data = b"".join(parts) + data
                parts.clear()
            *done, rest = data.split(b"\n")
            for line in done:
                if len(line) > max_line:
                    raise LineTooLong(f"a line of the response is longer than {max_line} bytes")
                yield line + b"\n"
            if rest:
                parts.append(rest)
            held = len(rest)
            if held > max_line:
                raise LineTooLong(f"a line of the response is longer than {max_line} bytes")
        if parts:
            yield b"".join(parts)


async def wait(c: _Connection, deadline: float | None, read_s: float | None) -> None:
    """Until the connection has news; raises its error, or :class:`UpstreamTimeout`.

    No closures and no stored exception raised as is: either would make a reference cycle per call
    (a function whose cell holds it; an exception whose traceback holds the connection holding it),
    which only the cyclic garbage collector frees, long after the call."""
    if c.error is not None:
        raise _fresh(c.error)
    fut = c.loop.create_future()
    c.waiter = fut
    at = _next_check(c, deadline, read_s)
    if at is not None:
        c.timer = c.loop.call_at(at, _check, c, deadline, read_s)
    try:
        await fut
    finally:
        c.waiter = None
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
    if c.error is not None:
        raise _fresh(c.error)


def _check(c: _Connection, deadline: float | None, read_s: float | None) -> None:
    """A wait's timer: fail the connection past a timeout, else look again at the next moment one
    could pass (the read timeout runs from the last byte, so it moves)."""
    c.timer = None
    now = c.loop.time()
    if deadline is not None and now >= deadline:
        c.fail(UpstreamTimeout("the upstream took longer than the total timeout"))
    elif read_s is not None and now >= c.last_read + read_s:
        what = "its response headers" if not c.headers_done else "more of its response"
        c.fail(UpstreamTimeout(f"the upstream sent no byte for {read_s:g} s while the router waited for {what}"))
    else:
        at = _next_check(c, deadline, read_s)
        assert at is not None
        c.timer = c.loop.call_at(at, _check, c, deadline, read_s)


def _fresh(e: HttpClientError) -> HttpClientError:
    return type(e)(*e.args)


def _next_check(c: _Connection, deadline: float | None, read_s: float | None) -> float | None:
    if read_s is None:
        return deadline
    at = c.last_read + read_s
    return at if deadline is None or at < deadline else deadline


class _Pool:
    """Kept-alive connections to one (scheme, host, port): ``idle`` oldest first, ``open`` all of them."""

    def __init__(self, endpoint: Endpoint, limit: int, keepalive_s: float, ssl_context: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self.idle: deque[_Connection] = deque()
        self.open: set[_Connection] = set()
        self.slots = asyncio.Semaphore(limit)
        self.keepalive_s = keepalive_s
        self.ssl = ssl_context
        self.closed = False

    def _sweep(self, now: float) -> None:
        idle = self.idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.keepalive_s):
            idle.popleft().close()

    def reuse(self, now: float) -> _Connection | None:
        self._sweep(now)
        while self.idle:
            c = self.idle.pop()  # the most recently used: the least likely to have been closed
            if not c.closed:
                return c
        return None

    async def connect(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> _Connection:
        ep = self.endpoint
        if timeout is not None and timeout <= 0:
            raise UpstreamTimeout("the total timeout passed while the call waited for a free connection")
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop, self), ep.host, ep.port, ssl=self.ssl,
                                       server_hostname=ep.host if self.ssl else None), timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"no connection to {ep.host}:{ep.port} within {timeout or 0:g} s") from None
        except (OSError, ValueError) as e:  # ValueError: a host name IDNA cannot encode
            raise ConnectFailed(f"cannot connect to {ep.host}:{ep.port}: "
                                f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
        return conn

    def release(self, c: _Connection, now: float) -> None:
        c.in_use = False
        if c.complete and c.keep_alive and not c.closed and c.error is None and not self.closed:
            c.chunks.clear()
            c.buffered = 0
            c.resume()  # a stream paused at HIGH_WATER that then completed in the same read
            c.idle_since = now
            self.idle.append(c)
            self._sweep(now)
        else:
            c.close()

    def close(self) -> None:
        self.closed = True
        self.idle.clear()
        for c in list(self.open):
            c.close()


class HttpClient:
    """One per router: the pools of every upstream. :meth:`post` is the only call."""

    def __init__(self, *, limit_per_host: int = 500, keepalive_s: float = 15.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: for https upstreams; by default the system's CAs (``SSL_CERT_FILE`` and
        ``SSL_CERT_DIR`` are honoured), created at the first https call."""
        self.limit_per_host = limit_per_host
        self.keepalive_s = keepalive_s
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._ssl = ssl_context

    def _pool(self, ep: Endpoint) -> _Pool:
        pool = self._pools.get((ep.scheme, ep.host, ep.port))
        if pool is None:
            if ep.scheme == "https" and self._ssl is None:
                self._ssl = ssl.create_default_context()
            pool = _Pool(ep, self.limit_per_host, self.keepalive_s, self._ssl if ep.scheme == "https" else None)
            self._pools[(ep.scheme, ep.host, ep.port)] = pool
        return pool

    def post(self, ep: Endpoint, body: bytes, timeouts: Timeouts, *, stream: bool = False) -> _Call:
        """``async with client.post(endpoint, body, timeouts) as response:``; the connection goes back
        to its pool when the block ends with the body read, and is closed otherwise."""
        return _Call(self, ep, body, timeouts, stream)

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


class _Call:
    __slots__ = ("client", "ep", "body", "timeouts", "stream", "pool", "conn")

    def __init__(self, client: HttpClient, ep: Endpoint, body: bytes, timeouts: Timeouts, stream: bool) -> None:
        self.client, self.ep, self.body, self.timeouts, self.stream = client, ep, body, timeouts, stream
        self.conn: _Connection | None = None

    async def __aenter__(self) -> Response:
        loop = asyncio.get_running_loop()
        t = self.timeouts
        deadline = None if t.total is None else loop.time() + t.total
        self.pool = pool = self.client._pool(self.ep)
        if pool.slots.locked():
            try:
                await asyncio.wait_for(pool.slots.acquire(), t.total)
            except TimeoutError:
                raise UpstreamTimeout(f"no free connection to {self.ep.host}:{self.ep.port} within the total "
                                      "timeout") from None
        else:
            await pool.slots.acquire()  # free: returns at once
        try:
            for attempt in (0, 1):
                # the second attempt (after a kept-alive connection closed unanswered) on a new one
                conn = pool.reuse(loop.time()) if attempt == 0 else None
                reused = conn is not None
                if conn is None:
                    conn = await pool.connect(loop, t.connect if deadline is None
                                              else min(t.connect or t.total or 0.0, deadline - loop.time()))
                self.conn = conn
                conn.in_use = True
                conn.new_response(self.stream)
                assert conn.transport is not None
                conn.transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (self.ep.head, len(self.body), self.body))
                try:
                    while not conn.headers_done:
                        await wait(conn, deadline, t.read)
                    return Response(conn, deadline, t.read)
                except Disconnected:
                    if not reused or conn.received:
                        raise
                    conn.close()  # closed by the upstream while idle: once more, on a new connection
            raise AssertionError("unreachable: the second attempt returns or raises")
        except BaseException:
            if self.conn is not None and not self.conn.headers_done:
                self.conn.close()  # failed or cancelled before the headers: not reusable
            self._done()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._done()

    def _done(self) -> None:
        """Back to the pool: a response read to its end (whatever the caller made of it), or one whose
        last bytes are on their way (a stream left after its final event: it drains, and joins the
        pool when they arrive, within :data:`DRAIN_S`, keeping its slot until then). Anything else
        is closed: the upstream may still be sending."""
        c = self.conn
        self.conn = None
        if c is not None and not c.complete and c.headers_done and c.error is None and not c.closed:
            c.in_use = False
            c.drain(self.pool)  # releases the slot when it ends
            return
        if c is not None:
            if c.complete:
                self.pool.release(c, c.loop.time())
            else:
                c.in_use = False
                c.close()
        self.pool.slots.release()
