"""Routes: parse and validate the payload (JSON or msgpack, `bodies`), submit one
typed job, answer in the form asked for."""

from __future__ import annotations

import os

from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from .. import codecs
from .wire_arrays import from_wire
from ..errors import CodecMismatch, EmbquantError, InvalidInput, PayloadTooLarge, ShuttingDown
from ..codecs import evaluate as evaluation
from ..codecs import kernels, schemes_document
from ..codecs.registry import setting_warnings
from ..codecs.score import hamming_check
from ..worker import DecodeJob, EncodeJob, FitJob, ScoreJob
from ..worker.device import cuda_problem
from ..worker.batcher import EvaluateJob
from . import bodies
from .errors import WORK_ERRORS, error_responses
from .responses import ORJSONResponse
from .wire import (
    DequantizeAnswer, DequantizeRequest, EvaluateAnswer, EvaluateRequest, FitAnswer, FitRequest, HealthAnswer,
    BOTH_FORMS, LimitsAnswer, QuantizeAnswer, QuantizeRequest, ReadyAnswer, SchemesAnswer, ScoreAnswer, ScoreRequest,
    body_doc, ok,
)

router = APIRouter()
#: a fit (or an evaluation) takes no codec_id: no 404
FIT_ERRORS = error_responses(400, 401, 408, 413, 415, 429, 500, 503, 504)
_THREADPOOL_BYTES = 1 << 20  # parse bodies larger than this off the event loop


def _form(raw: Any) -> str:
    return "base64" if isinstance(raw, dict) else "json"


def _envelope(body: bytes, ctype: str | None, model: type[BaseModel]) -> BaseModel:
    obj = bodies.loads(body, ctype)
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        parts = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]
        raise InvalidInput("; ".join(parts)) from None


async def _parse(request: Request, fn):
    """``fn(body, content_type)``, off the event loop for large bodies."""
    body = await request.body()
    ctype = bodies.media_type(request.headers.get("content-type"))
    if len(body) > _THREADPOOL_BYTES:
        return await run_in_threadpool(fn, body, ctype)
    return fn(body, ctype)


def _answer(request: Request, content: dict[str, Any]):
    return bodies.respond(content, _answer_form(request))


def _answer_form(request: Request) -> str:
    return bodies.answer_form(request.headers.get("accept"), bodies.media_type(request.headers.get("content-type")))


def _codes_codec(st, req) -> tuple[codecs.Codec, str]:
    """The codec a request's codes were made with (it must give one)."""
    if req.codec is None and req.codec_id is None:
        raise InvalidInput("give the codec the codes were made with, as codec or codec_id")
    return _codec(st, req.codec, req.codec_id)


def _codes(req, settings) -> np.ndarray:
    codes = from_wire(req.codes, "codes", "int")
    if codes.ndim != 2:
        raise InvalidInput(f"codes must be 2-D (rows, words), got shape {list(codes.shape)}")
    if codes.shape[0] > settings.max_rows:
        raise InvalidInput(f"{codes.shape[0]} rows exceed the limit of {settings.max_rows} per request")
    return codes


def _side(req, codec: codecs.Codec, codes: np.ndarray) -> np.ndarray | None:
    """The side values, checked with the codes' shapes against the codec. The symbols
    themselves (unused bits, level range) are checked where they are read, by the
    decode or the scoring in the worker, with the same messages: checking them here
    too was a second full pass over the codes."""
    side = None if req.side is None else from_wire(req.side, "side", "float")
    codecs.check_code_shapes(codec, torch.from_numpy(codes), None if side is None else torch.from_numpy(side))
    return side if codec.layout.side_values else None


def _codec(st, codec: Any, codec_id: Any) -> tuple[codecs.Codec, str]:
    """The request's codec, given in full or by id (exactly one)."""
    if codec is not None and codec_id is not None:
        raise InvalidInput("give codec or codec_id, not both")
    if codec_id is not None:
        return st.codec_cache.by_id(codec_id)
    return st.codec_cache.resolve(codec)


