"""The FastAPI app factory."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..settings import Settings
from ..worker import Worker
from ..worker.metrics import Metrics
from . import errors
from .auth import Auth
from .fast import FastPath
from .connections import RECEIVED
from .limits import QUEUED, Admission
from .responses import ORJSONResponse
from .codec_cache import CodecCache
from .routes import router

log = logging.getLogger("embquant.api")

DESCRIPTION = """
Quantize float32 embeddings into bit-packed int64 codes and back.

Bodies are JSON (`application/json`) or msgpack (`application/msgpack`, the
client's default: arrays as raw little-endian bytes). In JSON, arrays travel as
lists or as base64 of little-endian bytes with dtype and shape. JSON numbers are
doubles in many readers (JavaScript among them): int64 code words above 2^53 lose
precision there, so prefer base64 (or msgpack) for codes.
Every error has one JSON body: `{"error": {"type": ..., "message": ...}}`.
"""


class Observe:
    """Request metrics, and the started / answered counts the shutdown log reports.
    A pure ASGI middleware: Starlette's BaseHTTPMiddleware re-wraps every receive and
    send and measured about 1 ms per request here."""

    def __init__(self, app, metrics: Metrics, state, paths=()):
        self.app, self.metrics, self.state = app, metrics, state
        #: the route label for a request answered before routing (Admission, auth):
        #: its path if it is one of these, else "other" (a bounded label set)
        self.paths = frozenset(paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # from the request's first byte read (api.connections), else from here
        t0 = scope.get(RECEIVED) or time.perf_counter()
        status = 500
        self.state.started += 1

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.state.answered += 1

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.request(route, status, time.perf_counter() - t0)


class App(FastAPI):
    """FastAPI with a front of pure ASGI layers for HTTP requests: Observe (metrics),
    Auth (API keys, when set), Admission (limits from the headers), FastPath (the work
    routes, see `api.fast`).
    FastAPI's own stack serves everything else, and the lifespan."""

    front = None

    async def __call__(self, scope, receive, send):
        if self.front is not None and scope["type"] == "http":
            return await self.front(scope, receive, send)
        return await super().__call__(scope, receive, send)

    async def framework(self, scope, receive, send):
        await super().__call__(scope, receive, send)


#: The cycle collector's first-generation threshold once a served app is up (`tune_collector`).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """For a process that serves: everything alive once the worker is ready (torch,
    numba, the kernels: some 300,000 objects) goes to the collector's permanent
    generation, out of its walks (collections took 30% of an in-process load before, 8%
    after), and the first generation's threshold goes from 700 new containers to
    GC_YOUNG_THRESHOLD: with 256 requests in flight the default ran a collection every
    dozen requests; 10,000 took the collector's share from about 9% to 6% and the
    requests/s up 10 to 30% (bench/event_loop.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def create_app(settings: Settings | None = None, *, tune_gc: bool = False) -> FastAPI:
    """``tune_gc``: call `tune_collector` once the worker is up (`embquant serve` and the
    Ray Serve replicas do; a test process that builds many apps must not)."""
    settings = settings or Settings()
    metrics = Metrics()
    worker = Worker(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await worker.start()
        if tune_gc:
            tune_collector()
        try:
            yield
        finally:
            # Uvicorn has stopped accepting and finished in-flight requests by now;
            # the worker still drains anything queued before it exits.
            await worker.stop()
            log.info("drained: %d requests started, %d answered", app.state.started, app.state.answered)

    app = App(
        title="embquant",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        docs_url=None,  # served below from local assets, never a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.worker = worker
    app.state.codec_cache = CodecCache(
        settings.codec_cache_entries, settings.codec_cache_bytes,
        max_dim=settings.max_dim, max_codec_bytes=settings.max_codec_bytes,
        directory=settings.codec_dir, dir_bytes=settings.codec_dir_bytes,
    )
    app.state.started = app.state.answered = 0
    errors.install(app)
    app.include_router(router)
    _install_docs(app)

    documented = {r.path: r for r in router.routes if "POST" in (getattr(r, "methods", None) or ())}
    fast = FastPath(app.framework, app.state, {p: (documented[p].endpoint, documented[p]) for p in QUEUED})
    # Admission answers 413, 415 and a full queue's 429 from the headers alone, Auth
    # (only when API keys are set) 401 before that; Observe, outermost, sees those too.
    inner = Admission(fast, settings=settings, worker=worker, metrics=metrics)
    keys = settings.api_key_list()
    if keys:
        inner = Auth(inner, keys, settings=settings, metrics=metrics)
    app.front = Observe(inner, metrics=metrics, state=app.state, paths=_static_paths(app.routes))
    return app


def _static_paths(routes) -> set[str]:
    """Every route path without parameters, routers included."""
    out = set()
    for r in routes:
        path = getattr(r, "path", None)
        if isinstance(path, str) and "{" not in path:
            out.add(path)
        inner = getattr(r, "original_router", None)  # FastAPI's included router (no prefix here)
        out |= _static_paths(getattr(inner, "routes", None) or ())
    return out


#: Swagger UI's and ReDoc's files, from the fastapi-offline package: /docs and /redoc
#: work where no CDN can be reached (air-gapped and private clusters).
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_STATIC = "/docs/static"


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc (ReDoc), every URL they load local: the assets
    under DOCS_STATIC, the document at /openapi.json (relative to any root path)."""
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")

    def root(request) -> str:
        return request.scope.get("root_path", "")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        r = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{r}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{r}/docs/oauth2-redirect",
            swagger_js_url=f"{r}{DOCS_STATIC}/swagger-ui-bundle.js", swagger_css_url=f"{r}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{r}{DOCS_STATIC}/favicon.png",
            # no badge fetched from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        r = root(request)
        return get_redoc_html(openapi_url=f"{r}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{r}{DOCS_STATIC}/redoc.standalone.js",
                              redoc_favicon_url=f"{r}{DOCS_STATIC}/favicon.png", with_google_fonts=False)
