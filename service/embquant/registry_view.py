"""The GET /schemes document, built once from the registry (it never changes at run time)."""

from __future__ import annotations

import functools
from typing import Any

from .codecs import all_schemes, describe
from .codecs.packing import ALLOWED_BITS


@functools.cache
def schemes_document() -> dict[str, Any]:
    return {
        "schemes": [describe(s) for s in all_schemes().values()],
        "packing": {
            "word": "int64, little-endian in binary form, two's complement",
            "rule": "v = 64 // bits symbols per word; symbol j of a row in word j // v at bit (j % v) * bits, "
            "least significant bits first; unused bits zero",
            "bits": list(ALLOWED_BITS),
        },
    }
