"""Python client for the embquant service (httpx + numpy; never imports torch)."""

from ._arrays import to_bits, to_decimal
from ._client import AsyncClient, Client
from ._core import Limits, RetryPolicy
from ._errors import (
    APIConnectionError,
    APIConnectionLostError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CodecMismatchError,
    EmbquantClientError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceUnavailableError,
    TimeoutError,
    UnknownCodecError,
    UnknownSchemeError,
    UnsupportedMediaTypeError,
)
from ._models import Codec, Encoded, Evaluation, Fitted, Scored

__version__ = "0.1.0"
__all__ = [
    "AsyncClient", "Client", "Codec", "Encoded", "Evaluation", "Fitted", "Scored", "Limits", "RetryPolicy", "to_bits", "to_decimal",
    "EmbquantClientError", "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError",
    "APIConnectionLostError", "AuthenticationError", "RequestTimeoutError", "UnsupportedMediaTypeError",
    "BadRequestError", "UnknownSchemeError", "UnknownCodecError", "CodecMismatchError", "NotFoundError", "PayloadTooLargeError",
    "OverloadedError", "InternalServerError", "ServiceUnavailableError", "TimeoutError",
]
