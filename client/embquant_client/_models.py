from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._arrays import unpack_bits

#: ``Codec.save`` files: {"embquant_codec_file": 1, "codec_id", "layout", "codec"}.
CODEC_FILE_VERSION = 1

#: The whole-array form of ``Encoded.to_bytes()``: this 72-byte header, then the rows
#: in the per-row form. Header, little-endian: magic b"EMBQCODE", version u16,
#: header size u16, bits u16, reserved u16, rows u64, dim u32, words u32, side u32,
#: symbols u32, then the codec id as 32 raw bytes (zeros when unknown).
CODES_MAGIC = b"EMBQCODE"
CODES_VERSION = 1
_HEADER = struct.Struct("<8sHHHHQIIII32s")
HEADER_BYTES = _HEADER.size  # 72


def row_dtype(words: int, side: int) -> np.dtype:
    """One row of the per-row byte form, packed: ``words`` little-endian int64 code
    words, then ``side`` little-endian float32 side values (8*words + 4*side bytes)."""
    fields_ = [("codes", "<i8", (int(words),))]
    if side:
        fields_.append(("side", "<f4", (int(side),)))
    return np.dtype(fields_)


def _write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it: a reader
    sees the old file or the whole new one, never a torn one."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        try:  # the mode a plain open() would give (mkstemp's is 0600), or the old file's
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass
class Fitted:
    """A codec from /fit: pass it to quantize(codec=...) for every batch of a collection."""

    codec: dict[str, Any]
    layout: dict[str, Any] = field(default_factory=dict)
    #: the service's id of the codec: later requests send it instead of the codec
    codec_id: str | None = None

    @property
    def dim(self) -> int | None:
        d = self.codec.get("dim") if isinstance(self.codec, dict) else None
        return int(d) if isinstance(d, int) else None

    def save(self, path: str | os.PathLike) -> None:
        """Write the codec, its layout and its id as JSON, atomically (a temporary file
        renamed over ``path``)."""
        doc = {"embquant_codec_file": CODEC_FILE_VERSION, "codec_id": self.codec_id, "layout": self.layout,
               "codec": self.codec}
        _write_atomic(path, json.dumps(doc, separators=(",", ":"), allow_nan=False).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Fitted":
        """Read a file ``save`` wrote (or a bare codec dict saved as JSON: no layout or
        id then). ValueError says what is wrong with a file that is not one."""
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{os.fspath(path)} is not a codec file (not JSON: {e})") from None
        if isinstance(doc, dict) and "embquant_codec_file" in doc:
            if doc["embquant_codec_file"] != CODEC_FILE_VERSION:
                raise ValueError(f"{os.fspath(path)}: codec file version {doc['embquant_codec_file']!r}, this client "
                                 f"reads version {CODEC_FILE_VERSION}")
            codec, layout, cid = doc.get("codec"), doc.get("layout") or {}, doc.get("codec_id")
        else:
            codec, layout, cid = doc, {}, None
        if not (isinstance(codec, dict) and "scheme" in codec and "dim" in codec):
            raise ValueError(f"{os.fspath(path)} holds no codec (a JSON object with scheme and dim, as Codec.save "
                             f"writes)")
        if not isinstance(layout, dict) or not (cid is None or isinstance(cid, str)):
            raise ValueError(f"{os.fspath(path)}: layout must be an object and codec_id a string")
        return cls(codec=codec, layout=layout, codec_id=cid)


#: A fitted codec: what /fit returned, and what ``Codec.save``/``Codec.load`` keep.
Codec = Fitted


@dataclass
class Encoded:
    """What /quantize returned: store ``codes`` (and ``side``) per row, the codec once."""

    codes: np.ndarray  # int64 (N, W)
    side: np.ndarray | None  # float32 (N, G) or None
    codec: dict[str, Any] | None
    shape: tuple[int, int]
    layout: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, float] | None = None
    codec_id: str | None = None

    def bits(self) -> np.ndarray:
        """The code bits per row, (N, symbols*bits) uint8 (for 1-bit codes: the binary code)."""
        n_bits = self.layout.get("symbols", 0) * self.layout.get("bits", 1)
        return unpack_bits(self.codes, n_bits)

    def __len__(self) -> int:
        return self.codes.shape[0]

    # -- bytes for a bytea / blob column ----------------------------------------------
    def row_dtype(self) -> np.dtype:
        """The per-row byte layout (see ``row_dtype``)."""
        return row_dtype(self.codes.shape[1], 0 if self.side is None else self.side.shape[1])

    def row_bytes(self) -> np.ndarray:
        """Every row in the per-row byte form, as an (N, 8*words + 4*side) uint8 array."""
        rec = np.empty(len(self), dtype=self.row_dtype())
        rec["codes"] = self.codes
        if self.side is not None:
            rec["side"] = self.side
        return rec.view(np.uint8).reshape(len(self), rec.dtype.itemsize)

    def to_bytes(self, per_row: bool = False) -> bytes | list[bytes]:
        """The codes (and side values) as bytes. ``per_row=True``: a list of one
        fixed-size value per row (8*words little-endian int64 code words, then 4*side
        little-endian float32 side values), for a ``bytea`` / blob column. Otherwise the
        whole array: a 72-byte header (see ``CODES_MAGIC``), then those rows."""
        rows = self.row_bytes()
        if per_row:
            return [r.tobytes() for r in rows]
        cid = bytes.fromhex(self.codec_id) if self.codec_id and len(self.codec_id) == 64 else b""
        bits = int(self.layout.get("bits", 0) or 0)
        header = _HEADER.pack(CODES_MAGIC, CODES_VERSION, HEADER_BYTES, bits, 0, len(self), int(self.shape[1]),
                              self.codes.shape[1], 0 if self.side is None else self.side.shape[1],
                              int(self.layout.get("symbols", 0) or 0), cid.ljust(32, b"\0"))
        return header + rows.tobytes()

    @classmethod
    def from_bytes(cls, data: Any, codec: "Fitted | None" = None, *, layout: dict | None = None,
                   dim: int | None = None) -> "Encoded":
        """Read ``to_bytes()`` back. Bytes (or a memoryview) are the whole-array form,
        which says its own sizes; a sequence of per-row values (or an (N, row size)
        uint8 array) needs the codec's layout: ``codec=`` (a Codec) or ``layout=``
        (with words, side) and ``dim=``. ValueError when the bytes are not that form."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            return cls._from_whole(memoryview(data).cast("B"), codec)
        lay = dict(layout or (codec.layout if codec is not None else {}))
        if "words" not in lay:
            raise ValueError("per-row bytes need the codec's layout (words, side): pass codec= or layout=")
        words, side = int(lay["words"]), int(lay.get("side", 0) or 0)
        dt = row_dtype(words, side)
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2:
            if data.shape[1] != dt.itemsize:
                raise ValueError(f"rows of {data.shape[1]} bytes, the layout's rows are {dt.itemsize} bytes "
                                 f"({words} code words, {side} side values)")
            buf = np.ascontiguousarray(data).tobytes()
        else:
            rows: Sequence = list(data)
            for i, r in enumerate(rows):
                if not isinstance(r, (bytes, bytearray, memoryview)):
                    raise ValueError(f"row {i} is a {type(r).__name__}, not bytes")
                if len(r) != dt.itemsize:
                    raise ValueError(f"row {i} has {len(r)} bytes, the layout's rows are {dt.itemsize} bytes "
                                     f"({words} code words, {side} side values)")
            buf = b"".join(rows)
        rec = np.frombuffer(buf, dtype=dt)
        d = dim if dim is not None else (codec.dim if codec is not None else None)
        return cls._from_records(rec, codec, lay, d or 0, codec.codec_id if codec is not None else None)

    @classmethod
    def _from_whole(cls, mv: memoryview, codec: "Fitted | None") -> "Encoded":
        if len(mv) < HEADER_BYTES:
            raise ValueError(f"{len(mv)} bytes: too short for the {HEADER_BYTES}-byte header of encoded codes")
        magic, version, hsize, bits, _, n, dim, words, side, symbols, cid = _HEADER.unpack_from(mv, 0)
        if magic != CODES_MAGIC:
            raise ValueError(f"not encoded codes: the bytes begin {bytes(mv[:8])!r}, not {CODES_MAGIC!r}")
        if version != CODES_VERSION or hsize != HEADER_BYTES:
            raise ValueError(f"encoded codes of version {version} (header {hsize} bytes); this client reads version "
                             f"{CODES_VERSION}")
        dt = row_dtype(words, side)
        want = HEADER_BYTES + n * dt.itemsize
        if len(mv) != want:
            raise ValueError(f"{len(mv)} bytes, the header says {want} ({n} rows of {dt.itemsize} bytes): "
                             f"{'truncated' if len(mv) < want else 'trailing bytes'}")
        rec = np.frombuffer(mv, dtype=dt, offset=HEADER_BYTES, count=n)
        codec_id = cid.hex() if any(cid) else None
        if codec is not None and codec.codec_id and codec_id and codec.codec_id != codec_id:
            raise ValueError(f"these codes were made with codec {codec_id}, not {codec.codec_id}")
        layout = dict(codec.layout) if codec is not None else {}
        layout.update({"bits": bits, "symbols": symbols, "words": words, "side": side})
        return cls._from_records(rec, codec, layout, dim, codec_id)

    @classmethod
    def _from_records(cls, rec: np.ndarray, codec: "Fitted | None", layout: dict, dim: int,
                      codec_id: str | None) -> "Encoded":
        codes = rec["codes"].astype(np.int64)  # native order, an array of its own
        side = rec["side"].astype(np.float32) if "side" in (rec.dtype.names or ()) else None
        return cls(codes=codes, side=side,
                   codec=codec.codec if codec is not None else None, shape=(len(rec), int(dim)), layout=layout,
                   codec_id=codec_id or (codec.codec_id if codec is not None else None))


@dataclass
class Scored:
    """What /score returned: per query, the best codes' ``indices`` (rows of the codes
    sent) and their ``scores``, best first (``l2``: squared distances, smallest
    first); with ``all=True``, ``scores`` is (Q, N) and ``indices`` None."""

    scores: np.ndarray
    indices: np.ndarray | None
    metric: str = "dot"
    codec_id: str | None = None


@dataclass
class Evaluation:
    """What /evaluate returned: one row per candidate, sorted by bits per dimension.
    ``str()`` is an aligned text table. Each row holds ``scheme``, ``params``, ``bits``
    (per dimension, side values counted), ``relative_squared_error``, ``recall`` (of the
    decoded vectors) and ``recall_scored`` (of /score's estimator) at ``k``, ``pool``
    (the multiple of k whose rescoring reaches recall 0.99, or None), ``pool_recall``,
    ``encode_rows_per_s``, ``codec_bytes``, ``fit_seconds``, ``pareto``; a candidate
    stopped at its time bound holds ``error`` instead of the figures."""

    rows: list[dict[str, Any]]
    k: int = 10
    metric: str = "dot"
    split: dict[str, Any] = field(default_factory=dict)
    pareto: str = ""

    COLUMNS = (("setting", None), ("bits", "{:.3g}"), ("rel.err", "{:.4f}"), ("recall@k", "{:.3f}"),
               ("scored", "{:.3f}"), ("pool", None), ("encode/s", "{:,.0f}"), ("codec B", "{:,}"), ("pareto", None))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def pareto_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("pareto")]

    def _cells(self, r: dict[str, Any]) -> list[str]:
        setting = r.get("scheme", "?") + "".join(f" {k}={v}" for k, v in (r.get("params") or {}).items())
        if "error" in r:
            return [setting, "error: " + str(r["error"])]
        pool = "-" if r.get("pool") is None else f"{r['pool']}x ({r.get('pool_candidates')})"
        vals = [r.get("bits"), r.get("relative_squared_error"), r.get("recall"), r.get("recall_scored"), None,
                r.get("encode_rows_per_s"), r.get("codec_bytes")]
        out = [setting]
        for (_, fmt), v in zip(self.COLUMNS[1:8], vals):
            out.append(pool if fmt is None else ("-" if v is None else fmt.format(v)))
        out.append("*" if r.get("pareto") else "")
        return out

    def __str__(self) -> str:
        head = [c for c, _ in self.COLUMNS]
        head[3] = f"recall@{self.k}"
        body = [self._cells(r) for r in self.rows]
        full = [row for row in body if len(row) == len(head)]
        width = [max([len(head[i])] + [len(row[i]) for row in full]) for i in range(len(head))]

        def line(cells: list[str]) -> str:
            if len(cells) != len(head):  # an error row: the message after the setting
                return cells[0].ljust(width[0]) + "  " + cells[1]
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width))).rstrip()

        lines = [line(head), line(["-" * w for w in width])] + [line(c) for c in body]
        s = self.split
        if s:
            lines.append(f"{self.metric}, fitted on {s.get('fit_rows')} rows, measured on {s.get('measured_rows')} "
                         f"with {s.get('queries')} queries; pool: rescoring candidates (multiple of k) for recall 0.99; "
                         "* Pareto front (bits vs scored recall)")
        return "\n".join(lines)
