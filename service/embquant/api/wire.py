"""Wire models: the request envelopes (validated by pydantic) and the OpenAPI
documentation of them. Array fields stay raw here and are decoded by
`api.wire_arrays` (numpy, no per-number Python objects)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..arrays import WIRE_DTYPES

_ARRAY_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "description": "rows as JSON lists"},
        {
            "type": "object",
            "description": "little-endian bytes, base64",
            "properties": {
                "dtype": {"type": "string", "enum": sorted(WIRE_DTYPES)},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "data": {"type": "string", "format": "byte"},
            },
            "required": ["dtype", "shape", "data"],
        },
    ]
}

Encoding = Literal["json", "base64"]
CODEC_ID = "the id of a codec this service has seen (a /fit or /quantize answer's codec_id), instead of the codec"


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FitRequest(_Req):
    scheme: str = Field(..., description="a name from GET /schemes")
    params: dict[str, Any] = Field(default_factory=dict, description="the scheme's parameters")
    vectors: Any = Field(..., json_schema_extra=_ARRAY_SCHEMA, description="float (N, D) sample to fit on")
    timeout_s: float | None = Field(None, ge=0.001, le=86400, description="deadline for this request, seconds")


class QuantizeRequest(_Req):
    vectors: Any = Field(..., json_schema_extra=_ARRAY_SCHEMA, description="float (N, D) vectors")
    scheme: str | None = Field(None, description="scheme to fit on these vectors (or give codec)")
    params: dict[str, Any] = Field(default_factory=dict)
    codec: dict[str, Any] | None = Field(None, description="a codec from /fit or an earlier /quantize")
    codec_id: str | None = Field(None, description=CODEC_ID)
    encoding: Encoding | None = Field(None, description="array form of a JSON response; default: the request's")
    quality: bool = Field(False, description="also return relative squared error and mean cosine")
    include_codec: bool = Field(True, description="echo the codec in the response")
    timeout_s: float | None = Field(None, ge=0.001, le=86400, description="deadline for this request, seconds")


class DequantizeRequest(_Req):
    codes: Any = Field(..., json_schema_extra=_ARRAY_SCHEMA, description="int64 (N, W) packed codes")
    side: Any = Field(None, json_schema_extra=_ARRAY_SCHEMA, description="float32 (N, G) side values, if the codec has them")
    codec: dict[str, Any] | None = Field(None, description="the codec the codes were made with (or codec_id)")
    codec_id: str | None = Field(None, description=CODEC_ID)
    encoding: Encoding | None = None
    timeout_s: float | None = Field(None, ge=0.001, le=86400, description="deadline for this request, seconds")


class ScoreRequest(_Req):
    queries: Any = Field(..., json_schema_extra=_ARRAY_SCHEMA, description="float (Q, D) query vectors")
    codes: Any = Field(..., json_schema_extra=_ARRAY_SCHEMA, description="int64 (N, W) packed codes to score")
    side: Any = Field(None, json_schema_extra=_ARRAY_SCHEMA, description="float32 (N, G) side values, if the codec has them")
    codec: dict[str, Any] | None = Field(None, description="the codec the codes were made with (or codec_id)")
    codec_id: str | None = Field(None, description=CODEC_ID)
    k: int = Field(10, ge=1, le=100_000, description="how many best codes per query")
    all: bool = Field(False, description="every score, (Q, N), instead of the top k")
    metric: Literal["dot", "cosine", "l2"] = Field("dot", description="l2: squared distance, smallest first")
    candidates: int | None = Field(
        None, ge=1, le=100_000,
        description="rescoring: keep the best `candidates` (>= k; clamped to N) per query on the codes, then "
                    "answer the top k of those scored exactly, with their decoded vectors or with `vectors`")
    vectors: Any = Field(None, json_schema_extra=_ARRAY_SCHEMA,
                         description="float (N, D) originals of the N codes, to rescore with (needs candidates)")
    first_pass: Literal["codes", "hamming"] = Field(
        "codes",
        description="how the candidates are found: `codes` scores the float queries on the codes; `hamming` "
                    "(codes of one bit per dimension: binary, or lloyd with bits=1; needs candidates) "
                    "encodes the queries too and keeps the codes with the fewest differing bits, as a binary "
                    "index does, faster and coarser")
    encoding: Encoding | None = None
    timeout_s: float | None = Field(None, ge=0.001, le=86400, description="deadline for this request, seconds")


class EvaluateCandidate(_Req):
    scheme: str = Field(..., description="a name from GET /schemes")
    params: dict[str, Any] = Field(default_factory=dict, description="the scheme's parameters")


class EvaluateRequest(_Req):
    vectors: Any = Field(..., json_schema_extra=_ARRAY_SCHEMA,
                         description="float (N, D) sample: half fits each candidate, the other half is measured")
    queries: Any = Field(None, json_schema_extra=_ARRAY_SCHEMA,
                         description="float (Q, D) queries; default: a held-out tenth of the sample (at most 1,000)")
    candidates: list[EvaluateCandidate] | None = Field(None, min_length=1, description="the settings to compare")
    bits: float | None = Field(None, gt=0, le=64,
                               description="instead of candidates: the built-in recommended settings whose codes "
                                           "take at most this many bits per dimension")
    k: int = Field(10, ge=1, le=1000, description="recall@k")
    metric: Literal["dot", "cosine", "l2"] = Field("dot", description="the search the recall is measured for")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the split")
    timeout_s: float | None = Field(None, ge=0.001, le=86400, description="deadline for this request, seconds")


EXAMPLE_VECTORS = [[0.12, -0.5, 0.33, 0.9, -0.01, 0.2, -0.7, 0.05], [0.4, 0.1, -0.2, -0.3, 0.6, -0.9, 0.0, 0.25]]

EXAMPLES = {
    "fit": {"scheme": "distributional", "params": {"bits": 4}, "vectors": EXAMPLE_VECTORS},
    "quantize": {"vectors": EXAMPLE_VECTORS, "scheme": "absmax", "params": {"bits": 4}, "quality": True},
    "quantize_b64": {
        "vectors": {"dtype": "float32", "shape": [1, 4], "data": "zczMPQAAAL8AAIA/AAAAAA=="},
        "scheme": "absmax",
        "params": {"bits": 8},
    },
    "score": {
        "queries": [[0.4, 0.1, -0.2, -0.3, 0.6, -0.9, 0.0, 0.25]],
        "codes": [[1922558520]],
        "side": [[0.12857142]],
        "codec": {"format_version": 1, "scheme": "absmax", "scheme_version": 1, "dim": 8, "params": {"bits": 4}, "state": {}},
        "k": 1,
    },
    "evaluate": {
        # 24 rows of 8 dimensions: 2 held-out queries, 11 rows to fit on, 11 to measure
        "vectors": [[round(math.sin(1.7 * i + 0.9 * j + 0.1 * i * j), 3) for j in range(8)] for i in range(24)],
        "candidates": [{"scheme": "lloyd", "params": {"bits": 2}}, {"scheme": "binary", "params": {"rotate": True}}],
        "k": 2,
    },
    "dequantize": {
        "codes": [[1922558520]],
        "side": [[0.12857142]],
        "codec": {"format_version": 1, "scheme": "absmax", "scheme_version": 1, "dim": 8, "params": {"bits": 4}, "state": {}},
    },
}


def body_doc(model: type[BaseModel], *names: str) -> dict[str, Any]:
    """openapi_extra for a route that reads its body itself (orjson or msgpack, size limit)."""
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": schema,
                    "examples": {n: {"value": EXAMPLES[n]} for n in names},
                },
                "application/msgpack": {
                    "schema": schema,
                    "description": "the same object as msgpack; array data as raw little-endian bytes (bin)",
                },
            },
        }
    }


# -- answers (documentation: the routes write their answers themselves) ------------------
_ANSWER_ARRAY = {**_ARRAY_SCHEMA, "description": "in the form the request's arrays came in (JSON lists or base64), "
                 "or as `encoding` asks; in a msgpack answer, data is raw bytes (bin)"}


class _Ans(BaseModel):
    """An answer's model: forbids fields it does not name, so the test that checks real
    answers against these models finds any the documentation lacks."""

    model_config = ConfigDict(extra="forbid")


class LayoutAnswer(_Ans):
    bits: int = Field(..., description="bits per symbol")
    symbols: int = Field(..., description="symbols per vector")
    words: int = Field(..., description="int64 words per vector")
    side: int = Field(..., description="float32 side values per vector")
    levels: int = Field(..., description="valid symbols are 0 .. levels-1")
    bits_per_vector: int = Field(..., description="stored bits per vector, words and side values")


class _Codec(BaseModel):
    model_config = ConfigDict(extra="allow")
    format_version: int
    scheme: str
    scheme_version: int
    dim: int
    params: dict[str, Any]
    state: dict[str, Any] = Field(..., description="name -> base64 array object")


class FitAnswer(_Ans):
    codec: _Codec = Field(..., description="the fitted codec: send it (or its codec_id) with later requests")
    codec_id: str = Field(..., description="SHA-256 of the codec's sorted JSON")
    layout: LayoutAnswer
    warnings: list[str] | None = Field(None, description="present when a setting suits one use only")


class Quality(_Ans):
    relative_squared_error: float
    mean_cosine: float


class QuantizeAnswer(_Ans):
    codes: Any = Field(..., json_schema_extra=_ANSWER_ARRAY, description="int64 (N, words) packed codes")
    side: Any = Field(None, json_schema_extra=_ANSWER_ARRAY, description="float32 (N, side) side values, or null")
    shape: list[int] = Field(..., description="the vectors' (N, D)")
    layout: LayoutAnswer
    codec_id: str
    codec: _Codec | None = Field(None, description="with include_codec (or a codec fitted on these rows)")
    quality: Quality | None = Field(None, description="with quality=true")
    warnings: list[str] | None = None


class DequantizeAnswer(_Ans):
    vectors: Any = Field(..., json_schema_extra=_ANSWER_ARRAY, description="float32 (N, D) reconstructions")
    shape: list[int]


class ScoreAnswer(_Ans):
    scores: Any = Field(..., json_schema_extra=_ANSWER_ARRAY, description="float32 (Q, k) best first, or (Q, N) with all")
    indices: Any = Field(None, json_schema_extra=_ANSWER_ARRAY, description="int64 (Q, k) code rows; absent with all")
    metric: str
    codec_id: str
    candidates: int | None = Field(None, description="the rescoring pool used, when asked for")


class EvaluateAnswer(_Ans):
    rows: list[dict[str, Any]] = Field(..., description="one per candidate: scheme, params, bits, "
                                       "relative_squared_error, recall, recall_scored, pool, encode_rows_per_s, "
                                       "codec_bytes, fit_seconds, pareto (or error)")
    k: int
    metric: str
    split: dict[str, Any]
    pareto: str
    pool_target: float


class HealthAnswer(_Ans):
    status: Literal["ok"]


class ReadyAnswer(_Ans):
    status: Literal["ready"]
    device: str
    device_requested: str
    device_note: str | None
    kernels: Literal["numba", "torch"] = Field(..., description="the CPU codec kernels answering now")
    kernels_note: str | None = Field(..., description="why they are not (yet) the compiled ones; null when they are")
    queue_depth: int
    pid: int


class SchemesAnswer(_Ans):
    schemes: list[dict[str, Any]] = Field(..., description="each scheme: name, version, summary, data_dependent, "
                                          "params (type, default, description of each), examples")
    recommended: list[dict[str, Any]] = Field(..., description="per bit budget, a data-oblivious and a fitted setting "
                                              "with their measured figures")
    packing: dict[str, Any] = Field(..., description="how symbols are packed into int64 words")


class LimitsAnswer(_Ans):
    max_body_bytes: int
    max_output_bytes: int
    max_codec_bytes: int
    max_rows: int
    max_dim: int
    queue_size: int
    fit_workers: int
    fit_queue_size: int
    max_fit_seconds: float
    max_score_pairs: int
    max_evaluate_rows: int
    max_evaluate_candidates: int
    max_request_timeout_s: float
    keep_alive_s: float


#: Work routes answer in the form Accept names, else in the request's own.
BOTH_FORMS = "the answer (JSON, or msgpack when Accept or the request's Content-Type asks)"


def ok(model: type[BaseModel], errors: dict | None = None, description: str = "the answer (JSON)") -> dict:
    """``responses=`` with the 200 answer's model beside the errors."""
    return {200: {"model": model, "description": description}, **(errors or {})}
