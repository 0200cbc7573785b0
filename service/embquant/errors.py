"""Domain errors. The core raises these; the API maps them to HTTP in one place
(`embquant.api.errors`). Every error has a stable ``type`` string that travels in
the error body and that the client maps back to an exception class."""

from __future__ import annotations


class EmbquantError(Exception):
    """Root of every error embquant raises on purpose."""

    type = "internal"
    #: True when the request body was not read to its end: the answer then closes
    #: the connection, which cannot carry another request.
    close_connection = False

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(EmbquantError):
    """The caller sent something we cannot work with (shape, dtype, NaN, range...)."""

    type = "validation"


class UnknownScheme(InvalidInput):
    type = "unknown_scheme"


class CodecMismatch(InvalidInput):
    """Codes, side values or vectors do not fit the codec they came with."""

    type = "codec_mismatch"


class UnknownCodec(EmbquantError):
    """A ``codec_id`` this replica does not hold (never seen, or evicted): send the
    codec itself once; the answer carries its id again."""

    type = "unknown_codec"


class UnsupportedVersion(InvalidInput):
    type = "unsupported_version"


class PayloadTooLarge(EmbquantError):
    type = "payload_too_large"


class RequestTimeout(EmbquantError):
    """The request body did not arrive in full within the server's body read timeout."""

    type = "request_timeout"
    close_connection = True


class UnsupportedMediaType(EmbquantError):
    """A body that is not declared ``application/json`` or ``application/msgpack``."""

    type = "unsupported_media_type"


class Overloaded(EmbquantError):
    """The worker queue is full; retry after a moment."""

    type = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(EmbquantError):
    type = "timeout"


class ShuttingDown(EmbquantError):
    type = "unavailable"
