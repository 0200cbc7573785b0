"""The AsyncClient's own HTTP/1.1 transport (embquant_client/_transport.py) against a
small scripted asyncio server, then against the real service."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import numpy as np
import pytest

import embquant_client as ec
from embquant_client import _transport
from embquant_client._transport import Headers, Transport, fast_path_for


def answer(status: int = 200, body: bytes = b'{"status":"ready"}', headers=(), reason: str = "OK") -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Scripted:
    """An HTTP/1.1 server on 127.0.0.1 whose answers a test scripts: ``script(req)``
    gets each request (``req.conn``: the connection's number, ``req.n``: the request's
    number on it, ``req.seq``: its number overall) and returns the bytes to send, a
    list of byte strings and delays (seconds) to send them apart, or None to close
    the connection without a word. A request's seq in ``close_after`` (``req.server``)
    closes the connection after its answer."""

    class Req:
        def __init__(self, conn, n, seq, method, path, headers, body):
            self.conn, self.n, self.seq = conn, n, seq
            self.method, self.path, self.headers, self.body = method, path, headers, body

    def __init__(self, script):
        self.script = script
        self.requests: list[Scripted.Req] = []
        self.connections = 0
        self.open = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed_by_client = 0
        self.close_after: set[int] = set()  # request seq numbers
        self.handlers: set[asyncio.Task] = set()

    async def __aenter__(self) -> "Scripted":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.handlers.add(task)
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:  # the test is over (ends quietly: no "task cancelled" log)
            writer.close()
        finally:
            self.handlers.discard(task)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        conn, n = self.connections, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                n += 1
                req = Scripted.Req(conn, n, len(self.requests) + 1, method, path, headers, body)
                req.server = self
                self.requests.append(req)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    out = self.script(req)
                    if asyncio.iscoroutine(out):
                        out = await out
                    if out is None:
                        return
                    for part in out if isinstance(out, list) else [out]:
                        if isinstance(part, (int, float)):
                            await writer.drain()
                            await asyncio.sleep(part)
                        else:
                            writer.write(part)
                    await writer.drain()
                finally:
                    self.in_flight -= 1
                if req.seq in self.close_after:
                    return
        finally:
            self.open -= 1
            writer.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def ok(req):
    return answer(body=json.dumps({"path": req.path, "n": req.n}).encode())


def test_keep_alive_one_connection_for_sequential_requests():
    async def main():
        async with Scripted(ok) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                assert isinstance(c._fast, Transport)
                for i in range(5):
                    assert await c.health() == {"path": "/readyz", "n": i + 1}
            await asyncio.sleep(0.05)
            assert srv.connections == 1 and srv.closed_by_client == 1  # aclose closed it
            r = srv.requests[0]
            assert r.method == "GET" and r.headers["host"] == f"127.0.0.1:{srv.port}"
            assert r.headers["connection"] == "keep-alive" and r.headers["accept"] == "application/json"
            assert "content-length" not in r.headers

    run(main())


def test_request_line_headers_and_body():
    async def main():
        async with Scripted(ok) as srv:
            t = Transport(srv.url + "/prefix/", timeout=5, max_connections=4, keepalive_expiry=5)
            body = bytes(range(256)) * 1024  # large: written apart from the header block
            for b in (b"small", body, b""):
                resp = await t.request("POST", "/quantize", b, {"content-type": "application/msgpack", "x-k": "v"})
                assert resp.status_code == 200 and resp.json()["path"] == "/prefix/quantize"
                r = srv.requests[-1]
                assert r.body == b and r.headers["content-length"] == str(len(b))
                assert r.headers["content-type"] == "application/msgpack" and r.headers["x-k"] == "v"
            await t.aclose()
            assert srv.connections == 1

    run(main())


def test_concurrent_requests_up_to_the_pool_bound_fifo():
    async def slow(req):
        await asyncio.sleep(0.05)
        return ok(req)

    async def main():
        async with Scripted(slow) as srv:
            t = Transport(srv.url, timeout=10, max_connections=4, keepalive_expiry=5)
            order = []

            async def one(i):
                await asyncio.sleep(i * 0.001)  # queue in order
                r = await t.request("GET", f"/{i}", None, {})
                order.append(i)
                return r.json()["path"]

            paths = await asyncio.gather(*(one(i) for i in range(20)))
            assert paths == [f"/{i}" for i in range(20)]
            assert srv.connections == 4 and srv.max_in_flight == 4 and t.opened == 4
            assert order == sorted(order)  # waiters were served first come, first served
            # and the default pool opens one connection per concurrent request
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                await asyncio.gather(*(c.health() for _ in range(30)))
                assert c._fast.opened == 30
            await t.aclose()

    run(main())


def test_content_length_body_arriving_in_pieces():
    payload = json.dumps({"v": list(range(5000))}).encode()

    def script(req):
        whole = answer(body=payload)
        cut = whole.index(b"\r\n\r\n")
        return [whole[:10], 0.01, whole[10:cut + 2], 0.01, whole[cut + 2:cut + 100], 0.01, whole[cut + 100:]]

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                assert await c.health() == {"v": list(range(5000))}
                assert await c.health() == {"v": list(range(5000))}
            assert srv.connections == 1

    run(main())


def test_chunked_body_with_trailers_and_extensions():
    payload = json.dumps({"v": list(range(3000))}).encode()

    def script(req):
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        parts = [head]
        for i in range(0, len(payload), 1000):
            piece = payload[i:i + 1000]
            parts += [b"%x;ext=1\r\n" % len(piece), piece[:3], 0.005, piece[3:] + b"\r\n"]
        parts.append(b"0\r\n" + (b"x-trailer: 1\r\n" if req.n == 1 else b"") + b"\r\n")
        return parts

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                for _ in range(3):
                    assert await c.health() == {"v": list(range(3000))}
            assert srv.connections == 1

    run(main())


def test_body_read_until_close_and_no_body_statuses():
    def script(req):
        if req.path == "/readyz":  # neither length nor chunked: the body ends when the server closes
            req.server.close_after.add(req.seq)
            return b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"until":"close"}'
        return b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n"

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                assert await c.health() == {"until": "close"}
                assert await c.health() == {"until": "close"}
                resp = await c._fast.request("GET", "/x", None, {})
                assert resp.status_code == 204 and resp.content == b""
            assert srv.connections == 3

    run(main())


def test_connection_close_answer_is_not_reused():
    def script(req):
        return answer(headers=["Connection: close"] if req.n == 1 else [])  # the server keeps it open anyway

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                for _ in range(3):
                    await c.health()
            assert [r.conn for r in srv.requests] == [1, 2, 3]

    run(main())


def test_interim_1xx_answer_skipped_and_headers_case_insensitive():
    def script(req):
        busy = answer(status=429, body=b'{"error":{"type":"overloaded","message":"m"}}',
                      headers=["Retry-After: 3", "X-A: 1", "x-a: 2"], reason="Too Many")
        return [b"HTTP/1.1 100 Continue\r\n\r\n", busy]

    async def main():
        async with Scripted(script) as srv:
            t = Transport(srv.url, timeout=5, max_connections=2, keepalive_expiry=5)
            resp = await t.request("GET", "/", None, {})
            assert resp.status_code == 429 and resp.headers.get("RETRY-AFTER") == "3" and resp.headers["x-a"] == "1, 2"
            assert "Content-Type" in resp.headers and resp.text.startswith('{"error"')
            await t.aclose()
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                with pytest.raises(ec.OverloadedError) as e:
                    await c.health()
            assert e.value.headers["retry-after"] == "3"

    run(main())


def test_server_closing_an_idle_connection_is_transparent():
    def script(req):
        if req.seq == 1:
            req.server.close_after.add(1)  # closes after answering, without saying so
        return ok(req)

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                await c.health()
                await asyncio.sleep(0.05)  # the EOF arrives while the connection is idle
                await c.health()
            assert srv.connections == 2 and len(srv.requests) == 2

    run(main())


def test_request_racing_the_servers_close_goes_again_on_a_fresh_connection():
    """The server closes a reused connection on reading the next request, without a
    byte of answer (as when its keep-alive timer fires as the request goes out): the
    transport sends it again, once, on a new connection, for any method."""
    def script(req):
        if req.n >= 2:
            return None
        return ok(req)

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                await c.health()
                await c.health()
                t = c._fast
                r = await t.request("POST", "/fit", b"body", {})
                assert r.json()["n"] == 1
            assert [(r.conn, r.n) for r in srv.requests] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]
            assert srv.requests[-1].body == b"body"

    run(main())


def test_fresh_connection_closed_without_an_answer_is_not_resent():
    async def main():
        async with Scripted(lambda req: None) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                with pytest.raises(ec.APIConnectionLostError, match="connection was lost"):
                    await c.health()
            assert len(srv.requests) == 1

    run(main())


def test_server_closing_mid_answer():
    def script(req):
        if req.n == 1:
            return ok(req)
        req.server.close_after.add(req.seq)
        return answer(body=b'{"status": "ready"}')[:-5]  # part of the body, then the connection closes

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                await c.health()
                with pytest.raises(ec.APIConnectionLostError) as e:
                    await c.health()  # a reused connection, but bytes arrived: not resent
                assert "could not reach" not in str(e.value)
                assert isinstance(e.value.__cause__, httpx.RemoteProtocolError)
            assert len(srv.requests) == 2
            # chunked, cut between chunks
            srv.script = lambda req: (req.server.close_after.add(req.seq),
                                      b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")[1]
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                with pytest.raises(ec.APIConnectionLostError):
                    await c.health()

    run(main())


def test_an_answer_before_the_whole_body_was_read():
    """The service answers 413 (Connection: close) to a body over its limit without
    reading it: the answer is returned, the connection not reused."""
    seen = []

    async def early(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(answer(413, b'{"error":{"type":"payload_too_large","message":"too big"}}',
                            headers=["Connection: close"], reason="Payload Too Large"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    async def main():
        server = await asyncio.start_server(early, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with ec.AsyncClient(url, max_retries=0) as c:
            for _ in range(2):
                with pytest.raises(ec.PayloadTooLargeError, match="too big"):
                    await c._run(c._core._call("POST", "/quantize", {"vectors": b"\0" * (32 << 20)}, lambda b: b))
            assert c._fast.opened == 2
        server.close()
        await server.wait_closed()
        assert len(seen) == 2

    run(main())


def test_connection_lost_is_retried_by_the_client_policy(monkeypatch):
    monkeypatch.setattr("embquant_client._core.RetryPolicy.delay", lambda self, attempt, retry_after=None: 0.0)

    def script(req):
        if req.seq == 1:
            return None  # a fresh connection closed without an answer
        return ok(req)

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=2) as c:
                assert (await c.health())["path"] == "/readyz"
            assert len(srv.requests) == 2

    run(main())


def test_connect_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed

    async def main():
        async with ec.AsyncClient(f"http://127.0.0.1:{port}", max_retries=0) as c:
            with pytest.raises(ec.APIConnectionError, match="could not reach") as e:
                await c.health()
            assert type(e.value) is ec.APIConnectionError and isinstance(e.value.__cause__, httpx.ConnectError)

    run(main())


def test_timeout_and_the_connection_is_not_reused():
    async def script(req):
        if req.seq == 1:
            await asyncio.sleep(2)
        return ok(req)

    async def main():
        async with Scripted(script) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0, timeout=0.2) as c:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                with pytest.raises(ec.APITimeoutError) as e:
                    await c.health()
                assert loop.time() - t0 < 1 and isinstance(e.value.__cause__, httpx.ReadTimeout)
                assert (await c.health())["n"] == 1  # a new connection
            assert srv.connections == 2

    run(main())


def test_pool_wait_counts_against_the_timeout():
    async def script(req):
        await asyncio.sleep(0.3 if req.seq == 1 else 0.5)
        return ok(req)

    async def main():
        async with Scripted(script) as srv:
            t = Transport(srv.url, timeout=2, max_connections=1, keepalive_expiry=5)
            holder = asyncio.create_task(t.request("GET", "/", None, {}))
            await asyncio.sleep(0.05)
            t.timeout = 0.2
            with pytest.raises(httpx.PoolTimeout):
                await t.request("GET", "/", None, {})  # still waiting for the only connection
            with pytest.raises(httpx.ReadTimeout):
                await t.request("GET", "/", None, {})  # got it, but the answer is too slow
            assert (await holder).status_code == 200
            assert t._slots == 0 and not t._waiters
            await t.aclose()

    run(main())


def test_cancelled_request_frees_its_connection():
    async def script(req):
        if req.seq == 1:
            await asyncio.sleep(1)
        return ok(req)

    async def main():
        async with Scripted(script) as srv:
            t = Transport(srv.url, timeout=5, max_connections=1, keepalive_expiry=5)
            task = asyncio.create_task(t.request("GET", "/", None, {}))
            await asyncio.sleep(0.1)
            waiting = asyncio.create_task(t.request("GET", "/", None, {}))
            await asyncio.sleep(0.01)
            task.cancel()
            assert (await waiting).json()["n"] == 1  # on a new connection: the cancelled one is dropped
            assert t._slots == 1 and srv.connections == 2
            await t.aclose()

    run(main())


@pytest.mark.parametrize("bad", [
    "oversized", "not-http", "http2", "bad-length", "bad-chunk",
])
def test_malformed_answers_raise_remote_protocol_error(bad):
    def script(req):
        if bad == "oversized":
            return b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * (70 * 1024) + b"\r\ncontent-length: 0\r\n\r\n"
        if bad == "not-http":
            return b"SSH-2.0-OpenSSH\r\n\r\n"
        if bad == "http2":
            return b"HTTP/2 200\r\ncontent-length: 0\r\n\r\n"
        if bad == "bad-chunk":
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\ncontent-length: \xb2\r\n\r\n"

    async def main():
        async with Scripted(script) as srv:
            t = Transport(srv.url, timeout=5, max_connections=2, keepalive_expiry=5)
            with pytest.raises(httpx.RemoteProtocolError):
                await t.request("GET", "/", None, {})
            await t.aclose()
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                with pytest.raises(ec.APIConnectionLostError):
                    await c.health()

    run(main())


def test_oversized_header_block_refused_before_it_ends():
    def script(req):
        return [b"HTTP/1.1 200 OK\r\n", b"x: " + b"a" * (MAX + 10), 5]

    MAX = _transport.MAX_HEADER_BYTES

    async def main():
        async with Scripted(script) as srv:
            t = Transport(srv.url, timeout=3, max_connections=2, keepalive_expiry=5)
            with pytest.raises(httpx.RemoteProtocolError, match="too large"):
                await t.request("GET", "/", None, {})
            await t.aclose()

    run(main())


def test_idle_connections_expire(monkeypatch):
    monkeypatch.setattr("embquant_client._client.KEEPALIVE_EXPIRY_S", 0.1)

    async def main():
        async with Scripted(ok) as srv:
            async with ec.AsyncClient(srv.url, max_retries=0) as c:
                assert c._fast.keepalive_expiry == 0.1
                await c.health()
                await c.health()
                await asyncio.sleep(0.2)
                await c.health()
                await asyncio.sleep(0.05)
                assert srv.connections == 2 and srv.closed_by_client == 1  # the expired one was closed
            assert [r.conn for r in srv.requests] == [1, 1, 2]

    run(main())


def test_aclose_closes_every_connection():
    async def script(req):
        if req.path == "/slow":
            await asyncio.sleep(0.5)
        return ok(req)

    async def main():
        async with Scripted(script) as srv:
            c = ec.AsyncClient(srv.url, max_retries=0)
            await asyncio.gather(*(c.health() for _ in range(5)))
            busy = asyncio.create_task(c._fast.request("GET", "/slow", None, {}))
            await asyncio.sleep(0.05)
            assert srv.open == 5
            conns = list(c._fast._all)
            assert len(conns) == 5
            await c.aclose()
            await asyncio.sleep(0.05)
            assert all(conn.transport.is_closing() for conn in conns)
            assert srv.open == 1 and srv.closed_by_client == 4  # the fifth server handler is still asleep
            assert srv.connections == 5  # the request cut off by aclose was not sent again
            with pytest.raises(httpx.TransportError):
                await busy
            with pytest.raises(RuntimeError, match="closed"):
                await c.health()

    run(main())


def test_a_client_used_in_two_event_loops():
    async def main(srv_port):
        c = clients.setdefault("c", ec.AsyncClient(f"http://127.0.0.1:{srv_port}", max_retries=0))
        return await c.health()

    clients: dict = {}

    async def serve():
        async with Scripted(ok) as srv:
            loop = asyncio.get_running_loop()
            assert (await loop.run_in_executor(None, lambda: asyncio.run(main(srv.port))))["n"] == 1
            assert (await loop.run_in_executor(None, lambda: asyncio.run(main(srv.port))))["n"] == 1
            assert srv.connections == 2

    run(serve())


def test_which_urls_take_the_fast_path(monkeypatch):
    for k in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(k, raising=False)
    assert fast_path_for("http://127.0.0.1:8000") == ("127.0.0.1", 8000, "127.0.0.1:8000", "")
    assert fast_path_for("http://example.com/api/") == ("example.com", 80, "example.com", "/api")
    assert fast_path_for("http://[::1]:9/") == ("::1", 9, "[::1]:9", "")
    for url in ("https://example.com", "http://u:p@example.com", "http://example.com?x=1", "unix:///s"):
        assert fast_path_for(url) is None
    c = ec.AsyncClient("https://example.com")
    assert c._fast is None and isinstance(c._http, httpx.AsyncClient)
    own = httpx.AsyncClient()
    c = ec.AsyncClient("http://127.0.0.1:1", http_client=own)
    assert c._fast is None and c._http is own
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert fast_path_for("http://example.com") is None  # through the proxy, as httpx would
    assert fast_path_for("http://localhost:8000") is not None


def test_headers_mapping():
    h = Headers({"content-type": "application/json", "retry-after": "2"})
    assert h.get("Retry-After") == "2" and h["CONTENT-TYPE"] == "application/json" and "Retry-After" in h
    assert dict(h) == {"content-type": "application/json", "retry-after": "2"}
    assert h.get("missing", "d") == "d"


# -- against the real service ---------------------------------------------------------

@pytest.mark.slow
def test_real_service_async_round_trip_equals_sync(server):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    with ec.Client(server.url) as c:
        fitted = c.fit(x[:200], "lloyd", bits=3)
        enc = c.quantize(x, codec=fitted, quality=True)
        y = c.dequantize(enc)
        by_scheme = c.quantize(x[:5], "absmax", bits=4)
        schemes = c.schemes()
        limits = c.limits()

    async def main():
        async with ec.AsyncClient(server.url) as ac:
            assert isinstance(ac._fast, Transport)
            aenc = await ac.quantize(x, codec=fitted, quality=True)
            ay = await ac.dequantize(aenc)
            singles = await asyncio.gather(*(ac.quantize(x[k:k + 1], codec=fitted) for k in range(64)))
            chunked = await ac.quantize(x, codec=fitted, chunk_rows=37, concurrency=3)
            with pytest.raises(ec.UnknownSchemeError, match="known schemes"):
                await ac.quantize(np.ones((2, 4)), "nope")
            with pytest.raises(ec.CodecMismatchError):
                await ac.dequantize(np.zeros((2, 5), np.int64), enc.side, codec=enc.codec)
            with pytest.raises(ec.NotFoundError):
                await ac._run(ac._core._call("GET", "/nope", None, lambda b: b))
            metrics = await ac._fast.request("GET", "/metrics", None, {})
            return (aenc, ay, singles, chunked, await ac.quantize(x[:5], "absmax", bits=4), await ac.schemes(),
                    await ac.limits(), await ac.health(), metrics)

    aenc, ay, singles, chunked, aby_scheme, aschemes, alimits, health, metrics = asyncio.run(main())
    assert np.array_equal(aenc.codes, enc.codes) and np.array_equal(aenc.side, enc.side)
    assert aenc.quality == enc.quality and aenc.codec == enc.codec
    assert np.array_equal(ay, y)
    assert np.array_equal(np.concatenate([s.codes for s in singles]), enc.codes[:64])
    assert np.array_equal(chunked.codes, enc.codes)
    assert np.array_equal(aby_scheme.codes, by_scheme.codes) and aby_scheme.codec == by_scheme.codec
    assert aschemes == schemes and alimits == limits and health["status"] == "ready"
    assert metrics.status_code == 200 and b"embquant_requests_total" in metrics.content
