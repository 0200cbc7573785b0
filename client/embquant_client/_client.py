"""Client and AsyncClient: the same methods, I/O only; everything else is in Core."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from ._core import Call, Core, RetryPolicy
from ._models import Encoded, Fitted

DEFAULT_URL = "http://127.0.0.1:8000"


class _Base:
    def __init__(self, base_url: str, timeout: float, max_retries: int, wire: str):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._core = Core(wire=wire, retry=RetryPolicy(max_retries=max_retries))


class Client(_Base):
    """Synchronous client.

    >>> c = Client("http://127.0.0.1:8000")
    >>> enc = c.quantize(x, scheme="lloyd", bits=4)
    >>> y = c.dequantize(enc)
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 60.0, max_retries: int = 3,
                 wire: str = "base64", http_client: httpx.Client | None = None):
        super().__init__(base_url, timeout, max_retries, wire)
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=timeout)

    def _run(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                try:
                    resp = self._http.request(call.method, self.base_url + call.path, content=call.body,
                                              headers={"content-type": "application/json"} if call.body else None)
                except httpx.HTTPError as e:
                    raise self._core.transport_error(e) from e
                return self._core.handle(call, resp)
            except Exception as e:
                delay = self._core.retry_delay(attempt, e)
                if delay is None:
                    raise
                attempt += 1
                time.sleep(delay)

    def schemes(self) -> dict:
        return self._run(self._core.schemes())

    def health(self) -> dict:
        return self._run(self._core.health())

    def fit(self, vectors, scheme: str, *, timeout_s: float | None = None, **params) -> Fitted:
        return self._run(self._core.fit(vectors, scheme, params, timeout_s))

    def quantize(self, vectors, scheme: str | None = None, *, codec=None, quality: bool = False,
                 include_codec: bool = False, timeout_s: float | None = None, **params) -> Encoded:
        return self._run(self._core.quantize(vectors, scheme, codec, params, quality, include_codec, timeout_s))

    def dequantize(self, encoded, side=None, *, codec=None, timeout_s: float | None = None):
        return self._run(self._core.dequantize(encoded, side, codec, timeout_s))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client with the same methods as Client (awaitable)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 60.0, max_retries: int = 3,
                 wire: str = "base64", http_client: httpx.AsyncClient | None = None):
        super().__init__(base_url, timeout, max_retries, wire)
        self._http = http_client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def _run(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                try:
                    resp = await self._http.request(call.method, self.base_url + call.path, content=call.body,
                                                    headers={"content-type": "application/json"} if call.body else None)
                except httpx.HTTPError as e:
                    raise self._core.transport_error(e) from e
                return self._core.handle(call, resp)
            except Exception as e:
                delay = self._core.retry_delay(attempt, e)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    async def schemes(self) -> dict:
        return await self._run(self._core.schemes())

    async def health(self) -> dict:
        return await self._run(self._core.health())

    async def fit(self, vectors, scheme: str, *, timeout_s: float | None = None, **params) -> Fitted:
        return await self._run(self._core.fit(vectors, scheme, params, timeout_s))

    async def quantize(self, vectors, scheme: str | None = None, *, codec=None, quality: bool = False,
                       include_codec: bool = False, timeout_s: float | None = None, **params) -> Encoded:
        return await self._run(self._core.quantize(vectors, scheme, codec, params, quality, include_codec, timeout_s))

    async def dequantize(self, encoded, side=None, *, codec=None, timeout_s: float | None = None):
        return await self._run(self._core.dequantize(encoded, side, codec, timeout_s))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
