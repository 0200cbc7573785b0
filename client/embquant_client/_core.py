"""The core shared by Client and AsyncClient: request building, response
parsing, error mapping and the retry policy. The two clients only do I/O."""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, fields
from datetime import timezone
from typing import Any, Callable, Iterator

import httpx
import msgpack
import numpy as np

from . import _errors as E
from ._arrays import as_matrix, decode_array, encode_array
from ._models import Encoded, Fitted, Scored

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
#: Where a client without ``api_key=`` finds its API key.
API_KEY_ENV = "EMBQUANT_API_KEY"
#: The statuses after which a fit certainly did not run (its body was not read in
#: time, the queue was full, the service was stopping): the only ones a fit is
#: retried on. A fit that timed out (504, or the client's own timeout) or lost its
#: connection may still be running, and a retry would start a second one.
RETRY_STATUS_NOT_RUN = {408, 429, 503}


JSON = "application/json"
MSGPACK = "application/msgpack"
WIRES = ("msgpack", "base64", "json")


@dataclass
class Call:
    method: str
    path: str
    body: bytes | Body | None  # Body: see `pack_body`
    parse: Callable[[Any], Any]
    #: False for fits: a retry after a timeout could run the same fit twice.
    idempotent: bool = True
    content_type: str = JSON

    @property
    def headers(self) -> dict[str, str]:
        h = {"accept": self.content_type}
        if self.body is not None:
            h["content-type"] = self.content_type
        return h


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The Authorization header for ``api_key`` (None: $EMBQUANT_API_KEY); none
    without a key. The key never appears in a message."""
    key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")).strip()
    if not key:
        return {}
    if not all("!" <= ch <= "~" for ch in key):
        raise ValueError(f"the API key (api_key= or {API_KEY_ENV}) must be printable ASCII without spaces")
    return {"authorization": f"Bearer {key}"}


@dataclass
class CodecRef:
    """A codec as the client sends it: by id once the service has given one, in full
    otherwise (and again, once, when a replica answers unknown_codec)."""

    json: dict[str, Any]
    id: str | None = None


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header, in either form: delay-seconds
    ("120") or an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT"). None if unreadable."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)


@dataclass
class RetryPolicy:
    max_retries: int = 3
    backoff_base: float = 0.25
    backoff_max: float = 8.0
    #: The longest Retry-After the client waits, in seconds. When the service asks
    #: for longer, the error is raised at once rather than silently shortened.
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float | None:
        """Capped exponential backoff with jitter; Retry-After (seconds or an HTTP-date)
        wins when given, up to ``max_retry_after`` (None beyond: do not retry)."""
        if retry_after:
            wait = parse_retry_after(retry_after)
            if wait is not None:
                return wait if wait <= self.max_retry_after else None
        d = min(self.backoff_max, self.backoff_base * (2**attempt))
        return d * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class Limits:
    """What the service accepts (GET /limits). The defaults are used with a service
    too old to say: below the service's own defaults, so requests fit either way."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_output_bytes: int = 32 * 1024 * 1024
    max_evaluate_rows: int = 20_000

    @classmethod
    def from_json(cls, body: Any) -> "Limits":
        known = {f.name for f in fields(cls)}
        if not isinstance(body, dict):
            return cls()
        return cls(**{k: int(v) for k, v in body.items() if k in known and isinstance(v, (int, float))})


#: A request's JSON around its arrays (keys, shape, dtype, options): generous.
ENVELOPE_BYTES = 4096
#: Share of the body limit a chunk may fill: the rest is headroom for the envelope.
BODY_SHARE = 0.9


