"""Pure tensor code: schemes, codecs, packing. No HTTP, no asyncio.

The verbs live in `core` (fit, encode, decode and their checks); this package
only re-exports the public names.
"""

from __future__ import annotations

from . import core
from .base import FORMAT_VERSION, Codec, Layout, RotatableParams, Scheme, SchemeParams
from .core import (
    cancel_scope, check_code_shapes, check_codes, check_vectors, checkpoint, decode, encode, fit, learns, quality,
)
from .score import METRICS, score
from .serial import codec_from_json
from .registry import all_schemes, describe, get_scheme, parse_params, register, schemes_document

__all__ = [
    "FORMAT_VERSION", "METRICS", "Codec", "Layout", "RotatableParams", "Scheme", "SchemeParams", "all_schemes", "cancel_scope",
    "check_code_shapes", "check_codes", "check_vectors", "checkpoint", "codec_from_json", "core", "decode", "describe",
    "encode", "fit", "get_scheme", "learns", "parse_params", "quality", "register", "schemes_document", "score",
]
