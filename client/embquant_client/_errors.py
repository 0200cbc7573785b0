"""Typed errors with one root.

EmbquantClientError
  APIError
    APIStatusError (status_code, type, message, body)
      BadRequestError (400) -> UnknownSchemeError, CodecMismatchError
      AuthenticationError (401: no API key, or one the service does not accept)
      NotFoundError (404), RequestTimeoutError (408: the body did not arrive in time),
      PayloadTooLargeError (413), UnsupportedMediaTypeError (415), OverloadedError (429)
      DeadlineExceededError (504: the service's deadline passed; ``TimeoutError`` until 0.2)
      InternalServerError (500), ServiceUnavailableError (503)
    APIConnectionError (the service could not be reached: nothing was sent)
      APITimeoutError (no answer in time)
      APIConnectionLostError (the connection broke before the answer was complete)
"""

from __future__ import annotations

import builtins
from typing import Any


class EmbquantClientError(Exception):
    """Root of every error this client raises."""


class APIError(EmbquantClientError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class APIConnectionError(APIError):
    """The service could not be reached (refused, reset, DNS...)."""


class APITimeoutError(APIConnectionError, builtins.TimeoutError):
    """No answer within the client's timeout."""


class APIConnectionLostError(APIConnectionError):
    """The connection was lost after the request was sent and before the answer was
    complete (the server closed it or died mid-request): the request may have run."""


class APIStatusError(APIError):
    status_code: int = 0

    def __init__(self, message: str, *, status_code: int, type: str | None, body: Any, headers=None):
        super().__init__(message)
        self.status_code = status_code
        self.type = type
        self.body = body
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status_code} {self.type or 'error'}: {self.message}"


class BadRequestError(APIStatusError):
    pass


class UnknownSchemeError(BadRequestError):
    pass


class CodecMismatchError(BadRequestError):
    pass


class AuthenticationError(APIStatusError):
    """401: the service needs an API key (``api_key=`` or $EMBQUANT_API_KEY) and got
    none, or one it does not accept. Never retried."""

    def __str__(self) -> str:
        return f"{super().__str__()} (the client sends the key given as api_key= or in EMBQUANT_API_KEY)"


class NotFoundError(APIStatusError):
    pass


class UnknownCodecError(NotFoundError):
    """The replica does not hold a codec sent by ``codec_id``; the client sends the
    codec itself once and goes on with the id."""


class PayloadTooLargeError(APIStatusError):
    pass


class RequestTimeoutError(APIStatusError):
    pass


class UnsupportedMediaTypeError(APIStatusError):
    pass


class OverloadedError(APIStatusError):
    pass


class DeadlineExceededError(APIStatusError):
    """504: the request ran past the service's deadline (a status error; the client's
    own timeout is `APITimeoutError`, which is also the builtin ``TimeoutError``)."""


class InternalServerError(APIStatusError):
    pass


class ServiceUnavailableError(APIStatusError):
    pass


_BY_TYPE = {"unknown_scheme": UnknownSchemeError, "codec_mismatch": CodecMismatchError,
            "unknown_codec": UnknownCodecError}
_BY_STATUS = {
    400: BadRequestError, 401: AuthenticationError, 404: NotFoundError, 408: RequestTimeoutError, 413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError, 422: BadRequestError,
    429: OverloadedError, 503: ServiceUnavailableError, 504: DeadlineExceededError,
}


def from_response(status: int, body: Any, headers=None) -> APIStatusError:
    err = body.get("error") if isinstance(body, dict) else None
    type_ = err.get("type") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else str(body)[:500]
    cls = _BY_TYPE.get(type_) or _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(message or f"HTTP {status}", status_code=status, type=type_, body=body, headers=headers)
