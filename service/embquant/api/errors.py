"""Domain errors to HTTP, in one place. Every failure has one body:
``{"error": {"type": "...", "message": "..."}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors as E
from .responses import ORJSONResponse

log = logging.getLogger("embquant.api")

STATUS: dict[type[E.EmbquantError], int] = {
    E.InvalidInput: 400,
    E.UnknownScheme: 400,
    E.CodecMismatch: 400,
    E.UnsupportedVersion: 400,
    E.UnknownCodec: 404,
    E.RequestTimeout: 408,
    E.PayloadTooLarge: 413,
    E.UnsupportedMediaType: 415,
    E.Overloaded: 429,
    E.ShuttingDown: 503,
    E.DeadlineExceeded: 504,
}


class ErrorDetail(BaseModel):
    type: str = Field(description="what kind of failure, stable: e.g. validation, unknown_scheme, codec_mismatch, "
                                  "unknown_codec, payload_too_large, unsupported_media_type, overloaded, timeout, "
                                  "unauthorized, unavailable, internal")
    message: str = Field(description="what was wrong and, where it helps, what to do (which limit, which setting)")


class ErrorBody(BaseModel):
    """Every error answer's body."""

    error: ErrorDetail


#: Why each error status is answered, for the OpenAPI document.
ERROR_STATUS_DOCS = {
    400: "the request is wrong (`validation`): malformed body, bad arrays (ragged, NaN/Inf, wrong dtype or shape), parameters out "
         "of range, an unknown scheme (`unknown_scheme`, listing the known ones), codes or vectors that do not fit "
         "the codec (`codec_mismatch`), a codec of another version (`unsupported_version`)",
    401: "only with API keys set (EMBQUANT_API_KEYS): no `Authorization: Bearer <key>`, or a key not accepted "
         "(`unauthorized`, with `WWW-Authenticate: Bearer`)",
    404: "a `codec_id` this replica does not hold (`unknown_codec`): send the codec itself",
    408: "the body did not arrive in full within EMBQUANT_BODY_TIMEOUT_S (`request_timeout`)",
    413: "a body, a codec or an answer over its limit (`payload_too_large`; the message names the limit)",
    415: "a Content-Type other than application/json or application/msgpack (`unsupported_media_type`)",
    429: "the queue is full, or the work queued would keep this request past its deadline (`overloaded`); "
         "retry after the `Retry-After` header's seconds",
    500: "an internal error (`internal`); the request may be retried",
    503: "the service is starting or shutting down (`unavailable`): retry on another replica",
    504: "the request's deadline passed (`timeout`): its own `timeout_s`, else EMBQUANT_REQUEST_TIMEOUT_S",
}


def error_responses(*statuses: int) -> dict:
    """``responses=`` for a route: each status with the one error body."""
    return {s: {"model": ErrorBody, "description": ERROR_STATUS_DOCS[s]} for s in statuses}


#: The work routes' errors (every one may be answered by a layer in front of the route).
WORK_ERRORS = error_responses(400, 401, 404, 408, 413, 415, 429, 500, 503, 504)


def status_for(exc: E.EmbquantError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(type_: str, message: str) -> dict:
    """The one error body every layer answers."""
    return {"error": {"type": type_, "message": message}}


def error_response(status: int, type_: str, message: str, headers: dict | None = None) -> ORJSONResponse:
    return ORJSONResponse(error_body(type_, message), status_code=status, headers=headers)


def domain_response(request, exc: E.EmbquantError) -> ORJSONResponse:
    """The answer to a domain error (``request``: anything with ``.app.state``)."""
    status = status_for(exc)
    headers = None
    if isinstance(exc, E.Overloaded):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    elif exc.close_connection:
        headers = {"Connection": "close"}
    if status >= 500 and status not in (503, 504):
        log.error("internal error: %s", exc.message)
    _count(request, exc.type)
    return error_response(status, exc.type, exc.message, headers)


def internal_response(request, exc: Exception) -> ORJSONResponse:
    log.error("unhandled error on %s", getattr(getattr(request, "url", None), "path", "?"), exc_info=exc)
    _count(request, "internal")
    return error_response(500, "internal", "internal server error; the request may be retried")


def install(app: FastAPI) -> None:
    @app.exception_handler(E.EmbquantError)
    async def _domain(request: Request, exc: E.EmbquantError):
        return domain_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            parts.append(f"{loc}: {err.get('msg')}")
        _count(request, "validation")
        return error_response(422, "validation", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        type_ = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        _count(request, type_)
        return error_response(exc.status_code, type_, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return internal_response(request, exc)


def _count(request: Request, type_: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.error(type_)
