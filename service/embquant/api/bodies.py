"""Request and response bodies in either form: JSON (``application/json``) or
msgpack (``application/msgpack``; ``application/x-msgpack`` and
``application/vnd.msgpack`` are read too).

Both forms carry the same object. In msgpack bodies an array is the same array
object as in JSON, ``{"dtype", "shape", "data"}``, with ``data`` the raw
little-endian bytes (a msgpack bin) instead of base64 text, so a body turns into
numpy arrays with no number ever parsed: a large bin is read in place (`unpack`).

The answer's form: the one the ``Accept`` header names (msgpack or JSON); without
one (or ``*/*``), the request's own. Error bodies are always JSON.
"""

from __future__ import annotations

import base64
import functools
from typing import Any

import msgpack
import numpy as np
import orjson
from starlette.responses import Response, StreamingResponse

from .wire_arrays import to_wire
from ..errors import InvalidInput
from . import unpack
from .responses import ORJSONResponse

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
ACCEPTED = frozenset({JSON}) | MSGPACK_TYPES


def media_type(value: str | bytes | None) -> str | None:
    """The bare, lower-case media type of a Content-Type value (no parameters)."""
    if value is None:
        return None
    return _bare(value)


@functools.lru_cache(maxsize=64)  # read three times per request, from a few distinct values
def _bare(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.split(";", 1)[0].strip().lower()


def is_msgpack(ctype: str | None) -> bool:
    return ctype in MSGPACK_TYPES


def loads(body: bytes, ctype: str | None) -> dict[str, Any]:
    """The request object; InvalidInput for anything that is not one."""
    if not body:
        raise InvalidInput("request body is empty; send a JSON or msgpack object")
    if is_msgpack(ctype):
        try:
            # strict_map_key: keys are strings (or bytes); nesting is bounded by the
            # unpacker's own stack; ext types come back as inert ExtType values that
            # validation refuses. Nothing here can run code (no pickle).
            obj = _unpackb(body)
        except Exception as e:  # noqa: BLE001 - msgpack raises several types for bad input
            why = "nested too deep" if isinstance(e, msgpack.StackError) else (str(e) or type(e).__name__)
            raise InvalidInput(f"request body is not valid msgpack: {why}") from None
        what = "msgpack map"
    else:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InvalidInput(f"request body is not valid JSON: {e}") from None
        what = "JSON object"
    if not isinstance(obj, dict):
        raise InvalidInput(f"request body must be a {what}")
    return obj


def _unpackb(body) -> Any:
    """``msgpack.unpackb``; a large body's large bins are views of it (`unpack`)."""
    if len(body) >= unpack.VIEW_BYTES:
        try:
            return unpack.unpack(body)
        except unpack.Unhandled:
            pass
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def answer_form(accept: str | None, request_ctype: str | None) -> str:
    """ "msgpack" or "json" for the answer: what Accept names first, else the request's form."""
    if accept:
        for part in accept.split(","):
            t = media_type(part)
            if t in MSGPACK_TYPES:
                return "msgpack"
            if t == JSON:
                return "json"
    return "msgpack" if is_msgpack(request_ctype) else "json"


def array_form(answer: str, encoding: str | None, request_form: str) -> str:
    """How arrays travel in the answer: raw bytes in msgpack (lists if asked); in JSON
    the ``encoding`` asked for, else the form the request's arrays came in."""
    if answer == "msgpack":
        return "json" if encoding == "json" else "binary"
    if encoding:
        return encoding
    return "json" if request_form == "json" else "base64"


class MsgpackResponse(Response):
    media_type = MSGPACK

    def render(self, content: Any) -> bytes:
        return msgpack.packb(content, use_bin_type=True, default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # lists asked for (encoding="json")
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as msgpack")


#: A base64 array in a JSON answer larger than this is streamed: its text is written
#: in pieces, so the answer never exists whole as a string (nor twice, in the JSON
#: writer's buffer): a 16 MiB answer then costs the array and one piece.
STREAM_BYTES = 1 << 20
_PIECE = 3 << 18  # bytes of array per base64 piece (a multiple of 3: pieces join)


class _LazyB64:
    __slots__ = ("arr",)

    def __init__(self, arr: np.ndarray):
        self.arr = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)


def respond(content: dict[str, Any], answer: str) -> Response:
    if answer == "msgpack":
        return MsgpackResponse(content)
    lazy = [k for k, v in content.items() if isinstance(v, _LazyB64)]
    if not lazy:
        return ORJSONResponse(content)
    # the JSON around the arrays, with a token where each array's text goes
    shell = dict(content)
    for i, k in enumerate(lazy):
        a = content[k].arr
        shell[k] = {"dtype": a.dtype.name, "shape": list(a.shape), "data": f"\x00{i}\x00"}
    text = orjson.dumps(shell, option=orjson.OPT_SERIALIZE_NUMPY)
    parts: list[Any] = []
    for i, k in enumerate(lazy):
        token = orjson.dumps(f"\x00{i}\x00")[1:-1]
        head, text = text.split(token, 1)
        parts += [head, content[k].arr]
    parts.append(text)
    length = sum(len(p) if isinstance(p, bytes) else 4 * (-(-p.nbytes // 3)) for p in parts)

    def pieces():
        for p in parts:
            if isinstance(p, bytes):
                yield p
                continue
            view = p.data.cast("B") if p.size else memoryview(b"")
            for lo in range(0, len(view), _PIECE):
                yield base64.b64encode(view[lo:lo + _PIECE])

    return StreamingResponse(_iterate(pieces()), media_type=JSON, headers={"content-length": str(length)})


async def _iterate(gen):
    for piece in gen:
        yield piece


def wire(arr: np.ndarray | None, form: str) -> Any:
    if arr is None:
        return None
    if form == "base64" and arr.nbytes > STREAM_BYTES:
        return _LazyB64(arr)
    return to_wire(arr, form)
