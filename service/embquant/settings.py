"""One Settings object, built at start-up (argument, then EMBQUANT_* env var, then
default) and passed in. Nothing reads the environment at import time."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBQUANT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: CPU codec kernels: auto (compiled numba kernels when they load, else the torch
    #: reference), torch (always the reference), numba (refuse to start without them).
    kernels: Literal["auto", "torch", "numba"] = "auto"
    #: With kernels=auto on the CPU: "background" serves at once on the reference path
    #: (the same codes, slower) while a thread loads or compiles the numba kernels
    #: (about a second from numba's cache; a minute or more on the first start after an
    #: install), then switches to them; "blocking" warms them up before /readyz is ready.
    kernel_warm_up: Literal["background", "blocking"] = "background"
    #: CUDA codec kernels: torch (the reference, the default) or triton (lloyd's Triton
    #: kernels, the same codes; opt-in until they have run on a GPU: so far checked against
    #: the reference in Triton's interpreter, and compiled for sm_90).
    gpu_kernels: Literal["torch", "triton"] = "torch"
    #: Most rows one device batch holds (jobs sharing a codec are concatenated up to this).
    max_batch_rows: int = Field(65536, ge=1)
    #: How long a job that reaches an idle device waits for more to join its batch
    #: (jobs queued while the device is busy always go together). 0 by default:
    #: bench/batching.py measured 0 best on requests/s and latency (docs/batching.md).
    max_wait_ms: float = Field(0.0, ge=0)
    #: Jobs waiting for the device; beyond this the service answers 429.
    queue_size: int = Field(1024, ge=1)
    #: Largest request body accepted (413 beyond).
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Most rows in one request.
    max_rows: int = Field(1_000_000, ge=1)
    #: Most dimensions per vector.
    max_dim: int = Field(65536, ge=1)
    #: Default and largest per-request deadline (seconds), queueing and compute together.
    request_timeout_s: float = Field(30.0, gt=0)
    max_request_timeout_s: float = Field(300.0, gt=0)
    #: Longest time a fit (e.g. a learned codebook) may train, in seconds. A fit's
    #: default deadline is this plus request_timeout_s (its queueing and encoding).
    max_fit_seconds: float = Field(60.0, gt=0)
    #: Fits (and fit-and-encode of schemes that learn) run in their own lane: this many
    #: at once, each in its own thread, never in front of encodes and decodes ...
    fit_workers: int = Field(1, ge=1)
    #: ... and at most this many waiting for a fit thread (429 beyond).
    fit_queue_size: int = Field(64, ge=0)
    #: Seconds a client is told to wait (Retry-After) when the queue is full.
    retry_after_s: float = Field(1.0, ge=0)
    #: Largest answer one request may produce, counted as its arrays' raw bytes:
    #: rows x dim x 4 for /dequantize, rows x (8 x words + 4 x side) for /quantize.
    #: Checked before any work (413 beyond): a small request of codes for a wide codec
    #: cannot make the server build a huge answer.
    max_output_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Most (query, code) pairs one /score request may score (400 beyond).
    max_score_pairs: int = Field(1_000_000_000, ge=1)
    #: Most rows one /evaluate request may send (its sample and queries together; 400 beyond) ...
    max_evaluate_rows: int = Field(20_000, ge=2)
    #: ... and most candidates it may compare (each one bounded by max_fit_seconds).
    max_evaluate_candidates: int = Field(16, ge=1)
    #: Largest codec accepted in a request, as its JSON text (413 beyond).
    max_codec_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    #: Parsed codecs kept for reuse: at most this many, and at most this many bytes
    #: (their arrays and the device tables derived from them), least recently used out.
    codec_cache_entries: int = Field(256, ge=1)
    codec_cache_bytes: int = Field(256 * 1024 * 1024, ge=0)
    #: A directory where codecs are also kept as <codec_id>.json, so a restarted (or
    #: another) replica sharing it still knows them; none by default.
    codec_dir: str | None = None
    #: Most bytes of codecs kept in codec_dir; oldest out beyond.
    codec_dir_bytes: int = Field(1024 * 1024 * 1024, ge=0)
    #: Seconds an idle keep-alive connection stays open. Longer than the client's pool
    #: expiry (5 s), so the client, not the server, closes an idle connection and never
    #: reuses one the server is closing at the same moment.
    keep_alive_s: float = Field(15.0, gt=0)
    #: Seconds a connection may take to send a complete request header (a new
    #: connection, or the next request on a kept-alive one); closed beyond.
    header_timeout_s: float = Field(10.0, gt=0)
    #: Seconds a request body may take to arrive in full (408 beyond).
    body_timeout_s: float = Field(60.0, gt=0)
    #: Most concurrent connections and requests; uvicorn answers 503 beyond (0: no limit).
    limit_concurrency: int = Field(1024, ge=0)
    #: Seconds a SIGTERM waits for in-flight requests. Fits are stopped at once; a
    #: request still queued one second before the end is answered 503 (retry on
    #: another replica). Keep it below Kubernetes' terminationGracePeriodSeconds
    #: (30 s by default) less any preStop sleep.
    graceful_timeout_s: float = Field(20.0, ge=0)
    #: Server processes on the port (on Linux one SO_REUSEPORT socket each, the kernel
    #: spreading connections over them), each with its own event loop, device
    #: thread, queue and codec cache (the CPU kernels' threads are split between them).
    #: One Python event loop answers about 2,000 small requests/s; more processes lift
    #: that on a multi-core machine. Codec ids are shared through codec_dir (a temporary
    #: directory for the run when unset). With a GPU keep 1 per device.
    workers: int = Field(1, ge=1, le=64)
    #: critical, error, warning, info, debug or trace (uvicorn's extra level).
    log_level: str = "info"
    #: One log line per request (uvicorn's access log). Off by default: at a few
    #: thousand requests/s formatting and writing those lines took about a tenth of the
    #: event loop's time (a py-spy profile during development); /metrics counts requests, statuses and latencies.
    access_log: bool = False
    #: API keys, comma-separated. When set, every route but /healthz and /readyz needs
    #: ``Authorization: Bearer <key>`` (401 without). A secret: never logged or shown.
    api_keys: SecretStr | None = None

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {v!r}")
        return v

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, v: SecretStr | None) -> SecretStr | None:
        # No check here may fail on a value holding a key: pydantic's message would
        # show the raw input.
        if v is None or not v.get_secret_value().strip():
            return None  # unset, or set empty: no keys, no authentication
        if not any(k.strip() for k in v.get_secret_value().split(",")):
            raise ValueError("EMBQUANT_API_KEYS holds only commas: no key")
        return v

    def api_key_list(self) -> list[str]:
        """The API keys, blanks between commas skipped (none: no authentication)."""
        if self.api_keys is None:
            return []
        return [k for k in (k.strip() for k in self.api_keys.get_secret_value().split(",")) if k]


#: Log levels by name; "trace" is uvicorn's level 5, below debug.
LOG_LEVELS = {"critical": 50, "error": 40, "warning": 30, "info": 20, "debug": 10, "trace": 5}
