"""Connection time limits uvicorn lacks: a header read timeout.

uvicorn closes a kept-alive connection that stays idle after a response, but a new
connection that never sends a complete request header (or a kept-alive one that
starts a header and stops) is held forever: enough of them exhaust the process's
file descriptors. `protocol_class` returns uvicorn's HTTP protocol with one timer
added: armed when a connection opens, and when the first bytes of a next request
arrive on a kept-alive one; if no complete header has arrived when it fires, the
connection is closed. The body's own deadline is `api.admission` (408).
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("embquant.api")


#: Scope key: time.perf_counter() when the request's first bytes were read.
RECEIVED = "embquant.received"


def _base_protocol() -> type[asyncio.Protocol]:
    """The protocol uvicorn's http="auto" would pick: httptools when installed, else h11."""
    try:
        import httptools  # noqa: F401

        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


def protocol_class(header_timeout_s: float, base: type | None = None) -> type[asyncio.Protocol]:
    base = base or _base_protocol()

    class HeaderTimeout(base):  # type: ignore[misc, valid-type]
        """uvicorn's protocol plus a header read timeout of ``header_timeout_s``."""

        _header_timer: asyncio.TimerHandle | None = None
        _cycle_at_arm: object = None
        _received: float | None = None
        _stamped: object = False  # the cycle before the request _received stamps

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            # The first bytes after a finished answer start a new request: its header
            # has header_timeout_s to arrive (uvicorn itself cancels its keep-alive
            # timer here and would then wait forever).
            idle = self.cycle is None or self.cycle.response_complete
            if idle:
                if self._stamped is not self.cycle:  # the first bytes of a new request
                    self._stamped = self.cycle
                    self._received = time.perf_counter()
                if self._header_timer is None or self.cycle is not self._cycle_at_arm:
                    self._arm_header_timer()
            super().data_received(data)

        def on_headers_complete(self) -> None:  # httptools' hook (h11 has none)
            super().on_headers_complete()
            # when the request's first bytes were read: the request metrics count the
            # time it waited in the event loop before the app saw it, too
            self.scope[RECEIVED] = self._received

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._cycle_at_arm = self.cycle
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not self._cycle_at_arm:
                return  # a complete header arrived: the request is under way
            if not self.transport.is_closing():
                log.debug("closing a connection that sent no complete header in %gs", header_timeout_s)
                self.transport.close()

    HeaderTimeout.__name__ = HeaderTimeout.__qualname__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeout
