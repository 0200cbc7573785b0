"""Admission from the headers, as a pure ASGI middleware: a request the service
would refuse is refused before a byte of its body is read.

For every POST, in this order:

1. a declared Content-Length over ``max_body_bytes``: 413;
2. a Content-Type other than ``application/json`` or msgpack: 415 (a browser page
   cannot then POST here cross-origin without a CORS preflight);
3. on a route that queues work, a full worker queue, or queued work expected to take
   longer than the longest deadline a request may ask for: 429 with Retry-After, so
   48 concurrent uploads to a busy server cost their headers, not their bodies
   (`Worker.submit` checks the expected wait again against the request's own
   deadline).

The body is then counted as it arrives (413 past the limit, for a body without a
Content-Length or one longer than declared) and must arrive in full within
``body_timeout_s`` (408 beyond: a Content-Length larger than the body never hangs).
"""

from __future__ import annotations

import asyncio

import orjson

from ..errors import PayloadTooLarge, RequestTimeout
from .bodies import ACCEPTED, media_type
from .errors import error_body

#: Scope key: the request's Content-Length as Admission parsed it (absent where the
#: request gives none, or none that parses); `fast.Incoming` sizes the body's buffer by it.
BODY_LENGTH = "embquant.body_length"

#: Routes whose work goes through the worker queue.
QUEUED = frozenset({"/fit", "/quantize", "/dequantize", "/score", "/evaluate"})


class Admission:
    def __init__(self, app, settings, worker, metrics=None):
        self.app = app
        self.settings = settings
        self.worker = worker
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        st = self.settings
        limit = st.max_body_bytes
        length = ctype = None
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                length = v
            elif k == b"content-type":
                ctype = v
        n = None
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = None
        if n is not None and n >= 0:
            scope[BODY_LENGTH] = n
        drain = Drain(receive, n, DRAIN_FACTOR * limit, min(st.body_timeout_s, DRAIN_SECONDS))
        if n is not None and n > limit:
            return await reject(send, 413, "payload_too_large",
                                 f"request body of {n} bytes exceeds the limit of {limit} bytes (EMBQUANT_MAX_BODY_BYTES)",
                                 drain=drain, metrics=self.metrics)
        if media_type(ctype) not in ACCEPTED:
            got = "none" if ctype is None else repr(ctype.decode("latin-1"))
            return await reject(send, 415, "unsupported_media_type",
                                 "request bodies must be sent as Content-Type: application/json or "
                                 f"application/msgpack, got {got}", drain=drain, metrics=self.metrics)
        if scope["path"] in QUEUED:
            full = self.worker.queue_depth >= st.queue_size
            wait = self.worker.expected_wait_s
            if full or wait > st.max_request_timeout_s:
                if self.metrics is not None:
                    self.metrics.rejected("queue_full" if full else "expected_wait")
                why = (f"the work queue is full ({st.queue_size} jobs)" if full else
                       f"the work queued would take about {wait:.0f} s, past the longest deadline "
                       f"({st.max_request_timeout_s:g} s)")
                after = max(st.retry_after_s, 0 if full else min(wait, 60.0))
                return await reject(send, 429, "overloaded", f"{why}; retry shortly",
                                     [(b"retry-after", str(max(1, round(after))).encode())], drain=drain,
                                     metrics=self.metrics)

        # One timer for the whole body (armed at the first read, cancelled when the body
        # is in or the request ends), not a timeout per read: a large body arrives in
        # some 200 reads of 64 KiB, and asyncio.timeout per read was a third of their cost.
        seen = 0
        done = False
        waiting = expired = False
        timer = task = None
        timeout = st.body_timeout_s

        def expire() -> None:
            nonlocal expired
            expired = True
            if waiting:  # else the next read raises
                task.cancel()

        def timed_out() -> RequestTimeout:
            return RequestTimeout(
                f"the request body did not arrive in full within {timeout:g} s (EMBQUANT_BODY_TIMEOUT_S); "
                f"{seen} bytes received"
            )

        async def guarded():
            nonlocal seen, done, waiting, timer, task
            if done:  # the body is in: what follows is a disconnect, however late
                return await receive()
            if expired:
                raise timed_out()
            if timer is None:
                task = asyncio.current_task()
                timer = asyncio.get_running_loop().call_later(timeout, expire)
            waiting = True
            try:
                msg = await receive()
            except asyncio.CancelledError:
                # ours only if the timer fired and no one else cancelled this task too
                uncancel = getattr(task, "uncancel", None)  # Python 3.11+
                if expired and (uncancel is None or uncancel() == 0):
                    raise timed_out() from None
                raise
            finally:
                waiting = False
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    e = PayloadTooLarge(f"request body exceeds the limit of {limit} bytes (EMBQUANT_MAX_BODY_BYTES)")
                    e.close_connection = True
                    raise e
                done = not msg.get("more_body", False)
            else:
                done = True
            if done:
                timer.cancel()
            return msg

        try:
            return await self.app(scope, guarded, send)
        finally:
            if timer is not None:
                timer.cancel()


if hasattr(asyncio, "timeout"):  # Python 3.11: a deadline on the current task, no task per call

    async def _within(aw, seconds: float):
        async with asyncio.timeout(max(seconds, 0.0)):
            return await aw
else:  # pragma: no cover - Python 3.10

    async def _within(aw, seconds: float):
        return await asyncio.wait_for(aw, max(seconds, 0.0))


#: A refused body is read and dropped (never kept) before the answer, up to this many
#: times the body limit and DRAIN_SECONDS: a client still sending when the server
#: answers and closes gets a TCP reset, and most clients then report the reset, not
#: the answer. Beyond those bounds the connection is closed unread.
DRAIN_FACTOR = 4
DRAIN_SECONDS = 10.0


class Drain:
    def __init__(self, receive, declared: int | None, cap: int, seconds: float):
        self.receive, self.declared, self.cap, self.seconds = receive, declared, cap, seconds

    async def __call__(self) -> bool:
        """Read the rest of the body and drop it; True if it all came in time."""
        if self.declared is not None and self.declared > self.cap:
            return False
        seen = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + self.seconds
        try:
            while True:
                msg = await _within(self.receive(), end - loop.time())
                if msg["type"] != "http.request":
                    return False  # the client went away
                seen += len(msg.get("body", b""))
                if seen > self.cap:
                    return False
                if not msg.get("more_body", False):
                    return True
        except (asyncio.TimeoutError, TimeoutError):
            return False


async def reject(send, status: int, type_: str, message: str, headers=(), drain: Drain | None = None,
                  metrics=None) -> None:
    """An error answer from a layer in front of the app (the one body; counted in
    ``embquant_errors_total``), after draining the unread body when ``drain`` allows."""
    if metrics is not None:
        metrics.error(type_)
    body = orjson.dumps(error_body(type_, message))
    drained = drain is not None and await drain()
    await send({
        "type": "http.response.start",
        "status": status,
        # A body left unread means the connection cannot carry another request.
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *(() if drained else ((b"connection", b"close"),)), *headers],
    })
    await send({"type": "http.response.body", "body": body})
