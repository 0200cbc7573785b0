"""A lean asyncio HTTP/1.1 transport for AsyncClient (plain http:// only).

httpx's async pool costs O(pooled connections) per request (it scans every
connection, and asks anyio for each socket's attributes to see whether it
expired), plus its request and response models: under a few hundred concurrent
tasks the client, not the service, was the bottleneck. This transport keeps a
LIFO list of idle keep-alive connections, hands a released connection straight to
the oldest waiter, and parses answers in the protocol's ``data_received``: one
future and one timer per request.

Errors are httpx's exception classes, raised where httpx raises them, so the
client's error mapping and retries are the same on either path:

- ConnectError / ConnectTimeout: the connection could not be opened;
- ReadTimeout (WriteTimeout while the request was still being written, PoolTimeout
  while waiting for a connection): the client's timeout, which covers the whole
  request (waiting for a connection, connecting, writing, reading);
- RemoteProtocolError: the server closed the connection before a complete answer,
  or answered something that is not HTTP/1.x (or a header block over 64 KiB);
- ReadError: the connection was reset.

A request that fails on a reused connection before any byte of its answer arrived
(the server closed the idle connection as the request went out) is sent again,
once, on a fresh connection: the server cannot have read it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import httpx

#: Largest response header block accepted (status line and headers).
MAX_HEADER_BYTES = 64 * 1024
#: Largest chunk-size line (with extensions) in a chunked body.
MAX_CHUNK_LINE = 4096
#: A body at least this large is written apart from the header block (not copied).
_JOIN_BELOW = 64 * 1024

_NO_BODY_STATUS = (204, 304)


class Headers(dict):
    """Response headers: lower-case names (as httpx.Headers iterates them), looked up
    case-insensitively; repeated headers joined with ", " (as httpx.Headers.get)."""

    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key.lower() if isinstance(key, str) else key)


class Response:
    """The little of httpx.Response the client reads."""

    __slots__ = ("status_code", "headers", "content", "http_version")

    def __init__(self, status_code: int, headers: Headers, content: bytes, http_version: str = "HTTP/1.1"):
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.http_version = http_version

    @property
    def encoding(self) -> str:
        ctype = self.headers.get("content-type", "")
        for part in ctype.split(";")[1:]:
            k, _, v = part.partition("=")
            if k.strip().lower() == "charset" and v.strip():
                return v.strip().strip('"')
        return "utf-8"

    @property
    def text(self) -> str:
        try:
            return self.content.decode(self.encoding, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self, **kwargs: Any) -> Any:
        return json.loads(self.content, **kwargs)

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class _Lost(Exception):
    """The connection ended before any byte of the answer arrived (internal: the
    request may be sent again when the connection was a reused one)."""

    def __init__(self, error: httpx.TransportError):
        super().__init__(str(error))
        self.error = error


# parser states
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE = range(7)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its answer parsed as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the server closed it, it broke, or we closed it
        self.reusable = True  # may carry another request once this answer is complete
        self.reused = False  # has carried a request before
        self.idle_since = 0.0
        self.buf = bytearray()
        self.state = _IDLE
        self.waiter: asyncio.Future | None = None
        self.got_bytes = False
        self.status = 0
        self.version = ""
        self.headers: Headers | None = None
        self.remaining = 0
        self.body: bytearray | None = None
        self.no_body = False  # a HEAD request: its answer has no body whatever it says

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.state == _IDLE:  # nothing asked: the server is not speaking HTTP to us
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]
            return
        self.got_bytes = True
        self.buf += data
        try:
            self._parse()
        except httpx.RemoteProtocolError as e:
            self._fail(e)

    def eof_received(self) -> bool:
        self.closed = True
        if self.state == _UNTIL_CLOSE:
            self._finish(bytes(self.body or b"") + bytes(self.buf))
        elif self.state != _IDLE:
            self._fail(self._closed_error(None))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == _UNTIL_CLOSE and exc is None:
            self._finish(bytes(self.body or b"") + bytes(self.buf))
        elif self.state != _IDLE:
            self._fail(self._closed_error(exc))

    # -- a request ------------------------------------------------------------------
    def send(self, data: bytes, body: Any, no_body: bool = False) -> asyncio.Future:
        self.waiter = self.loop.create_future()
        self.no_body = no_body
        self.state = _HEAD
        self.got_bytes = False
        self.buf.clear()
        self.transport.write(data)  # type: ignore[union-attr]
        if body:
            if isinstance(body, (bytes, bytearray, memoryview)):
                self.transport.write(body)  # type: ignore[union-attr]
            else:  # a Body: its pieces (what the socket does not take at once is buffered)
                for piece in body:
                    self.transport.write(piece)  # type: ignore[union-attr]
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def writing(self) -> bool:
        t = self.transport
        return t is not None and not t.is_closing() and t.get_write_buffer_size() > 0

    # -- answers --------------------------------------------------------------------
    def _closed_error(self, exc: Exception | None) -> Exception:
        if not self.got_bytes:
            if exc is None:
                err: httpx.TransportError = httpx.RemoteProtocolError("Server disconnected without sending a response.")
            elif self.writing():
                err = httpx.WriteError(repr(exc))
            else:
                err = httpx.ReadError(repr(exc))
            return _Lost(err)
        if exc is None:
            return httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        return httpx.ReadError(repr(exc))

    def _fail(self, exc: Exception) -> None:
        self.state = _IDLE
        self.reusable = False
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        if not self.closed:
            self.close()

    def _finish(self, content: bytes) -> None:
        self.state = _IDLE
        if self.buf or self.writing():  # bytes past the answer, or an answer before the
            self.reusable = False       # whole request went out: not a connection to reuse
        self.buf.clear()
        self.body = None
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(Response(self.status, self.headers, content, self.version))  # type: ignore[arg-type]

    def _parse(self) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        raise httpx.RemoteProtocolError("response header block too large")
                    return
                if end > MAX_HEADER_BYTES:
                    raise httpx.RemoteProtocolError("response header block too large")
                head = bytes(buf[:end])
                del buf[:end + 4]
                if self._head(head):
                    return
            elif state == _LENGTH:
                n = self.remaining
                if len(buf) < n:
                    return
                content = bytes(buf[:n])
                del buf[:n]
                self._finish(content)
                return
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise httpx.RemoteProtocolError("chunk size line too long")
                    return
                line = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[:end + 2]
                if not line or line.strip(b"0123456789abcdefABCDEF"):
                    raise httpx.RemoteProtocolError(f"bad chunk size {line[:40]!r}")
                size = int(line, 16)
                if size == 0:
                    self.state = _TRAILERS
                else:
                    self.remaining = size
                    self.state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                n = self.remaining
                if len(buf) < n + 2:
                    return
                if buf[n:n + 2] != b"\r\n":
                    raise httpx.RemoteProtocolError("chunk not followed by CRLF")
                self.body += buf[:n]  # type: ignore[operator]
                del buf[:n + 2]
                self.state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > MAX_HEADER_BYTES:
                            raise httpx.RemoteProtocolError("trailer block too large")
                        return
                    del buf[:end + 4]
                self._finish(bytes(self.body))  # type: ignore[arg-type]
                return
            else:  # _UNTIL_CLOSE: everything until the server closes
                if buf:
                    self.body += buf  # type: ignore[operator]
                    buf.clear()
                return

    def _head(self, head: bytes) -> bool:
        """Read a status line and headers; set the body state. True when done here."""
        lines = head.split(b"\r\n")
        status_line = lines[0]
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() \
                or rest[3:4] not in (b"", b" "):
            raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        status = int(code)
        headers = Headers()
        last = None
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):  # obsolete line folding
                if last is None:
                    raise httpx.RemoteProtocolError("malformed header line")
                headers[last] += " " + line.strip().decode("latin-1")
                continue
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}")
            key = name.decode("latin-1").lower()
            val = value.strip().decode("latin-1")
            if key in headers:
                if key == "content-length" and headers[key] != val:
                    raise httpx.RemoteProtocolError("conflicting Content-Length headers")
                if key != "content-length":
                    headers[key] = headers[key] + ", " + val
            else:
                headers[key] = val
            last = key
        if 100 <= status < 200 and status != 101:  # an interim answer: the real one follows
            return False
        self.status = status
        self.version = version.decode()
        self.headers = headers
        conn = headers.get("connection", "").lower()
        if version == b"HTTP/1.0":
            if "keep-alive" not in conn:
                self.reusable = False
        elif "close" in conn:
            self.reusable = False
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if status in _NO_BODY_STATUS or status < 200 or self.no_body:
            self._finish(b"")
            return True
        if te is not None:
            if te.lower().rsplit(",", 1)[-1].strip() != "chunked":
                raise httpx.RemoteProtocolError(f"unsupported Transfer-Encoding {te!r}")
            self.body = bytearray()
            self.state = _CHUNK_SIZE
            return False
        if cl is not None:
            if not (cl.isascii() and cl.isdigit()):
                raise httpx.RemoteProtocolError(f"bad Content-Length {cl!r}")
            self.remaining = int(cl)
            self.state = _LENGTH
            return False
        self.reusable = False
        self.body = bytearray()
        self.state = _UNTIL_CLOSE
        return False


def fast_path_for(base_url: str) -> tuple[str, int, str, str] | None:
    """(host, port, Host header, path prefix) when this transport can serve
    ``base_url`` directly: plain http, no credentials or query, no proxy configured
    for it (httpx reads HTTP_PROXY and friends). None: use httpx."""
    try:
        u = urlsplit(base_url)
        port = u.port
    except ValueError:
        return None
    if u.scheme.lower() != "http" or not u.hostname or u.username is not None or u.password is not None \
            or u.query or u.fragment or not base_url.isascii():
        return None
    proxies = urllib.request.getproxies_environment()
    if proxies.get("http") or proxies.get("all"):
        if not urllib.request.proxy_bypass_environment(u.hostname, proxies):
            return None
    return u.hostname, port or 80, u.netloc, u.path.rstrip("/")


class Transport:
    """A pool of keep-alive HTTP/1.1 connections to one host; ``request`` returns a
    Response or raises httpx's exception classes (see the module's docstring)."""

    def __init__(self, base_url: str, *, timeout: float, max_connections: int, keepalive_expiry: float):
        target = fast_path_for(base_url)
        if target is None:
            raise ValueError(f"not a plain http:// URL this transport serves: {base_url!r}")
        self.host, self.port, host_header, self.prefix = target
        self.timeout = timeout
        self.max_connections = max(1, int(max_connections))
        self.keepalive_expiry = keepalive_expiry
        self._host_line = f"Host: {host_header}\r\n".encode("ascii")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_Connection] = []  # LIFO: the most recently used on top
        self._all: set[_Connection] = set()
        self._slots = 0  # connections open, being opened, or promised to a waiter
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = False
        self.opened = 0  # connections opened in all (for tests and diagnostics)

    # -- the pool -------------------------------------------------------------------
    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # first use, or a new event loop (asyncio.run again): the old loop's
            # connections cannot be used from this one
            for c in self._all:
                c.closed = True
                try:
                    c.abort()
                except RuntimeError:  # their loop is closed
                    pass
            self._idle.clear()
            self._all.clear()
            self._waiters.clear()
            self._slots = 0
            self._loop = loop
        return loop

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection | None:
        """An idle connection, or None: a slot to open a new one in."""
        idle = self._idle
        if idle:
            now = loop.time()
            while idle:
                c = idle.pop()
                if not c.closed and now - c.idle_since < self.keepalive_expiry:
                    return c
                self._discard(c)
                self._slots -= 1
        if self._slots < self.max_connections and not self._waiters:
            self._slots += 1
            return None
        fut = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_at(deadline, _expire, fut)
        try:
            got = await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())  # handed over as we were cancelled: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise
        finally:
            timer.cancel()
        if got is not None and (got.closed or loop.time() - got.idle_since >= self.keepalive_expiry):
            self._discard(got)
            return None  # its slot is ours
        return got

    def _release(self, conn: _Connection | None) -> None:
        """Give back a connection (or an unused slot, None) after a request."""
        if conn is not None and (conn.closed or not conn.reusable or self._closed):
            self._discard(conn)
            conn = None
        if conn is not None:
            conn.reused = True
            conn.idle_since = self._loop.time()  # type: ignore[union-attr]
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(conn)  # the oldest waiter first
                return
        if conn is None:
            self._slots -= 1
            return
        idle = self._idle
        idle.append(conn)
        # the bottom of the LIFO list is the longest idle: close what has expired
        while len(idle) > 1 and (idle[0].closed or conn.idle_since - idle[0].idle_since >= self.keepalive_expiry):
            self._discard(idle.pop(0))
            self._slots -= 1

    def _discard(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if not conn.closed or (conn.transport is not None and not conn.transport.is_closing()):
            conn.close()

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), self.host, self.port),
                max(deadline - loop.time(), 0))
        except (asyncio.TimeoutError, TimeoutError):
            raise httpx.ConnectTimeout(f"timed out connecting to {self.host}:{self.port}") from None
        except OSError as e:
            raise httpx.ConnectError(str(e) or repr(e)) from None
        self.opened += 1
        if self._closed:
            conn.close()
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        self._all.add(conn)
        return conn

    # -- a request ------------------------------------------------------------------
    async def request(self, method: str, path: str, body: Any, headers: dict[str, str]) -> Response:
        """Send ``method path`` (relative to the base URL) and return its answer."""
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        loop = self._bind()
        deadline = loop.time() + self.timeout
        head = [f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("ascii"), self._host_line]
        if body is not None:
            head.append(b"Content-Length: %d\r\n" % len(body))
        for k, v in headers.items():
            head.append(f"{k}: {v}\r\n".encode("latin-1"))
        head.append(b"Connection: keep-alive\r\n\r\n")
        data = b"".join(head)
        if body and len(body) < _JOIN_BELOW:
            data, body = data + bytes(body), None

        conn = await self._acquire(loop, deadline)
        try:
            if conn is None:
                conn = await self._connect(loop, deadline)
            try:
                resp = await self._exchange(loop, conn, method, data, body, deadline)
            except _Lost as lost:
                if not conn.reused or self._closed:
                    raise lost.error from None
                # the server closed this idle connection as the request went out: it
                # cannot have read it, so it goes again (once) on a fresh connection
                self._discard(conn)
                conn = None
                conn = await self._connect(loop, deadline)
                try:
                    resp = await self._exchange(loop, conn, method, data, body, deadline)
                except _Lost as again:
                    raise again.error from None
        except BaseException:
            if conn is not None:
                if not conn.closed:
                    conn.abort()  # in an unknown state (cancelled, timed out, broken)
                conn.reusable = False
            self._release(conn)
            raise
        self._release(conn)
        return resp

    @staticmethod
    async def _exchange(loop, conn: _Connection, method: str, data: bytes, body: Any,
                        deadline: float) -> Response:
        fut = conn.send(data, body, method == "HEAD")
        timer = loop.call_at(deadline, _time_out, conn, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        self._closed = True
        for w in self._waiters:
            if not w.done():
                w.set_exception(RuntimeError("Cannot send a request, as the client has been closed."))
        self._waiters.clear()
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for c in list(self._all):
            try:
                c.close()
            except RuntimeError:  # its loop is closed
                pass
        self._idle.clear()
        self._all.clear()
        if loop is not None and loop is running:
            await asyncio.sleep(0)  # let the transports finish closing


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(httpx.PoolTimeout("timed out waiting for a connection"))


def _time_out(conn: _Connection, fut: asyncio.Future) -> None:
    if fut.done():
        return
    if conn.writing():
        fut.set_exception(httpx.WriteTimeout("timed out writing the request"))
    else:
        fut.set_exception(httpx.ReadTimeout("timed out waiting for the answer"))
    conn.state = _IDLE
    conn.reusable = False
    conn.abort()


__all__ = ["Headers", "Response", "Transport", "fast_path_for", "MAX_HEADER_BYTES"]
