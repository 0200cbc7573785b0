"""One Settings object, built at start-up (argument, then EMBQUANT_* env var, then
default) and passed in. Nothing reads the environment at import time."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBQUANT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Most rows one device batch holds (jobs sharing a codec are concatenated up to this).
    max_batch_rows: int = Field(65536, ge=1)
    #: How long the worker waits after the first job of a batch for more to join it.
    max_wait_ms: float = Field(2.0, ge=0)
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
    #: Longest time a fit (e.g. a learned codebook) may train, in seconds.
    max_fit_seconds: float = Field(60.0, gt=0)
    #: Seconds a client is told to wait (Retry-After) when the queue is full.
    retry_after_s: float = Field(1.0, ge=0)
    log_level: str = "info"
