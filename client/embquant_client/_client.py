"""Client and AsyncClient: the same methods, I/O only; everything else is in Core."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any, AsyncIterator, Iterator

import httpx

import numpy as np

from . import _bulk
from . import _errors as E
from ._arrays import as_matrix
from ._core import Body, Call, CodecRef, Core, Limits, RetryPolicy, auth_headers
from ._arrays import encode_array
from ._models import Encoded, Evaluation, Fitted, Scored
from ._transport import Transport, fast_path_for

DEFAULT_URL = "http://127.0.0.1:8000"
#: Most rows per request when a large array is sent with a codec. Requests are also
#: sized by bytes against the limits the service advertises (GET /limits), so
#: 1536-dimension vectors go in smaller chunks than 384-dimension ones.
#: 4096 rows of 384 floats make a 6 MB body: a side-by-side try during development (not
#: a committed benchmark; bench/service.py measures the default end to end) gave more
#: rows/s than 8192, the copies a body goes through staying nearer the caches.
CHUNK_ROWS = 4096
#: Seconds an idle pooled connection is kept. Shorter than the service's keep-alive
#: (EMBQUANT_KEEP_ALIVE_S, 15 s by default), so the client closes an idle connection
#: first and never sends on one the service is closing.
KEEPALIVE_EXPIRY_S = 5.0


#: Most connections a client opens. All of them stay pooled between requests: with
#: fewer kept alive than used, every request past that number opened a new TCP
#: connection under concurrent load.
MAX_CONNECTIONS = 256


def _verify(base_url: str) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for this service: over plain http, a TLS context that trusts no
    certificate (TLS is never used there, and would fail rather than trust anything),
    which spares the 50 ms httpx spends loading the CA bundle for every client; over
    https, httpx's default verification."""
    if base_url.lower().startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return True


def _length(body: Any) -> dict[str, str]:
    """A `Body` goes to httpx as an iterable of pieces: its length, said up front,
    keeps the request a plain Content-Length one (not chunked)."""
    return {"content-length": str(len(body))} if isinstance(body, Body) else {}


def _pool(max_connections: int = MAX_CONNECTIONS) -> httpx.Limits:
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                        keepalive_expiry=KEEPALIVE_EXPIRY_S)