def _vectors(raw: Any, settings) -> np.ndarray:
    x = from_wire(raw, "vectors", "float")
    if x.size == 0:
        raise InvalidInput(f"vectors must not be empty, got shape {list(x.shape)}")
    if x.ndim != 2:
        raise InvalidInput(
            f"vectors must be 2-D (rows, dims), got shape {list(x.shape)}"
            + (" — wrap one vector in a list" if x.ndim == 1 else "")
        )
    # from_wire has already refused NaN and Inf (naming the index); the device
    # thread's encode checks once more, as the codecs' public contract.
    if x.shape[0] > settings.max_rows:
        raise InvalidInput(f"{x.shape[0]} rows exceed the limit of {settings.max_rows} per request; split the request")
    if x.shape[1] > settings.max_dim:
        raise InvalidInput(f"{x.shape[1]} dimensions exceed the limit of {settings.max_dim}")
    return x


def _scheme_params(name: Any, raw: dict, settings):
    scheme = codecs.get_scheme(name)
    params = codecs.parse_params(scheme, raw)
    limit = getattr(params, "max_seconds", None)
    if limit is not None and limit > settings.max_fit_seconds:
        raise InvalidInput(
            f"max_seconds={limit:g} exceeds this server's fit limit of {settings.max_fit_seconds:g} s "
            "(EMBQUANT_MAX_FIT_SECONDS)"
        )
    return scheme, params


def _timeout(req_timeout: float | None, settings, fit: bool = False) -> float:
    """The request's deadline: its own timeout_s, else the default (for a fit, one that
    covers max_fit_seconds as well); never beyond max_request_timeout_s."""
    if req_timeout is not None:
        t = req_timeout
    else:
        t = settings.request_timeout_s + (settings.max_fit_seconds if fit else 0.0)
    return min(t, settings.max_request_timeout_s)


def _codec_json(codec: codecs.Codec) -> dict[str, Any]:
    """The codec's JSON for an answer, built once per codec (include_codec is on by
    default: a curl user's by-name request echoes it every time). Answers only write
    it out; nothing changes it."""
    return codec.derived(("answer json",), codec.to_json)


def _layout(codec: codecs.Codec) -> dict[str, Any]:
    """The answer's ``layout``: made once per codec (every answer of it shares the dict,
    which nothing changes)."""
    def make() -> dict[str, Any]:
        lay = codec.layout
        return {
            "bits": lay.bits,
            "symbols": lay.symbols,
            "words": lay.words,
            "side": lay.side_values,
            "levels": lay.levels if lay.levels is not None else 1 << lay.bits,
            "bits_per_vector": lay.bits_per_vector(),
        }

    return codec.derived("layout_answer", make)


