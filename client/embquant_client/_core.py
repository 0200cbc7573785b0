"""The core shared by Client and AsyncClient: request building, response
parsing, error mapping and the retry policy. The two clients only do I/O."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import numpy as np

from . import _errors as E
from ._arrays import as_matrix, decode_array, encode_array
from ._models import Encoded, Fitted

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass
class Call:
    method: str
    path: str
    body: bytes | None
    parse: Callable[[Any], Any]


@dataclass
class RetryPolicy:
    max_retries: int = 3
    backoff_base: float = 0.25
    backoff_max: float = 8.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Capped exponential backoff with jitter; Retry-After (seconds) wins when given."""
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.backoff_max * 4)
            except ValueError:
                pass
        d = min(self.backoff_max, self.backoff_base * (2**attempt))
        return d * (0.5 + random.random() / 2)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class Core:
    def __init__(self, *, wire: str = "base64", retry: RetryPolicy | None = None):
        if wire not in ("base64", "json"):
            raise ValueError("wire must be 'base64' or 'json'")
        self.wire = wire
        self.retry = retry or RetryPolicy()

    # -- requests ---------------------------------------------------------------
    def schemes(self) -> Call:
        return Call("GET", "/schemes", None, lambda b: b)

    def fit(self, vectors, scheme: str, params: dict | None, timeout_s: float | None) -> Call:
        x = as_matrix(vectors)
        body = {"scheme": scheme, "params": params or {}, "vectors": encode_array(x, self.wire)}
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        return Call("POST", "/fit", _dumps(body), lambda b: Fitted(codec=b["codec"], layout=b.get("layout", {})))

    def quantize(self, vectors, scheme, codec, params, quality, include_codec, timeout_s) -> Call:
        x = as_matrix(vectors)
        if (scheme is None) == (codec is None):
            raise ValueError("give either scheme (with params) or codec")
        body: dict[str, Any] = {"vectors": encode_array(x, self.wire), "quality": bool(quality)}
        if codec is not None:
            # the caller has the codec: by default the service need not send it back
            body["codec"] = codec.codec if isinstance(codec, (Fitted, Encoded)) else codec
            body["include_codec"] = bool(include_codec)
        else:
            body["scheme"] = scheme
            body["params"] = params
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        sent_codec = body.get("codec")

        def parse(b: dict) -> Encoded:
            return Encoded(
                codes=decode_array(b["codes"], "int64").astype(np.int64, copy=False),
                side=decode_array(b.get("side"), "float32"),
                codec=b.get("codec", sent_codec),
                shape=tuple(b["shape"]),
                layout=b.get("layout", {}),
                quality=b.get("quality"),
            )

        return Call("POST", "/quantize", _dumps(body), parse)

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
        )

    @staticmethod
    def unpack(encoded, side, codec) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """(codes, side, codec JSON) from an Encoded, or from loose arrays and a codec."""
        if isinstance(encoded, Encoded):
            encoded, side, codec = encoded.codes, encoded.side, codec or encoded.codec
        if codec is None:
            raise ValueError("dequantize needs the codec (pass an Encoded, or codec=...)")
        codec = codec.codec if isinstance(codec, Fitted) else codec
        codes = np.asarray(encoded, dtype=np.int64)
        return codes, None if side is None else np.asarray(side, dtype=np.float32), codec

    def dequantize(self, codes: np.ndarray, side: np.ndarray | None, codec: dict, timeout_s) -> Call:
        body: dict[str, Any] = {
            "codes": encode_array(np.asarray(codes, dtype=np.int64), self.wire),
            "codec": codec,
        }
        if side is not None:
            body["side"] = encode_array(np.asarray(side, dtype=np.float32), self.wire)
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        return Call("POST", "/dequantize", _dumps(body), lambda b: decode_array(b["vectors"], "float32").astype(np.float32, copy=False))

    def health(self) -> Call:
        return Call("GET", "/readyz", None, lambda b: b)

    # -- responses ----------------------------------------------------------------
    def handle(self, call: Call, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise E.from_response(resp.status_code, body, resp.headers)
        return call.parse(resp.json())

    def retry_delay(self, attempt: int, error: Exception) -> float | None:
        """Seconds to wait before retrying after ``error``, or None to give up."""
        if attempt >= self.retry.max_retries:
            return None
        if isinstance(error, E.APIStatusError):
            if error.status_code not in RETRY_STATUS:
                return None
            return self.retry.delay(attempt, error.headers.get("retry-after"))
        if isinstance(error, E.APIConnectionError):
            return self.retry.delay(attempt)
        return None

    @staticmethod
    def transport_error(e: httpx.HTTPError) -> E.APIConnectionError:
        if isinstance(e, httpx.TimeoutException):
            return E.APITimeoutError(f"no answer in time: {e!r}")
        return E.APIConnectionError(f"could not reach the service: {e!r}")
