"""The FastAPI app factory."""

from __future__ import annotations

import contextlib
import logging
import time

from fastapi import FastAPI, Request

from .. import __version__
from ..settings import Settings
from ..worker import Worker
from ..worker.metrics import Metrics
from . import errors
from .limits import BodyLimit
from .responses import ORJSONResponse
from .routes import CodecCache, router

log = logging.getLogger("embquant.api")

DESCRIPTION = """
Quantize float32 embeddings into bit-packed int64 codes and back.

Arrays travel as JSON lists or as base64 of little-endian bytes with dtype and
shape. JSON numbers are doubles in many readers (JavaScript among them): int64
code words above 2^53 lose precision there, so prefer the base64 form for codes.
Every error has one body: `{"error": {"type": ..., "message": ...}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    worker = Worker(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await worker.start()
        try:
            yield
        finally:
            # Uvicorn has stopped accepting and finished in-flight requests by now;
            # the worker still drains anything queued before it exits.
            await worker.stop()
            log.info("drained: %d requests started, %d answered", app.state.started, app.state.answered)

    app = FastAPI(
        title="embquant",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.worker = worker
    app.state.codec_cache = CodecCache()
    app.state.started = app.state.answered = 0
    errors.install(app)
    app.include_router(router)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        app.state.started += 1
        response = await call_next(request)
        app.state.answered += 1
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        metrics.inc("embquant_requests_total", route=path, status=str(response.status_code))
        metrics.observe("embquant_request_seconds", time.perf_counter() - t0, route=path)
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