def wire_bytes(values: int, itemsize: int, wire: str) -> int:
    """Upper bound on the bytes ``values`` numbers take on the wire, per row."""
    if values <= 0:
        return 0
    if wire == "json":
        return values * 25 + 2  # a double's repr, its sign and exponent, and a comma
    if wire == "msgpack":
        return values * itemsize  # raw bytes; the array's header is in the envelope
    return -(-values * itemsize // 3) * 4 + 4


def rows_per_request(limits: Limits, in_row: int, out_row: int, overhead: int, cap: int | None) -> int:
    """The most rows one request may carry: its body within the body limit, its answer
    within the output limit, and no more than ``cap``. At least 1 (a single row
    over a limit gets the service's own 413, which names the limit)."""
    rows = int((limits.max_body_bytes * BODY_SHARE - overhead) // max(in_row, 1))
    rows = min(rows, limits.max_output_bytes // max(out_row, 1))
    if cap:
        rows = min(rows, cap)
    return max(rows, 1)


#: Byte fields at least this long are written by `packb` itself (bin 32, the form
#: msgpack picks for them too), copied once into the body.
_BIG_BIN = 1 << 16


def packb(obj: Any) -> bytes:
    """The same bytes as ``msgpack.packb(obj, use_bin_type=True)``, faster for bodies
    that carry arrays: msgpack copies a large bin into a buffer it grows as it goes
    (10-17 ms for 12.6 MB of float32 here); this writes the maps' headers and the
    large bins' headers itself, leaves every other value to msgpack, and joins the
    pieces once (about 2 ms)."""
    parts: list[Any] = []
    _pack_into(obj, parts)
    return b"".join(parts)


#: Bytes per piece when a `Body`'s large bins go out (each piece a copy, sent, then freed).
_PIECE = 1 << 20


class Body:
    """A msgpack body in pieces, never joined: the bytes `packb` writes around the
    large bins, and the bins themselves (the caller's arrays, as memoryviews). The
    same bytes as `packb` (``bytes(body)``), sent without a whole copy of the arrays:
    a request in flight holds nothing but its arrays, which its caller holds anyway.
    Re-iterable (a retry sends it again) until `release`, which the client calls when
    the request is over: the pieces are dropped at once, even where the HTTP layer
    keeps the body in a reference cycle until the next full garbage collection."""

    __slots__ = ("parts", "nbytes")

    def __init__(self, parts: list):
        self.parts = parts
        self.nbytes = sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in parts)

    def __len__(self) -> int:
        return self.nbytes

    def __iter__(self) -> Iterator[Any]:
        for p in self.parts:
            if isinstance(p, bytes):
                yield p
                continue
            # bytes of their own, not views: the HTTP layer's events and buffers may
            # outlive the request (cycles), and a view would keep the whole array alive
            p = memoryview(p).cast("B")
            for lo in range(0, len(p), _PIECE):
                yield bytes(p[lo:lo + _PIECE])

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def release(self) -> None:
        self.parts = []


def pack_body(obj: Any) -> bytes | Body:
    """`packb`'s bytes, as a `Body` when they carry a large bin (else joined)."""
    parts: list[Any] = []
    _pack_into(obj, parts)
    body = Body(parts)
    if any(len(p) >= _BIG_BIN for p in parts if not isinstance(p, memoryview)) or any(
            p.nbytes >= _BIG_BIN for p in parts if isinstance(p, memoryview)):
        return body
    return bytes(body)


def _pack_into(obj: Any, parts: list) -> None:
    if isinstance(obj, dict):
        n = len(obj)
        parts.append(bytes((0x80 | n,)) if n < 16 else
                     b"\xde" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdf" + n.to_bytes(4, "big"))
        for k, v in obj.items():
            parts.append(msgpack.packb(k, use_bin_type=True))
            _pack_into(v, parts)
        return
    if isinstance(obj, (bytes, bytearray, memoryview)):
        n = obj.nbytes if isinstance(obj, memoryview) else len(obj)
        if _BIG_BIN <= n < 1 << 32 and (not isinstance(obj, memoryview) or obj.contiguous):
            parts += (b"\xc6" + n.to_bytes(4, "big"), obj)
            return
    parts.append(msgpack.packb(obj, use_bin_type=True))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


#: Requests below this many bytes of arrays are sent whole without sizing (every
#: service accepts bodies and answers far larger, plus any codec it accepts at all).
_SMALL = 256 * 1024

#: Codec ids the client learnt for codecs passed as plain dicts (by a local hash).
_MEMO_ENTRIES = 64


def _local_key(codec: dict) -> str:
    """The client's own hash of a codec dict, to remember its service id."""
    return hashlib.sha256(json.dumps(codec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _loads(resp: httpx.Response) -> Any:
    ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype in (MSGPACK, "application/x-msgpack", "application/vnd.msgpack"):
        try:
            return msgpack.unpackb(resp.content, raw=False)
        except Exception as e:  # noqa: BLE001 - msgpack raises several types
            raise ValueError(f"unreadable msgpack answer: {e}") from None
    return resp.json()


class Core:
    def __init__(self, *, wire: str = "msgpack", retry: RetryPolicy | None = None):
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(WIRES)}")
        self.wire = wire
        self.retry = retry or RetryPolicy()
        self._ids: OrderedDict[str, str] = OrderedDict()
        # id(codec dict) -> (the dict, its local key): hashing a large codec once, not per call
        self._keys: OrderedDict[int, tuple[dict, str]] = OrderedDict()

    def _call(self, method: str, path: str, body: dict | None, parse, idempotent: bool = True) -> Call:
        if body is None:
            return Call(method, path, None, parse, idempotent, MSGPACK if self.wire == "msgpack" else JSON)
        if self.wire == "msgpack":
            return Call(method, path, pack_body(body), parse, idempotent, MSGPACK)
        return Call(method, path, _dumps(body), parse, idempotent, JSON)

    # -- codecs by id -------------------------------------------------------------
    def codec_ref(self, codec: Any) -> CodecRef:
        """What to send for ``codec`` (a Fitted, an Encoded or a codec dict)."""
        if isinstance(codec, (Fitted, Encoded)):
            if codec.codec is None:
                raise ValueError("this Encoded holds no codec; pass codec=...")
            return CodecRef(codec.codec, codec.codec_id or self._ids.get(self._key(codec.codec)))
        if not isinstance(codec, dict):
            raise TypeError(f"codec must be a Fitted, an Encoded or a codec dict, got {type(codec).__name__}")
        return CodecRef(codec, self._ids.get(self._key(codec)))

    def _key(self, codec: dict) -> str:
        hit = self._keys.get(id(codec))
        if hit is not None and hit[0] is codec:
            return hit[1]
        key = _local_key(codec)
        self._keys[id(codec)] = (codec, key)  # holds the dict: its id() cannot be reused meanwhile
        while len(self._keys) > _MEMO_ENTRIES:
            self._keys.popitem(last=False)
        return key

    def learnt(self, ref: CodecRef, codec_id: str | None) -> None:
        """The service answered with the codec's id: send the id from now on."""
        if codec_id and ref.id != codec_id:
            ref.id = codec_id
            self._ids[self._key(ref.json)] = codec_id
            while len(self._ids) > _MEMO_ENTRIES:
                self._ids.popitem(last=False)

    def _codec_fields(self, ref: CodecRef, by_id: bool) -> dict[str, Any]:
        return {"codec_id": ref.id} if by_id and ref.id else {"codec": ref.json}

    # -- requests ---------------------------------------------------------------
    def schemes(self) -> Call:
        return Call("GET", "/schemes", None, lambda b: b)

    def fit(self, vectors, scheme: str, params: dict | None, timeout_s: float | None) -> Call:
        x = as_matrix(vectors)
        body = {"scheme": scheme, "params": params or {}, "vectors": encode_array(x, self.wire)}
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        return self._call("POST", "/fit", body, lambda b: Fitted(codec=b["codec"], layout=b.get("layout", {}),
                                                                 codec_id=b.get("codec_id")), idempotent=False)

    def quantize(self, vectors, scheme, codec: CodecRef | None, params, quality, include_codec, timeout_s,
                 by_id: bool = True) -> Call:
        """One /quantize request: with a codec (sent by id when known and ``by_id``), or
        with a scheme the service fits (or resolves) on these vectors."""
        x = as_matrix(vectors)
        if (scheme is None) == (codec is None):
            raise ValueError("give either scheme (with params) or codec")
        body: dict[str, Any] = {"vectors": encode_array(x, self.wire), "quality": bool(quality)}
        if codec is not None:
            # the caller has the codec: by default the service need not send it back
            body.update(self._codec_fields(codec, by_id))
            body["include_codec"] = bool(include_codec)
        else:
            body["scheme"] = scheme
            body["params"] = params
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        sent_codec = None if codec is None else codec.json

        def parse(b: dict) -> Encoded:
            return Encoded(
                codes=decode_array(b["codes"], "int64").astype(np.int64, copy=False),
                side=decode_array(b.get("side"), "float32"),
                codec=b.get("codec", sent_codec),
                shape=tuple(b["shape"]),
                layout=b.get("layout", {}),
                quality=b.get("quality"),
                codec_id=b.get("codec_id"),
            )

        # without a codec the service may fit one on these vectors: retried as a fit
        return self._call("POST", "/quantize", body, parse, idempotent=codec is not None)

    def limits(self) -> Call:
        return Call("GET", "/limits", None, Limits.from_json)

    # -- sizing requests by bytes ---------------------------------------------------
    def quantize_rows(self, limits: Limits, x: np.ndarray, codec: Any, ref: CodecRef, cap: int | None) -> int:
        """Rows per /quantize request with a codec: within the body limit (vectors in
        the wire form, plus the codec, which one request may carry in full) and the
        output limit (codes and side values)."""
        layout = getattr(codec, "layout", None) or {}
        words, side = layout.get("words"), layout.get("side", 0)
        out_row = 8 * words + 4 * side if words else 4 * x.shape[1] + 16  # no layout: at most the input's size
        in_row = wire_bytes(x.shape[1], 4, self.wire)
        if x.shape[0] * (in_row + out_row) + ENVELOPE_BYTES <= _SMALL:
            return min(x.shape[0], cap) if cap else x.shape[0]  # small (a single vector, say): nothing to size
        overhead = len(_dumps(ref.json)) + ENVELOPE_BYTES
        return rows_per_request(limits, in_row, out_row, overhead, cap)

    def dequantize_rows(self, limits: Limits, codes: np.ndarray, side: np.ndarray | None, ref: CodecRef,
                        cap: int | None) -> int:
        """Rows per /dequantize request: codes and side values within the body limit,
        decoded float32 vectors within the output limit."""
        in_row = wire_bytes(codes.shape[1], 8, self.wire) + (0 if side is None else wire_bytes(side.shape[1], 4, self.wire))
        out_row = 4 * int(ref.json.get("dim") or 1)
        overhead = len(_dumps(ref.json)) + ENVELOPE_BYTES
        return rows_per_request(limits, in_row, out_row, overhead, cap)

    # -- large arrays in chunks ---------------------------------------------------
    @staticmethod
    def spans(rows: int, chunk_rows: int | None) -> list[tuple[int, int]]:
        if not chunk_rows or rows <= chunk_rows:
            return [(0, rows)]
        return [(lo, min(lo + chunk_rows, rows)) for lo in range(0, rows, chunk_rows)]

    @staticmethod
    def merge_encoded(x: np.ndarray, spans, parts: list[Encoded]) -> Encoded:
        """One Encoded from per-chunk answers, quality weighted by each chunk's energy and rows."""
        if len(parts) == 1:
            return parts[0]
        quality = None
        if all(p.quality for p in parts):
            energy = np.array([float((x[lo:hi].astype(np.float64) ** 2).sum()) for lo, hi in spans])
            rows = np.array([hi - lo for lo, hi in spans], dtype=np.float64)
            rse = np.array([p.quality["relative_squared_error"] for p in parts])
            cos = np.array([p.quality["mean_cosine"] for p in parts])
            quality = {
                "relative_squared_error": float((rse * energy).sum() / max(energy.sum(), 1e-300)),
                "mean_cosine": float((cos * rows).sum() / rows.sum()),
            }
        first = parts[0]
        return Encoded(
            codes=np.concatenate([p.codes for p in parts]),
            side=None if first.side is None else np.concatenate([p.side for p in parts]),
            codec=first.codec,
            shape=(x.shape[0], x.shape[1]),
            layout=first.layout,
            quality=quality,
            codec_id=parts[-1].codec_id or first.codec_id,
        )

    def unpack(self, encoded, side, codec) -> tuple[np.ndarray, np.ndarray | None, CodecRef]:
        """(codes, side, codec to send) from an Encoded, or from loose arrays and a codec."""
        if isinstance(encoded, Encoded):
            encoded, side, codec = encoded.codes, encoded.side, codec or encoded
        if codec is None:
            raise ValueError("dequantize needs the codec (pass an Encoded, or codec=...)")
        codes = np.asarray(encoded, dtype=np.int64)
        return codes, None if side is None else np.asarray(side, dtype=np.float32), self.codec_ref(codec)

    def dequantize(self, codes: np.ndarray, side: np.ndarray | None, codec: CodecRef, timeout_s,
                   by_id: bool = True) -> Call:
        body: dict[str, Any] = {"codes": encode_array(np.asarray(codes, dtype=np.int64), self.wire)}
        body.update(self._codec_fields(codec, by_id))
        if side is not None:
            body["side"] = encode_array(np.asarray(side, dtype=np.float32), self.wire)
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        return self._call("POST", "/dequantize", body,
                          lambda b: decode_array(b["vectors"], "float32").astype(np.float32, copy=False))

    def score(self, queries, codes: np.ndarray, side: np.ndarray | None, codec: CodecRef, k: int, metric: str,
              all_scores: bool, timeout_s, by_id: bool = True, candidates: int | None = None, vectors=None,
              first_pass: str = "codes") -> Call:
        body: dict[str, Any] = {
            "queries": encode_array(as_matrix(queries), self.wire),
            "codes": encode_array(np.asarray(codes, dtype=np.int64), self.wire),
            "k": int(k), "metric": metric, "all": bool(all_scores),
        }
        if candidates is not None:
            body["candidates"] = int(candidates)
        if first_pass != "codes":
            body["first_pass"] = first_pass
        if vectors is not None:
            body["vectors"] = encode_array(as_matrix(vectors), self.wire)
        body.update(self._codec_fields(codec, by_id))
        if side is not None:
            body["side"] = encode_array(np.asarray(side, dtype=np.float32), self.wire)
        if timeout_s is not None:
            body["timeout_s"] = timeout_s

        def parse(b: dict) -> Scored:
            idx = decode_array(b.get("indices"), "int64")
            return Scored(scores=decode_array(b["scores"], "float32").astype(np.float32, copy=False),
                          indices=None if idx is None else idx.astype(np.int64, copy=False), metric=b.get("metric", metric),
                          codec_id=b.get("codec_id"))

        return self._call("POST", "/score", body, parse)

    def health(self) -> Call:
        return Call("GET", "/readyz", None, lambda b: b)

    # -- responses ----------------------------------------------------------------
    def handle(self, call: Call, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                body = _loads(resp)
            except ValueError:
                body = resp.text
            raise E.from_response(resp.status_code, body, resp.headers)
        return call.parse(_loads(resp))

    def retry_delay(self, attempt: int, error: Exception, call: Call | None = None) -> float | None:
        """Seconds to wait before retrying ``call`` after ``error``, or None to give up.
        Fits (``call.idempotent`` False) are retried only where they cannot have run."""
        if attempt >= self.retry.max_retries:
            return None
        idempotent = call is None or call.idempotent
        if isinstance(error, E.APIStatusError):
            if error.status_code not in (RETRY_STATUS if idempotent else RETRY_STATUS_NOT_RUN):
                return None
            return self.retry.delay(attempt, error.headers.get("retry-after"))
        if isinstance(error, (E.APITimeoutError, E.APIConnectionLostError)) and not idempotent:
            return None
        if isinstance(error, E.APIConnectionError):
            return self.retry.delay(attempt)
        return None

    @staticmethod
    def transport_error(e: httpx.HTTPError) -> E.APIConnectionError:
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
            return E.APIConnectionError(f"could not reach the service: {e!r}")
        if isinstance(e, httpx.TimeoutException):
            return E.APITimeoutError(f"no answer in time: {e!r}")
        if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return E.APIConnectionLostError(
                f"the connection was lost before the answer was complete (the service closed it or stopped "
                f"mid-request; the request may have run): {e!r}"
            )
        return E.APIConnectionError(f"could not reach the service: {e!r}")