def _check_output(rows: int, per_row: int, what: str, settings) -> None:
    """The cost model: refuse, before any work, a request whose answer would exceed
    EMBQUANT_MAX_OUTPUT_BYTES (its arrays' raw bytes)."""
    total = rows * per_row
    if total > settings.max_output_bytes:
        most = max(settings.max_output_bytes // max(per_row, 1), 0)
        raise PayloadTooLarge(
            f"the answer would hold {total} bytes of {what} ({rows} rows x {per_row} bytes), over the limit of "
            f"{settings.max_output_bytes} bytes (EMBQUANT_MAX_OUTPUT_BYTES); send at most {most} rows per request"
        )


def _check_codec_size(size: int, settings, ahead: bool = False) -> None:
    if size > settings.max_codec_bytes:
        raise PayloadTooLarge(
            f"the fitted codec would be {'up to' if ahead else 'about'} {size} bytes, over the limit of "
            f"{settings.max_codec_bytes} bytes (EMBQUANT_MAX_CODEC_BYTES); choose smaller parameters "
            "(fewer bits or dimensions)"
        )


def _b64_bytes(raw: int) -> int:
    return 4 * -(-raw // 3)


def _check_fit_size(scheme, params, dim: int, settings) -> None:
    """Before a fit: refuse parameters whose codec could not be sent back (the scheme's
    upper bound of its state, as base64), instead of finding out after the fit."""
    bound = codecs.core.state_bytes(scheme, params, dim)
    if bound is not None:
        _check_codec_size(_b64_bytes(bound), settings, ahead=True)


def _check_fitted(codec: codecs.Codec, settings) -> None:
    """A fitted codec must fit in a later request: its JSON (base64 arrays) within
    EMBQUANT_MAX_CODEC_BYTES."""
    _check_codec_size(sum(_b64_bytes(a.nbytes) for a in codec.state.values()), settings)


def _encoded_row_bytes(codec: codecs.Codec) -> int:
    lay = codec.layout
    return 8 * lay.words + 4 * lay.side_values


def _warned(out: dict[str, Any], codec: codecs.Codec) -> dict[str, Any]:
    """``warnings``: what the scheme says about a setting it accepts for one use only
    (binary scale='none': Hamming search); absent when there is nothing to say."""
    w = setting_warnings(codec.scheme, codec.params)
    if w:
        out["warnings"] = w
    return out


def _count(request: Request, op: str, rows: int) -> None:
    request.app.state.metrics.rows(op, rows)


@router.get("/schemes", summary="Every scheme with its parameters", responses=ok(SchemesAnswer))
async def get_schemes():
    return ORJSONResponse(schemes_document())


@router.get("/limits", summary="This server's request limits (clients size their requests by them)",
            responses=ok(LimitsAnswer))
async def get_limits(request: Request):
    st = request.app.state.settings
    return ORJSONResponse({
        "max_body_bytes": st.max_body_bytes,
        "max_output_bytes": st.max_output_bytes,
        "max_codec_bytes": st.max_codec_bytes,
        "max_rows": st.max_rows,
        "max_dim": st.max_dim,
        "queue_size": st.queue_size,
        "fit_workers": st.fit_workers,
        "fit_queue_size": st.fit_queue_size,
        "max_fit_seconds": st.max_fit_seconds,
        "max_score_pairs": st.max_score_pairs,
        "max_evaluate_rows": st.max_evaluate_rows,
        "max_evaluate_candidates": st.max_evaluate_candidates,
        "max_request_timeout_s": st.max_request_timeout_s,
        "keep_alive_s": st.keep_alive_s,
    })


@router.post("/fit", summary="Learn a codec from a sample", openapi_extra=body_doc(FitRequest, "fit"),
             responses=ok(FitAnswer, FIT_ERRORS, BOTH_FORMS))
async def fit(request: Request):
    st = request.app.state

    def parse(body: bytes, ctype: str | None):
        req = _envelope(body, ctype, FitRequest)
        scheme, params = _scheme_params(req.scheme, req.params, st.settings)
        x = _vectors(req.vectors, st.settings)
        _check_fit_size(scheme, params, x.shape[1], st.settings)
        return req, scheme, params, x

    req, scheme, params, x = await _parse(request, parse)
    job = FitJob(rows=x.shape[0], timeout_s=_timeout(req.timeout_s, st.settings, fit=True), x=x, scheme=scheme,
                 params=params)
    codec = await st.worker.submit(job)
    _check_fitted(codec, st.settings)
    codec_id = st.codec_cache.add(codec)
    _count(request, "fit", x.shape[0])
    out = {"codec": _codec_json(codec), "codec_id": codec_id, "layout": _layout(codec)}
    return _answer(request, _warned(out, codec))


@router.post(
    "/quantize",
    summary="Vectors to packed int64 codes",
    openapi_extra=body_doc(QuantizeRequest, "quantize", "quantize_b64"),
    responses=ok(QuantizeAnswer, WORK_ERRORS, BOTH_FORMS),
)
async def quantize(request: Request):
    st = request.app.state

    def parse(body: bytes, ctype: str | None):
        req = _envelope(body, ctype, QuantizeRequest)
        x = _vectors(req.vectors, st.settings)
        given = (req.codec is not None) + (req.codec_id is not None) + (req.scheme is not None)
        if given != 1:
            raise InvalidInput("give exactly one of scheme (with params), codec or codec_id")
        timeout = _timeout(req.timeout_s, st.settings)
        if req.scheme is None:
            if req.params:
                raise InvalidInput("params go with scheme; a codec already holds its parameters")
            codec, cid = _codec(st, req.codec, req.codec_id)
        elif (hit := st.codec_cache.named_as_sent(req.scheme, req.params, x.shape[1])) is not None:
            codec, cid = hit  # resolved by an earlier request with the same name and params
        else:
            scheme, params = _scheme_params(req.scheme, req.params, st.settings)
            if codecs.learns(scheme, params):  # fitted on these very rows, in the fit lane
                lay = scheme.layout(params, x.shape[1])
                _check_output(x.shape[0], 8 * lay.words + 4 * lay.side_values, "codes and side values", st.settings)
                if req.include_codec:
                    _check_fit_size(scheme, params, x.shape[1], st.settings)
                job = FitJob(rows=x.shape[0], timeout_s=_timeout(req.timeout_s, st.settings, fit=True), x=x,
                             scheme=scheme, params=params, encode=True, quality=req.quality)
                return req, x, job, None
            # learns nothing: resolved once by name, and batched like a request with a codec
            codec, cid = st.codec_cache.named(scheme, params, x.shape[1], sent=(req.scheme, req.params))
        if x.shape[1] != codec.dim:
            raise CodecMismatch(f"vectors have {x.shape[1]} dimensions, the codec was fitted for {codec.dim}")
        check_input = getattr(codec.scheme, "check_input", None)  # input this codec cannot encode (400)
        if check_input is not None:
            check_input(codec, x)
        _check_output(x.shape[0], _encoded_row_bytes(codec), "codes and side values", st.settings)
        return req, x, EncodeJob(rows=x.shape[0], timeout_s=timeout, codec=codec, x=x, quality=req.quality), cid

    req, x, job, cid = await _parse(request, parse)
    res = await st.worker.submit(job)
    if isinstance(job, FitJob):
        if req.include_codec:
            _check_fitted(res.codec, st.settings)
        cid = st.codec_cache.add(res.codec)
    _count(request, "quantize", x.shape[0])
    answer = _answer_form(request)
    form = bodies.array_form(answer, req.encoding, _form(req.vectors))
    out: dict[str, Any] = {
        "codes": bodies.wire(res.codes, form),
        "side": bodies.wire(res.side, form),
        "shape": list(x.shape),
        "layout": _layout(res.codec),
        "codec_id": cid,
    }
    if req.include_codec:
        out["codec"] = _codec_json(res.codec)
    if res.quality is not None:
        out["quality"] = res.quality
    return bodies.respond(_warned(out, res.codec), answer)


@router.post("/dequantize", summary="Packed codes back to vectors", openapi_extra=body_doc(DequantizeRequest, "dequantize"),
             responses=ok(DequantizeAnswer, WORK_ERRORS, BOTH_FORMS))
async def dequantize(request: Request):
    st = request.app.state

    def parse(body: bytes, ctype: str | None):
        req = _envelope(body, ctype, DequantizeRequest)
        codec, _ = _codes_codec(st, req)
        codes = _codes(req, st.settings)
        # before the side values are decoded and before any decoding work
        _check_output(codes.shape[0], 4 * codec.dim, f"float32 vectors of the codec's {codec.dim} dimensions", st.settings)
        side = _side(req, codec, codes)
        job = DecodeJob(rows=codes.shape[0], timeout_s=_timeout(req.timeout_s, st.settings), codec=codec,
                        codes=codes, side=side)
        return req, job

    req, job = await _parse(request, parse)
    y = await st.worker.submit(job)
    job.future = None  # it holds the answer's array too
    _count(request, "dequantize", job.rows)
    answer = _answer_form(request)
    form = bodies.array_form(answer, req.encoding, _form(req.codes))
    content = {"vectors": bodies.wire(y, form), "shape": list(y.shape)}
    del y  # as base64 the array is no longer needed: its memory is free before the JSON is written
    return bodies.respond(content, answer)


@router.post("/score", summary="Top-k codes per query (or every score), scored without decoding them all at once",
             openapi_extra=body_doc(ScoreRequest, "score"), responses=ok(ScoreAnswer, WORK_ERRORS, BOTH_FORMS))
async def score(request: Request):
    st = request.app.state

    def parse(body: bytes, ctype: str | None):
        req = _envelope(body, ctype, ScoreRequest)
        codec, cid = _codes_codec(st, req)
        q = from_wire(req.queries, "queries", "float")
        if q.ndim != 2 or q.shape[0] == 0:
            raise InvalidInput(f"queries must be 2-D (queries, dims) with at least one row, got shape {list(q.shape)}")
        if q.shape[1] != codec.dim:
            raise CodecMismatch(f"queries have {q.shape[1]} dimensions, the codec was fitted for {codec.dim}")
        codes = _codes(req, st.settings)
        if q.shape[0] > st.settings.max_rows:
            raise InvalidInput(f"{q.shape[0]} queries exceed the limit of {st.settings.max_rows} per request")
        pairs = q.shape[0] * codes.shape[0]
        if pairs > st.settings.max_score_pairs:
            raise InvalidInput(
                f"{q.shape[0]} queries x {codes.shape[0]} codes = {pairs} pairs exceed the limit of "
                f"{st.settings.max_score_pairs} (EMBQUANT_MAX_SCORE_PAIRS); split the codes or the queries"
            )
        k = None if req.all else min(req.k, codes.shape[0])
        per_query = 4 * codes.shape[0] if k is None else 12 * k
        _check_output(q.shape[0], per_query, "scores" if k is None else "scores and indices", st.settings)
        side = _side(req, codec, codes)
        m, vectors = _rescoring(req, codec, codes.shape[0], st.settings)
        job = ScoreJob(rows=max(pairs, 1), timeout_s=_timeout(req.timeout_s, st.settings), codec=codec, queries=q,
                       codes=codes, side=side, k=k, metric=req.metric, candidates=m, vectors=vectors,
                       first_pass=req.first_pass)
        return req, job, cid

    req, job, cid = await _parse(request, parse)
    res = await st.worker.submit(job)
    _count(request, "score", job.codes.shape[0])
    answer = _answer_form(request)
    form = bodies.array_form(answer, req.encoding, _form(req.queries))
    out: dict[str, Any] = {"scores": bodies.wire(res.scores, form), "metric": req.metric, "codec_id": cid}
    if res.indices is not None:
        out["indices"] = bodies.wire(res.indices, form)
    if job.candidates is not None:
        out["candidates"] = job.candidates
    return bodies.respond(out, answer)


def _rescoring(req, codec: codecs.Codec, n: int, settings) -> tuple[int | None, np.ndarray | None]:
    """/score's rescoring options: the candidate pool (at least k; clamped to the N
    codes, as k is) and the caller's float vectors of the N codes, if sent."""
    if req.candidates is None:
        if req.vectors is not None:
            raise InvalidInput("vectors are for rescoring: give candidates (the pool per query, at least k) too")
        if req.first_pass != "codes":
            raise InvalidInput(f"first_pass={req.first_pass} finds candidates to rescore: give candidates "
                               "(the pool per query, at least k) too")
        return None, None
    if req.first_pass == "hamming":
        hamming_check(codec)
    if req.all:
        raise InvalidInput("candidates (rescoring the top of each query) does not go with all (every score)")
    if req.candidates < req.k:
        raise InvalidInput(f"candidates={req.candidates} must be at least k={req.k}: the top k are chosen from them")
    vectors = None
    if req.vectors is not None:
        vectors = from_wire(req.vectors, "vectors", "float")
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise InvalidInput(f"vectors must be 2-D with one row per code ({n} rows), got shape {list(vectors.shape)}")
        if vectors.shape[1] != codec.dim:
            raise CodecMismatch(f"vectors have {vectors.shape[1]} dimensions, the codec was fitted for {codec.dim}")
    return min(req.candidates, n), vectors


@router.post("/evaluate", summary="Compare codecs on a sample: bits, error, recall@k, rescoring pool, encode speed",
             openapi_extra=body_doc(EvaluateRequest, "evaluate"), responses=ok(EvaluateAnswer, FIT_ERRORS, BOTH_FORMS))
async def evaluate(request: Request):
    st = request.app.state

    def parse(body: bytes, ctype: str | None):
        req = _envelope(body, ctype, EvaluateRequest)
        settings = st.settings
        x = _vectors(req.vectors, settings)
        q = None
        if req.queries is not None:
            q = from_wire(req.queries, "queries", "float")
            if q.ndim != 2 or q.shape[0] == 0:
                raise InvalidInput(f"queries must be 2-D (queries, dims) with at least one row, got shape {list(q.shape)}")
            if q.shape[1] != x.shape[1]:
                raise InvalidInput(f"queries have {q.shape[1]} dimensions, the vectors {x.shape[1]}")
        rows = x.shape[0] + (0 if q is None else q.shape[0])
        if rows > settings.max_evaluate_rows:
            raise InvalidInput(f"{rows} rows (vectors and queries) exceed the limit of {settings.max_evaluate_rows} "
                               "per evaluation (EMBQUANT_MAX_EVALUATE_ROWS); send a sample")
        fit_i, base_i, q_i = evaluation.split(x.shape[0], req.seed, q is None)
        if base_i.shape[0] < req.k or fit_i.shape[0] < 1:
            raise InvalidInput(f"{x.shape[0]} vectors leave {base_i.shape[0]} to measure recall@{req.k} on (half the "
                               "sample, after any held-out queries): send more vectors, or a smaller k")
        cands = _evaluate_candidates(req, x, settings)
        timeout = _timeout(req.timeout_s, settings) if req.timeout_s is not None else min(
            settings.request_timeout_s + len(cands) * settings.max_fit_seconds, settings.max_request_timeout_s)
        job = EvaluateJob(rows=rows, timeout_s=timeout, x=x, candidates=cands, fit_x=x[fit_i], base=x[base_i],
                          queries=x[q_i] if q is None else q, k=req.k, metric=req.metric,
                          seconds=settings.max_fit_seconds)
        split = {"fit_rows": int(fit_i.shape[0]), "measured_rows": int(base_i.shape[0]),
                 "queries": int(job.queries.shape[0]), "queries_held_out": q is None, "seed": req.seed}
        return req, job, split

    req, job, split = await _parse(request, parse)
    table = await st.worker.submit(job)
    _count(request, "evaluate", job.rows)
    return _answer(request, {"rows": table, "k": req.k, "metric": req.metric, "split": split,
                             "pareto": "bits per dimension (lower) vs recall_scored (higher)",
                             "pool_target": evaluation.POOL_TARGET})


def _evaluate_candidates(req, x: np.ndarray, settings) -> list:
    """(scheme, params, params as given) per candidate: the request's, or the built-in
    settings under its bit budget. A bad one is refused naming it."""
    if (req.candidates is None) == (req.bits is None):
        raise InvalidInput("give candidates (a list of {scheme, params}) or a bits budget, one of them")
    if req.candidates is not None:
        given = [(c.scheme, c.params) for c in req.candidates]
    else:
        unit = bool(np.all(np.abs(np.linalg.norm(x.astype(np.float64), axis=1) - 1.0) <= 1e-3))
        given = [(n, dict(p)) for n, p in evaluation.recommended(x.shape[1], req.bits, unit)]
        if not given:
            raise InvalidInput(f"no built-in setting takes at most {req.bits:g} bits per dimension (the least takes 1)")
        for name, p in given:
            if name == "bitcodes":  # its own fit bound, within the server's
                p["max_seconds"] = min(30.0, settings.max_fit_seconds)
    if len(given) > settings.max_evaluate_candidates:
        raise InvalidInput(f"{len(given)} candidates exceed the limit of {settings.max_evaluate_candidates} "
                           "(EMBQUANT_MAX_EVALUATE_CANDIDATES)")
    out = []
    for i, (name, params) in enumerate(given):
        try:
            scheme, parsed = _scheme_params(name, params, settings)
            scheme.layout(parsed, x.shape[1])
        except EmbquantError as e:
            raise evaluation.naming(e, i, evaluation.label(str(name), params)) from None
        except ValueError as e:
            raise evaluation.naming(InvalidInput(str(e)), i, evaluation.label(str(name), params)) from None
        out.append((scheme, parsed, params))
    return out


@router.get("/healthz", summary="The process is alive", responses=ok(HealthAnswer))
async def healthz():
    return ORJSONResponse({"status": "ok"})


@router.get("/readyz", summary="The worker is started and warmed up",
            responses=ok(ReadyAnswer, error_responses(503)))
async def readyz(request: Request):
    w = request.app.state.worker
    if not w.ready:
        raise ShuttingDown("not ready: the worker is starting or shutting down")
    asked = request.app.state.settings.device
    # why `auto` runs on the CPU (cached: the probe ran once at start-up)
    note = cuda_problem() if asked == "auto" and w.device.type == "cpu" else None
    return ORJSONResponse({"status": "ready", "device": str(w.device), "device_requested": asked,
                           "device_note": note, "kernels": kernels.active(), "kernels_note": w.kernels_note,
                           "queue_depth": w.queue_depth, "pid": os.getpid()})


@router.get("/metrics", summary="Prometheus metrics (text format 0.0.4, or OpenMetrics when the Accept header asks)",
            response_class=Response)
async def metrics(request: Request):
    body, content_type = request.app.state.metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})
