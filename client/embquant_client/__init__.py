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
    DeadlineExceededError,
    EmbquantClientError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServiceUnavailableError,
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
    "OverloadedError", "InternalServerError", "ServiceUnavailableError", "DeadlineExceededError",
]


def __getattr__(name: str):
    # The 504 error was called TimeoutError, which shadowed the builtin in any module that
    # imported it; the old name still works until 0.2, with a DeprecationWarning, and is
    # left out of __all__ so ``from embquant_client import *`` no longer shadows it.
    if name == "TimeoutError":
        import warnings

        warnings.warn("embquant_client.TimeoutError is now DeadlineExceededError (the old name goes in 0.2)",
                      DeprecationWarning, stacklevel=2)
        return DeadlineExceededError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
