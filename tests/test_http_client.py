"""The upstream HTTP/1.1 client (bandit_router/providers/http.py) against real sockets on loopback:
keep-alive pools, bodies by length, chunks and close, the three timeouts, a pool's limit,
cancellation, broken responses, TLS."""

from __future__ import annotations

import asyncio
import gc
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from bandit_router.procs import free_port
from bandit_router.providers import http
from bandit_router.providers.http import (
    ConnectFailed,
    Disconnected,
    Endpoint,
    HttpClient,
    ProtocolError,
    Timeouts,
    UpstreamTimeout,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head and Content-Length body) off the socket; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


class Upstream:
    """A raw TCP server: each connection is handed to ``handler``; counts connections."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler, self.ssl = handler, ssl_context
        self.connections = 0
        self.open = 0
        self.most_open = 0

    async def __aenter__(self) -> Upstream:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            try:
                await self.handler(reader, writer)
            finally:
                self.open -= 1
                writer.close()

        self.port = free_port()
        self.server = await asyncio.start_server(serve, "127.0.0.1", self.port, ssl=self.ssl)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    def endpoint(self, scheme: str = "http", headers: dict[str, str] | None = None) -> Endpoint:
        return Endpoint.of(f"{scheme}://127.0.0.1:{self.port}/v1/chat/completions", headers or {})


def once(raw: bytes, linger: float = 0.0) -> Handler:
    """A connection that reads one request, sends ``raw`` (maybe nothing), waits ``linger`` s and closes."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(linger)
    return handler


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader) is not None:
        writer.write(OK)
        await writer.drain()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient()
    yield c
    await c.close()


async def post(client: HttpClient, ep: Endpoint, timeouts: Timeouts | None = None) -> tuple[int, bytes]:
    async with client.post(ep, b"{\"q\": 1}", timeouts or Timeouts(total=5)) as r:
        return r.status, await r.read()


