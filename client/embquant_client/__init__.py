"""Python client for the embquant service (httpx + numpy; never imports torch)."""

from ._arrays import to_bits, to_decimal
from ._client import AsyncClient, Client
from ._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    CodecMismatchError,
    EmbquantClientError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    TimeoutError,
    UnknownSchemeError,
)
from ._models import Encoded, Fitted

__version__ = "0.1.0"
__all__ = [
    "AsyncClient", "Client", "Encoded", "Fitted", "to_bits", "to_decimal",
    "EmbquantClientError", "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError",
    "BadRequestError", "UnknownSchemeError", "CodecMismatchError", "NotFoundError", "PayloadTooLargeError",
    "OverloadedError", "InternalServerError", "ServiceUnavailableError", "TimeoutError",
]