class _Base:
    def __init__(self, base_url: str, timeout: float, max_retries: int, wire: str, retry: RetryPolicy | None,
                 limits: Limits | None, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self._auth = auth_headers(api_key)  # {"authorization": "Bearer ..."} or {}
        self.timeout = timeout
        self._core = Core(wire=wire, retry=retry or RetryPolicy(max_retries=max_retries))
        self._limits = limits


class Client(_Base):
    """Synchronous client.

    >>> c = Client("http://127.0.0.1:8000")
    >>> enc = c.quantize(x, scheme="lloyd", bits=4)
    >>> y = c.dequantize(enc)
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 60.0, max_retries: int = 3,
                 wire: str = "msgpack", http_client: httpx.Client | None = None, retry: RetryPolicy | None = None,
                 limits: Limits | None = None, api_key: str | None = None):
        """``wire``: "msgpack" (binary bodies, the default), "base64" or "json" (JSON
        bodies). ``retry`` sets the whole policy (``max_retry_after`` caps the
        Retry-After waited for); ``limits`` skips asking the service for its own.
        ``api_key`` (else $EMBQUANT_API_KEY) goes as ``Authorization: Bearer``."""
        super().__init__(base_url, timeout, max_retries, wire, retry, limits, api_key)
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=timeout, limits=_pool(),
                                                 verify=_verify(self.base_url))

    def _run(self, call: Call) -> Any:
        try:
            return self._attempts(call)
        finally:
            if isinstance(call.body, Body):
                call.body.release()

    def _attempts(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                try:
                    resp = self._http.request(call.method, self.base_url + call.path, content=call.body,
                                              headers={**call.headers, **_length(call.body), **self._auth})
                except httpx.HTTPError as e:
                    raise self._core.transport_error(e) from e
                return self._core.handle(call, resp)
            except Exception as e:
                delay = self._core.retry_delay(attempt, e, call)
                if delay is None:
                    raise
                attempt += 1
                time.sleep(delay)

    def schemes(self) -> dict:
        return self._run(self._core.schemes())

    def limits(self) -> Limits:
        """The service's request limits (GET /limits), asked once; defaults below the
        service's own when it is too old to say."""
        if self._limits is None:
            try:
                self._limits = self._run(self._core.limits())
            except E.APIStatusError:
                self._limits = Limits()
        return self._limits

    def health(self) -> dict:
        return self._run(self._core.health())

    def fit(self, vectors, scheme: str, *, timeout_s: float | None = None, **params) -> Fitted:
        return self._run(self._core.fit(vectors, scheme, params, timeout_s))

    def quantize(self, vectors, scheme: str | None = None, *, codec=None, quality: bool = False,
                 include_codec: bool = False, timeout_s: float | None = None, chunk_rows: int | None = CHUNK_ROWS,
                 concurrency: int = 4, **params) -> Encoded:
        """Encode vectors. With a codec, large arrays go in several requests of at most
        ``chunk_rows`` rows (None: no row cap), each within the service's body and
        output limits (one codec, so the codes are the same as in one request),
        ``concurrency`` at a time on threads (the next chunk travels while the service
        encodes one); without a codec, the service fits on this request's vectors, so
        it is sent whole."""
        x = as_matrix(vectors)
        if codec is None:
            return self._run(self._core.quantize(x, scheme, None, params, quality, include_codec, timeout_s))
        ref = self._core.codec_ref(codec)
        spans = self._core.spans(x.shape[0], self._core.quantize_rows(self.limits(), x, codec, ref, chunk_rows))
        parts = self._bounded(ref, [
            lambda by_id, lo=lo, hi=hi: self._core.quantize(x[lo:hi], scheme, ref, params, quality, include_codec,
                                                            timeout_s, by_id) for lo, hi in spans], concurrency)
        return self._core.merge_encoded(x, spans, parts)

    def dequantize(self, encoded, side=None, *, codec=None, timeout_s: float | None = None,
                   chunk_rows: int | None = CHUNK_ROWS, concurrency: int = 4) -> np.ndarray:
        """Decode an Encoded (or codes, side and codec); large arrays go in chunks,
        ``concurrency`` at a time."""
        codes, side, ref = self._core.unpack(encoded, side, codec)
        spans = self._core.spans(codes.shape[0], self._core.dequantize_rows(self.limits(), codes, side, ref, chunk_rows))
        return np.concatenate(self._bounded(ref, [
            lambda by_id, lo=lo, hi=hi: self._core.dequantize(codes[lo:hi], None if side is None else side[lo:hi],
                                                              ref, timeout_s, by_id) for lo, hi in spans], concurrency))

    def score(self, queries, encoded=None, side=None, *, codec=None, k: int = 10, metric: str = "dot",
              all: bool = False, candidates: int | None = None, vectors=None,  # noqa: A002 - the API's field name
              first_pass: str = "codes", timeout_s: float | None = None) -> Scored:
        """Score float queries against codes (an Encoded, or codes, side and codec): the
        ``k`` best codes per query, or every score with ``all=True``. ``metric``:
        "dot", "cosine" or "l2" (squared distance, smallest first). ``candidates=m``
        rescores: the best m per query on the codes, then those m scored exactly (with
        their decoded vectors, or with ``vectors``, the (N, D) originals of the codes).
        ``first_pass="hamming"`` (codes of one bit per dimension, with ``candidates``)
        finds the m by Hamming distance to the queries' own codes instead: faster, coarser."""
        codes, side, ref = self._core.unpack(encoded, side, codec)
        return self._by_id(ref, lambda by_id: self._core.score(queries, codes, side, ref, k, metric, all, timeout_s,
                                                                  by_id, candidates, vectors, first_pass))

    def evaluate(self, vectors, candidates=None, *, bits: float | None = None, queries=None, k: int = 10,
                 metric: str = "dot", seed: int = 0, timeout_s: float | None = None) -> Evaluation:
        """Compare codecs on a sample (POST /evaluate): each of ``candidates`` (scheme
        names, (scheme, params) pairs or {"scheme", "params"} dicts), or the built-in
        settings within ``bits`` per dimension, fitted on half the sample and measured
        on the other half with ``queries`` (default: a held-out tenth of the sample).
        ``print()`` the answer for a table. Evaluations can take minutes: give the
        Client a ``timeout`` to match."""
        return self._run(_evaluate_call(self._core, vectors, candidates, bits, queries, k, metric, seed, timeout_s))

    def quantize_bulk(self, vectors, codec, *, chunk_rows: int = CHUNK_ROWS, concurrency: int = 4,
                      progress: _bulk.Progress | None = None, start_row: int = 0,
                      timeout_s: float | None = None) -> Iterator[Encoded]:
        """Encode a huge array (a memory map, say) or an iterator of chunks with a codec:
        an iterator of one Encoded per block of ``chunk_rows`` rows (fewer where the
        service's limits say so), in input order. ``concurrency`` blocks are in flight
        at once, each retried by the client's retry policy; memory is bounded by about
        (2 x concurrency + 2) blocks (each request holds its block and its body).
        ``progress(rows_done, rows_total)`` is called after each block the caller has
        taken (``rows_total`` None for an iterator); ``start_row`` skips rows already
        done. To a file, resumable: ``quantize_to_file``."""
        return _bulk.quantize_bulk(self, vectors, codec, chunk_rows, concurrency, progress, start_row, timeout_s)

    def dequantize_bulk(self, encoded, codec=None, *, chunk_rows: int = CHUNK_ROWS, concurrency: int = 4,
                        progress: _bulk.Progress | None = None, start_row: int = 0,
                        timeout_s: float | None = None) -> Iterator[np.ndarray]:
        """Decode an Encoded, or an iterator of Encoded or (codes, side) pairs, as
        quantize_bulk: float32 blocks in order, ``concurrency`` requests in flight."""
        if codec is None:
            if not isinstance(encoded, Encoded):
                raise ValueError("dequantize_bulk needs the codec (pass an Encoded, or codec=...)")
            codec = encoded
        return _bulk.dequantize_bulk(self, encoded, codec, chunk_rows, concurrency, progress, start_row, timeout_s)

    def quantize_to_file(self, source, codec, path, **options) -> dict:
        """Encode ``source`` (a 2-D array, an iterator of chunks, or a .npy / Parquet
        path) to ``path`` (.parquet, .npy or .npz), resumable after a crash: see
        embquant_client._io.quantize_file. Parquet needs ``embquant-client[cli]``."""
        from ._io import quantize_file

        return quantize_file(self, source, codec, path, **options)

    def _by_id(self, ref: CodecRef, make) -> Any:
        """Run ``make(by_id)``: the codec by id when known; in full once if the replica
        does not know the id (or none is known yet), then by the id it answers."""
        if ref.id:
            try:
                return self._run(make(True))
            except E.UnknownCodecError:
                pass
        out = self._run(make(False))
        self._core.learnt(ref, getattr(out, "codec_id", None))
        return out

    def _bounded(self, ref: CodecRef, makers, concurrency: int) -> list:
        """As AsyncClient._bounded, on threads (httpx.Client is thread-safe): the
        requests ``concurrency`` at a time, in order; while no codec id is known, the
        first goes alone (with the codec in full) and the rest then send its id."""
        if len(makers) <= 1:
            return [self._by_id(ref, m) for m in makers]
        return list(_bulk.ordered(lambda make: self._by_id(ref, make), makers, concurrency, first_alone=not ref.id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """Asynchronous client with the same methods as Client (awaitable)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 60.0, max_retries: int = 3,
                 wire: str = "msgpack", http_client: httpx.AsyncClient | None = None, retry: RetryPolicy | None = None,
                 limits: Limits | None = None, api_key: str | None = None):
        """Without ``http_client``, plain http:// URLs go through the client's own
        HTTP/1.1 connection pool (_transport.Transport: up to 256 keep-alive connections,
        idle ones kept KEEPALIVE_EXPIRY_S); https:// (or a proxy configured for the URL)
        through httpx.AsyncClient. ``timeout`` covers each request whole. ``api_key``:
        as Client."""
        super().__init__(base_url, timeout, max_retries, wire, retry, limits, api_key)
        self._fast: Transport | None = None
        self._http: httpx.AsyncClient | None = http_client
        if http_client is None:
            if fast_path_for(self.base_url) is not None:
                self._fast = Transport(self.base_url, timeout=timeout, max_connections=MAX_CONNECTIONS,
                                       keepalive_expiry=KEEPALIVE_EXPIRY_S)
            else:
                self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=_pool(),
                                               verify=_verify(self.base_url))

    async def _run(self, call: Call) -> Any:
        try:
            return await self._attempts(call)
        finally:
            if isinstance(call.body, Body):
                call.body.release()

    async def _attempts(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                try:
                    if self._fast is not None:
                        resp = await self._fast.request(call.method, call.path, call.body,
                                                        {**call.headers, **self._auth})
                    else:  # httpx's async client takes bytes or an async iterator: joined
                        body = bytes(call.body) if isinstance(call.body, Body) else call.body
                        resp = await self._http.request(  # type: ignore[union-attr]
                            call.method, self.base_url + call.path, content=body,
                            headers={**call.headers, **self._auth})
                except httpx.HTTPError as e:
                    raise self._core.transport_error(e) from e
                return self._core.handle(call, resp)
            except Exception as e:
                delay = self._core.retry_delay(attempt, e, call)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    async def schemes(self) -> dict:
        return await self._run(self._core.schemes())

    async def limits(self) -> Limits:
        """As Client.limits."""
        if self._limits is None:
            try:
                self._limits = await self._run(self._core.limits())
            except E.APIStatusError:
                self._limits = Limits()
        return self._limits

    async def health(self) -> dict:
        return await self._run(self._core.health())

    async def fit(self, vectors, scheme: str, *, timeout_s: float | None = None, **params) -> Fitted:
        return await self._run(self._core.fit(vectors, scheme, params, timeout_s))

    async def quantize(self, vectors, scheme: str | None = None, *, codec=None, quality: bool = False,
                       include_codec: bool = False, timeout_s: float | None = None,
                       chunk_rows: int | None = CHUNK_ROWS, concurrency: int = 4, **params) -> Encoded:
        """As Client.quantize; chunks go ``concurrency`` at a time."""
        x = as_matrix(vectors)
        if codec is None:
            return await self._run(self._core.quantize(x, scheme, None, params, quality, include_codec, timeout_s))
        ref = self._core.codec_ref(codec)
        spans = self._core.spans(x.shape[0], self._core.quantize_rows(await self.limits(), x, codec, ref, chunk_rows))
        parts = await self._bounded(ref, [
            lambda by_id, lo=lo, hi=hi: self._core.quantize(x[lo:hi], scheme, ref, params, quality, include_codec,
                                                            timeout_s, by_id) for lo, hi in spans], concurrency)
        return self._core.merge_encoded(x, spans, parts)

    async def dequantize(self, encoded, side=None, *, codec=None, timeout_s: float | None = None,
                         chunk_rows: int | None = CHUNK_ROWS, concurrency: int = 4) -> np.ndarray:
        codes, side, ref = self._core.unpack(encoded, side, codec)
        rows = self._core.dequantize_rows(await self.limits(), codes, side, ref, chunk_rows)
        spans = self._core.spans(codes.shape[0], rows)
        parts = await self._bounded(ref, [
            lambda by_id, lo=lo, hi=hi: self._core.dequantize(codes[lo:hi], None if side is None else side[lo:hi],
                                                              ref, timeout_s, by_id) for lo, hi in spans], concurrency)
        return np.concatenate(parts)

    async def score(self, queries, encoded=None, side=None, *, codec=None, k: int = 10, metric: str = "dot",
                    all: bool = False, candidates: int | None = None, vectors=None,  # noqa: A002
                    first_pass: str = "codes", timeout_s: float | None = None) -> Scored:
        """As Client.score."""
        codes, side, ref = self._core.unpack(encoded, side, codec)
        return await self._by_id(ref, lambda by_id: self._core.score(queries, codes, side, ref, k, metric, all,
                                                                        timeout_s, by_id, candidates, vectors,
                                                                        first_pass))

    async def evaluate(self, vectors, candidates=None, *, bits: float | None = None, queries=None, k: int = 10,
                       metric: str = "dot", seed: int = 0, timeout_s: float | None = None) -> Evaluation:
        """As Client.evaluate."""
        return await self._run(_evaluate_call(self._core, vectors, candidates, bits, queries, k, metric, seed,
                                              timeout_s))

    def quantize_bulk(self, vectors, codec, *, chunk_rows: int = CHUNK_ROWS, concurrency: int = 4,
                      progress: _bulk.Progress | None = None, start_row: int = 0,
                      timeout_s: float | None = None) -> AsyncIterator[Encoded]:
        """As Client.quantize_bulk, as an async iterator: ``async for enc in
        ac.quantize_bulk(x, codec)`` gives one Encoded per block in input order, with
        ``concurrency`` requests in flight (tasks, cancelled if the loop stops early).
        ``vectors``: a 2-D array (a memory map, say) or a plain iterator of chunks."""
        return _bulk.aquantize_bulk(self, vectors, codec, chunk_rows, concurrency, progress, start_row, timeout_s)

    async def _by_id(self, ref: CodecRef, make) -> Any:
        """As Client._by_id."""
        if ref.id:
            try:
                return await self._run(make(True))
            except E.UnknownCodecError:
                pass
        out = await self._run(make(False))
        self._core.learnt(ref, getattr(out, "codec_id", None))
        return out

    async def _bounded(self, ref: CodecRef, makers, concurrency: int) -> list:
        """The requests ``concurrency`` at a time; while no codec id is known, the first
        goes alone (with the codec in full) and the rest then send its id."""
        if not makers:
            return []
        first = [] if ref.id else [await self._by_id(ref, makers[0])]
        rest = makers[len(first):]
        if len(rest) <= 1:  # one request (a single vector, say): no semaphore, no gather
            return first + [await self._by_id(ref, m) for m in rest]
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(make):
            async with sem:
                return await self._by_id(ref, make)

        return first + list(await asyncio.gather(*(one(m) for m in rest)))

    async def aclose(self) -> None:
        if self._fast is not None:
            await self._fast.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


def _evaluate_call(core: Core, vectors, candidates, bits, queries, k, metric, seed, timeout_s) -> Call:
    """The /evaluate request (never retried where it may have run: it is a long job)."""
    if (candidates is None) == (bits is None):
        raise ValueError("give candidates or bits, one of them")
    body: dict[str, Any] = {"vectors": encode_array(as_matrix(vectors), core.wire), "k": int(k), "metric": metric,
                            "seed": int(seed)}
    if candidates is not None:
        body["candidates"] = [_candidate(c) for c in candidates]
    else:
        body["bits"] = float(bits)
    if queries is not None:
        body["queries"] = encode_array(as_matrix(queries), core.wire)
    if timeout_s is not None:
        body["timeout_s"] = timeout_s

    def parse(b: dict) -> Evaluation:
        return Evaluation(rows=list(b["rows"]), k=b.get("k", k), metric=b.get("metric", metric),
                          split=b.get("split", {}), pareto=b.get("pareto", ""))

    return core._call("POST", "/evaluate", body, parse, idempotent=False)


def _candidate(c) -> dict[str, Any]:
    if isinstance(c, str):
        return {"scheme": c, "params": {}}
    if isinstance(c, dict):
        return {"scheme": c["scheme"], "params": dict(c.get("params") or {})}
    scheme, params = c
    return {"scheme": scheme, "params": dict(params or {})}