@pytest.mark.asyncio
async def test_connections_are_kept_alive_and_the_request_is_well_formed(client: HttpClient) -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            seen.append(req)
            writer.write(OK)

    async with Upstream(record) as up:
        ep = up.endpoint(headers={"Authorization": "Bearer k"})
        for _ in range(20):
            assert await post(client, ep) == (200, b'{"ok": true}')
        assert up.connections == 1
    head, _, body = seen[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1" and body == b'{"q": 1}'
    assert {b"Host: 127.0.0.1:%d" % up.port, b"Authorization: Bearer k", b"Content-Length: 8"} <= set(lines)


@pytest.mark.asyncio
async def test_bodies_by_chunks_and_by_close(client: HttpClient) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"hello ", b"chunked ", b"world"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await answer_ok(reader, writer)  # and the connection stays usable

    async with Upstream(chunked) as up:
        assert await post(client, up.endpoint()) == (200, b"hello chunked world")
        assert await post(client, up.endpoint()) == (200, b'{"ok": true}')
        assert up.connections == 1

    async with Upstream(once(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")) as up:
        for _ in range(2):  # not reused: it closed
            assert await post(client, up.endpoint()) == (200, b"all of it")
        assert up.connections == 2


@pytest.mark.asyncio
async def test_an_idle_connection_closed_by_the_upstream_is_retried_once(client: HttpClient) -> None:
    async def one_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)  # the next request on this connection: closed without a byte

    async with Upstream(one_then_hang_up) as up:
        ep = up.endpoint()
        for _ in range(3):
            assert await post(client, ep) == (200, b'{"ok": true}')
        assert up.connections == 3  # each second request went to a new connection

    async with Upstream(once(b"")) as up:  # a new connection closed without an answer: no retry
        with pytest.raises(Disconnected):
            await post(client, up.endpoint())
        assert up.connections == 1

    async with Upstream(once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")) as up:
        with pytest.raises(Disconnected):
            await post(client, up.endpoint())


@pytest.mark.asyncio
async def test_the_three_timeouts(client: HttpClient) -> None:
    async def slow_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(1.0)
        writer.write(OK)

    async with Upstream(slow_headers) as up:
        with pytest.raises(UpstreamTimeout, match="response headers"):
            await post(client, up.endpoint(), Timeouts(total=5, read=0.1))
        with pytest.raises(UpstreamTimeout, match="total timeout"):
            await post(client, up.endpoint(), Timeouts(total=0.1))
        assert await post(client, up.endpoint(), Timeouts(total=5, read=2)) == (200, b'{"ok": true}')

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
        for _ in range(20):  # a byte every 50 ms: never a 0.2 s gap, but 1 s in all
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with Upstream(trickle) as up:
        assert await post(client, up.endpoint(), Timeouts(total=5, read=0.2)) == (200, b"x" * 20)
        with pytest.raises(UpstreamTimeout, match="total timeout"):
            await post(client, up.endpoint(), Timeouts(total=0.4, read=0.2))

    async def stall_mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(1.0)

    async with Upstream(stall_mid_stream) as up:
        got: list[bytes] = []
        with pytest.raises(UpstreamTimeout, match="more of its response"):
            async with client.post(up.endpoint(), b"{}", Timeouts(total=5, read=0.2), stream=True) as r:
                async for data in r.iter_any():
                    got.append(data)
        assert got == [b"first"]


@pytest.mark.asyncio
async def test_connect_failures(client: HttpClient) -> None:
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await post(client, Endpoint.of(f"http://127.0.0.1:{free_port()}/v1", {}))


@pytest.mark.asyncio
async def test_a_pool_opens_at_most_its_limit_and_queues_the_rest() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(OK)

    c = HttpClient(limit_per_host=2)
    try:
        async with Upstream(slow) as up:
            got = await asyncio.gather(*(post(c, up.endpoint()) for _ in range(8)))
            assert got == [(200, b'{"ok": true}')] * 8
            assert up.most_open == 2 and up.connections == 2
            busy = [asyncio.create_task(post(c, up.endpoint())) for _ in range(2)]
            await asyncio.sleep(0.01)
            with pytest.raises(UpstreamTimeout, match="no free connection"):  # the queue counts in the total
                await post(c, up.endpoint(), Timeouts(total=0.02))
            assert await asyncio.gather(*busy) == [(200, b'{"ok": true}')] * 2
    finally:
        await c.close()


@pytest.mark.asyncio
async def test_a_cancelled_call_closes_its_connection(client: HttpClient) -> None:
    async def slow_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(0.3)
            writer.write(OK)

    async with Upstream(slow_then_ok) as up:
        task = asyncio.create_task(post(client, up.endpoint()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await post(client, up.endpoint()) == (200, b'{"ok": true}')
        assert up.connections == 2  # the half-read answer of the first was not taken for the second's


@pytest.mark.asyncio
async def test_broken_and_oversized_responses(client: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Upstream(once(b"this is not HTTP\r\n\r\n", linger=0.5)) as up:
        with pytest.raises(ProtocolError, match="invalid HTTP"):
            await post(client, up.endpoint())

    monkeypatch.setattr(http, "MAX_BODY", 1000)

    async with Upstream(once(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, linger=0.5)) as up:
        with pytest.raises(ProtocolError, match="longer than 1000 bytes"):
            await post(client, up.endpoint())


@pytest.mark.asyncio
async def test_a_slow_reader_pauses_the_upstream_and_loses_nothing(client: HttpClient,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "HIGH_WATER", 64)
    parts = [b"%04d:" % i + b"y" * 200 + b"\n" for i in range(200)]

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for p in parts:
                writer.write(b"%x\r\n%s\r\n" % (len(p), p))
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with Upstream(stream) as up:
        async with client.post(up.endpoint(), b"{}", Timeouts(total=5), stream=True) as r:
            lines = []
            async for line in r.lines(max_line=1000):
                lines.append(line)
                await asyncio.sleep(0)
        assert lines == parts
        assert await post(client, up.endpoint()) == (200, b"".join(parts))
        assert up.connections == 1
        with pytest.raises(ProtocolError, match="longer than 100 bytes"):
            async with client.post(up.endpoint(), b"{}", Timeouts(total=5), stream=True) as r:
                async for _ in r.lines(max_line=100):
                    pass


def test_endpoints_refuse_bad_urls_and_header_injection() -> None:
    ep = Endpoint.of("https://api.example.com/v1/chat/completions?x=1", {"X-Key": "v"})
    assert (ep.scheme, ep.host, ep.port) == ("https", "api.example.com", 443)
    assert ep.head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: api.example.com\r\n")
    with pytest.raises(ValueError, match="not an http"):
        Endpoint.of("ftp://example.com/v1", {})
    with pytest.raises(ValueError, match="CR, LF"):
        Endpoint.of("http://example.com/v1", {"Authorization": "Bearer k\r\nX-Evil: 1"})


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with Upstream(answer_ok, server_ctx) as up:
        trusting = HttpClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
        try:
            assert await post(trusting, up.endpoint("https")) == (200, b'{"ok": true}')
            assert await post(trusting, up.endpoint("https")) == (200, b'{"ok": true}')
            assert up.connections == 1
        finally:
            await trusting.close()
        default = HttpClient()  # the system's CAs do not know this certificate
        try:
            with pytest.raises(ConnectFailed):
                await post(default, up.endpoint("https"))
        finally:
            await default.close()


@pytest.mark.asyncio
async def test_answers_read_to_their_end_go_back_to_the_pool(client: HttpClient,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An error answer the caller raised on, and a stream left after its last event whose end comes a
    moment later, keep their connection; a body that never ends is closed after DRAIN_S."""
    monkeypatch.setattr(http, "DRAIN_S", 0.2)

    async def varied(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            if b"error" in req:
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
            elif b"stream" in req:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nlast\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"0\r\n\r\n")
            elif b"endless" in req:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nmore\n\r\n")
                await writer.drain()
                await asyncio.sleep(5)
            else:
                writer.write(OK)

    async with Upstream(varied) as up:
        ep = up.endpoint()
        with pytest.raises(RuntimeError):
            async with client.post(ep, b"error", Timeouts(total=5)) as r:
                assert (r.status, await r.read(100)) == (500, b"oops")
                raise RuntimeError("the caller's own error, after the whole answer")
        async with client.post(ep, b"stream", Timeouts(total=5), stream=True) as r:
            async for line in r.lines(100):
                assert line == b"last\n"
                break  # the caller's last event: the chunked terminator is still on its way
        await asyncio.sleep(0.1)
        assert await post(client, ep) == (200, b'{"ok": true}')
        assert up.connections == 1
        async with client.post(ep, b"endless", Timeouts(total=5), stream=True) as r:
            async for _ in r.iter_any():
                break
        await asyncio.sleep(0.3)  # never ends: closed after DRAIN_S, not pooled
        assert await post(client, ep) == (200, b'{"ok": true}')
        assert up.connections == 2


# -- found in review: each of these failed before its fix -----------------------------------------
@pytest.mark.asyncio
async def test_interim_1xx_answers_are_skipped(client: HttpClient) -> None:
    """A 100 Continue is not the response: reading it as one handed the real answer to the next call."""
    async def continue_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while await read_request(reader) is not None:
            n += 1
            body = b"answer-%d" % n
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async with Upstream(continue_then_answer) as up:
        assert await post(client, up.endpoint()) == (200, b"answer-1")
        assert await post(client, up.endpoint()) == (200, b"answer-2")


@pytest.mark.asyncio
async def test_the_retry_after_a_closed_idle_connection_uses_a_new_one(client: HttpClient) -> None:
    """Two idle connections both closed unanswered: the retry must not take the second stale one
    (it did, and returned a response with status 0)."""
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)  # the next request: closed unanswered

    async with Upstream(answer_once) as up:
        ep = up.endpoint()
        assert await asyncio.gather(post(client, ep), post(client, ep)) == [(200, b'{"ok": true}')] * 2
        assert up.connections == 2  # two idle connections, each closing on its next request
        assert await post(client, ep) == (200, b'{"ok": true}')
        assert up.connections == 3


@pytest.mark.asyncio
async def test_a_paused_stream_is_never_pooled_paused(client: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "HIGH_WATER", 64)

    async def burst_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the rest, and the end, in one read: past HIGH_WATER
        writer.write(b"".join(b"%x\r\n%s\r\n" % (100, b"y" * 99 + b"\n") for _ in range(50)) + b"0\r\n\r\n")
        await writer.drain()
        await answer_ok(reader, writer)

    async with Upstream(burst_then_ok) as up:
        async with client.post(up.endpoint(), b"{}", Timeouts(total=5), stream=True) as r:
            async for _ in r.iter_any():
                await asyncio.sleep(0.2)  # a slow reader that then leaves
                break
        assert await post(client, up.endpoint(), Timeouts(total=1)) == (200, b'{"ok": true}')
        assert up.connections == 1
        async with client.post(up.endpoint(), b"{}", Timeouts(total=5), stream=True) as r:
            assert r.status == 200 and await r.read() == b'{"ok": true}'


@pytest.mark.asyncio
async def test_read_takes_a_whole_stream_past_high_water(client: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "HIGH_WATER", 64)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(40):
            writer.write(b"64\r\n" + b"z" * 100 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(b"0\r\n\r\n")

    async with Upstream(big) as up:
        async with client.post(up.endpoint(), b"{}", Timeouts(total=2, read=1), stream=True) as r:
            assert await r.read() == b"z" * 4000


@pytest.mark.asyncio
async def test_idle_connections_are_swept_and_close_closes_everything() -> None:
    c = HttpClient(keepalive_s=0.1)
    async with Upstream(answer_ok) as up:
        ep = up.endpoint()
        assert await asyncio.gather(*(post(c, ep) for _ in range(3))) == [(200, b'{"ok": true}')] * 3
        pool = c._pool(ep)
        assert len(pool.idle) == 3
        await asyncio.sleep(0.15)
        assert await post(c, ep) == (200, b'{"ok": true}')  # the stale ones are closed, not kept
        assert len(pool.idle) == 1 and up.connections == 4
        await asyncio.sleep(0.05)
        assert up.open == 1
        busy = c.post(ep, b"{}", Timeouts(total=5), stream=True)
        await busy.__aenter__()  # in use while the client closes
        await c.close()
        await asyncio.sleep(0.05)
        assert up.open == 0


@pytest.mark.asyncio
async def test_bytes_on_an_idle_connection_close_it(client: HttpClient) -> None:
    async def ok_then_stray(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")  # an answer to nothing
        await answer_ok(reader, writer)

    async with Upstream(ok_then_stray) as up:
        assert await post(client, up.endpoint()) == (200, b'{"ok": true}')
        await asyncio.sleep(0.05)
        assert await post(client, up.endpoint()) == (200, b'{"ok": true}')  # not the stray answer
        assert up.connections == 2


@pytest.mark.asyncio
async def test_a_host_name_idna_cannot_encode_is_a_connect_failure(client: HttpClient) -> None:
    with pytest.raises(ConnectFailed):
        await post(client, Endpoint.of("http://" + "a" * 64 + ".example/v1", {}))


@pytest.mark.asyncio
async def test_calls_leave_no_reference_cycles(client: HttpClient) -> None:
    """Each call's garbage is freed by reference counting: a cycle per call (the timeout check's
    closure held itself; a stored error's traceback held its connection) waits for the cyclic
    collector and showed as memory growth under load."""
    async def ok_or_half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            if b"half" in req:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
                await writer.drain()
                return
            writer.write(OK)

    async with Upstream(ok_or_half) as up:
        ep = up.endpoint()
        assert await post(client, ep) == (200, b'{"ok": true}')
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(10):
                assert await post(client, ep, Timeouts(total=5, read=5)) == (200, b'{"ok": true}')
                with pytest.raises(Disconnected):
                    async with client.post(ep, b"half", Timeouts(total=5, read=5)) as r:
                        await r.read()
            gc.collect()
            ours = [o for o in gc.garbage if http.__name__ in (getattr(o, "__module__", None), type(o).__module__)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert ours == []
