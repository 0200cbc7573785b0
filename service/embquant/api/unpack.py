"""msgpack bodies whose large bins are views of the body, not copies.

``msgpack.unpackb`` copies every bin into a new ``bytes``; for a request of vectors that
is one more pass over the whole body, and the array read from that ``bytes`` is
read-only, so `wire_arrays.from_wire` copies it once again to make it writable. `unpack`
walks the (small) structure of a request in Python and answers each bin of at least
`VIEW_BYTES` as a ``memoryview`` of the body: with the body a ``bytearray`` (what
`fast.Incoming.body` assembles from several chunks) the vectors are read in place.

It gives the objects ``msgpack.unpackb(body, raw=False, strict_map_key=True)`` gives
(bins as views), and nothing else: whatever it does not handle the same way (ext
types, invalid UTF-8, keys that are not strings or bytes, truncated or trailing
bytes, deep nesting, more than `MAX_ITEMS` items) it leaves to ``msgpack.unpackb``
itself, which then answers or raises as it always has. The work done before that
hand-over is bounded by `MAX_ITEMS`.
"""

from __future__ import annotations

import struct
from typing import Any

#: bins at least this long are answered as views of the body (smaller ones as bytes)
VIEW_BYTES = 1 << 16
#: items walked in Python before the body goes to msgpack's own decoder instead (a
#: body of vectors as msgpack lists, say)
MAX_ITEMS = 4096
MAX_DEPTH = 32


class Unhandled(Exception):
    """Not a body this walker answers for: use ``msgpack.unpackb``."""


_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_I8 = struct.Struct(">b").unpack_from
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_F32 = struct.Struct(">f").unpack_from
_F64 = struct.Struct(">d").unpack_from


def unpack(body) -> Any:
    """The object of a msgpack body, large bins as memoryviews of it; `Unhandled` where
    ``msgpack.unpackb`` must decide."""
    view = memoryview(body)
    if view.ndim != 1 or view.itemsize != 1:
        raise Unhandled
    walker = _Walker(view)
    try:
        obj, end = walker.value(0, 0)
    except (IndexError, struct.error, UnicodeDecodeError, TypeError):
        raise Unhandled from None
    if end != len(view):
        raise Unhandled
    return obj


class _Walker:
    __slots__ = ("b", "items")

    def __init__(self, view: memoryview):
        self.b = view
        self.items = 0

    def _bytes(self, i: int, n: int) -> tuple[memoryview, int]:
        end = i + n
        if end > len(self.b):
            raise Unhandled
        return self.b[i:end], end

    def value(self, i: int, depth: int) -> tuple[Any, int]:
        self.items += 1
        if self.items > MAX_ITEMS or depth > MAX_DEPTH:
            raise Unhandled
        b = self.b
        t = b[i]
        i += 1
        if t <= 0x7F:
            return t, i
        if t >= 0xE0:
            return t - 0x100, i
        if 0xA0 <= t <= 0xBF:
            return self._str(i, t & 0x1F)
        if 0x80 <= t <= 0x8F:
            return self._map(i, t & 0x0F, depth)
        if 0x90 <= t <= 0x9F:
            return self._array(i, t & 0x0F, depth)
        if t == 0xC0:
            return None, i
        if t == 0xC2:
            return False, i
        if t == 0xC3:
            return True, i
        if t == 0xC4:
            return self._bin(i + 1, b[i])
        if t == 0xC5:
            return self._bin(i + 2, _U16(b, i)[0])
        if t == 0xC6:
            return self._bin(i + 4, _U32(b, i)[0])
        if t == 0xCA:
            return _F32(b, i)[0], i + 4
        if t == 0xCB:
            return _F64(b, i)[0], i + 8
        if t == 0xCC:
            return b[i], i + 1
        if t == 0xCD:
            return _U16(b, i)[0], i + 2
        if t == 0xCE:
            return _U32(b, i)[0], i + 4
        if t == 0xCF:
            return _U64(b, i)[0], i + 8
        if t == 0xD0:
            return _I8(b, i)[0], i + 1
        if t == 0xD1:
            return _I16(b, i)[0], i + 2
        if t == 0xD2:
            return _I32(b, i)[0], i + 4
        if t == 0xD3:
            return _I64(b, i)[0], i + 8
        if t == 0xD9:
            return self._str(i + 1, b[i])
        if t == 0xDA:
            return self._str(i + 2, _U16(b, i)[0])
        if t == 0xDB:
            return self._str(i + 4, _U32(b, i)[0])
        if t == 0xDC:
            return self._array(i + 2, _U16(b, i)[0], depth)
        if t == 0xDD:
            return self._array(i + 4, _U32(b, i)[0], depth)
        if t == 0xDE:
            return self._map(i + 2, _U16(b, i)[0], depth)
        if t == 0xDF:
            return self._map(i + 4, _U32(b, i)[0], depth)
        raise Unhandled  # ext types, 0xC1 (never used): msgpack's answer

    def _str(self, i: int, n: int) -> tuple[str, int]:
        raw, end = self._bytes(i, n)
        return str(raw, "utf-8"), end

    def _bin(self, i: int, n: int) -> tuple[Any, int]:
        raw, end = self._bytes(i, n)
        return (raw if n >= VIEW_BYTES else bytes(raw)), end

    def _array(self, i: int, n: int, depth: int) -> tuple[list, int]:
        if self.items + n > MAX_ITEMS:
            raise Unhandled
        out = []
        for _ in range(n):
            v, i = self.value(i, depth + 1)
            out.append(v)
        return out, i

    def _map(self, i: int, n: int, depth: int) -> tuple[dict, int]:
        if self.items + 2 * n > MAX_ITEMS:
            raise Unhandled
        out = {}
        for _ in range(n):
            k, i = self.value(i, depth + 1)
            if not isinstance(k, (str, bytes)):  # strict_map_key; a view key is a large bin
                raise Unhandled
            v, i = self.value(i, depth + 1)
            out[k] = v
        return out, i
