"""The work routes without the framework's per-request layers.

The profile of 256 connections sending single vectors put about half the event
loop's time in Starlette and FastAPI's layers around each request (exception and
telemetry middleware, routing, dependency solving, query-string parsing) and 1% in
the codec. `FastPath` is a pure ASGI middleware that sends ``POST /fit``,
``/quantize`` and ``/dequantize`` straight to the same route functions FastAPI
documents (they read only ``request.app.state``, ``request.headers`` and
``await request.body()``), with the same error bodies; every other request goes on
to FastAPI (docs, schemes, limits, health, metrics).
"""

from __future__ import annotations

import numpy as np
from starlette.requests import ClientDisconnect

from ..errors import EmbquantError
from .errors import domain_response, internal_response
from .limits import BODY_LENGTH


class _State:
    __slots__ = ("state",)

    def __init__(self, state):
        self.state = state


class Incoming:
    """What a route function reads of a request, from the ASGI scope."""

    __slots__ = ("app", "headers", "_receive", "url", "_length")

    def __init__(self, app, scope, receive):
        self.app = app
        self.headers = _Headers(scope["headers"])
        self._receive = receive
        self.url = _Url(scope["path"])
        self._length = scope.get(BODY_LENGTH)

    async def body(self) -> bytes | memoryview:
        """The whole body. One chunk comes back as it is; a body in several chunks is
        copied, chunk by chunk as it arrives, into one writable buffer (the arrays that
        `bodies` reads in place need no copy to be writable): of the Content-Length
        where the request gives one (as `Admission` parsed it, having refused a length
        past the body limit), so the chunks are never all held beside their join; else
        joined."""
        msg = await self._message()
        first = msg.get("body", b"")
        if not msg.get("more_body", False):
            return first
        n = self._length
        if n is None or n < len(first):
            return await self._joined([first])
        buf = np.empty(n, np.uint8)  # not zeroed: every byte is written below
        view = memoryview(buf)
        view[:len(first)] = first
        at = len(first)
        while True:
            msg = await self._message()
            chunk = msg.get("body", b"")
            end = at + len(chunk)
            if end > n:  # more than announced (the HTTP parser does not let that happen)
                return await self._joined([bytes(view[:at]), chunk], msg)
            view[at:end] = chunk
            at = end
            if not msg.get("more_body", False):
                return view if at == n else view[:at]

    async def _joined(self, chunks: list, last: dict | None = None) -> bytearray:
        msg = last
        while msg is None or msg.get("more_body", False):
            msg = await self._message()
            chunks.append(msg.get("body", b""))
        return bytearray().join(chunks)

    async def _message(self) -> dict:
        while True:
            msg = await self._receive()
            if msg["type"] == "http.request":
                return msg
            if msg["type"] == "http.disconnect":
                raise ClientDisconnect()


class _Headers:
    """The two headers a route reads (``content-type``, ``accept``), looked up when read
    instead of a dict of every header decoded per request. A repeated header reads as
    its last value, as Admission's check of the Content-Type does."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        found = default
        for k, v in self.raw:
            if k == key:
                found = v.decode("latin-1")
        return found


class _Url:
    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path


class FastPath:
    def __init__(self, app, state, routes: dict):
        """``routes``: path -> (route function, the APIRoute that documents it)."""
        self.app = app
        self.holder = _State(state)
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        hit = self.routes.get(scope["path"])
        if hit is None:
            return await self.app(scope, receive, send)
        fn, route = hit
        scope["route"] = route  # for the request metrics' route label
        request = Incoming(self.holder, scope, receive)
        try:
            response = await fn(request)
        except EmbquantError as e:
            response = domain_response(request, e)
        except ClientDisconnect:
            return
        except Exception as e:  # noqa: BLE001 - one body for every failure, never a bare 500
            response = internal_response(request, e)
        await response(scope, receive, send)
