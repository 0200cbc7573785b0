"""Files in and out of the service, streamed: vectors from .npy or Parquet to codes in
Parquet, .npy or .npz, and codes back to vectors, a block at a time.

Codes files:

- Parquet: ``codes`` as fixed_size_binary(8*words) (little-endian int64 words, the
  per-row form of ``Encoded.to_bytes``), ``side`` as fixed_size_list<float32>[side]
  (when the codec has side values), and every column of the input other than the
  vectors (ids), in input order. File metadata: ``embquant.codec_id``,
  ``embquant.layout`` (JSON), ``embquant.codec`` (the codec's JSON: the file decodes
  on its own) and ``embquant.format`` (``codes/1``).
- .npy: one structured array of N rows with fields ``codes`` (<i8, words) and ``side``
  (<f4, side): the per-row byte form, readable with ``np.load`` (no pickle).
- .npz: ``codes`` (N, words) int64, ``side`` (N, side) float32, ``codec_id`` (a 0-d
  string), ``codec`` (the codec's JSON as uint8 bytes).

An output is written to a spool beside it (``OUT.embquant-part``, with the rows done
in ``OUT.embquant-resume.json``), then into ``OUT.tmp-<pid>`` and renamed to OUT only
when complete: a file at OUT is always whole. Run the same command again after a
crash and it goes on from the rows the record holds, sending none of them again.

Parquet needs pyarrow (``pip install 'embquant-client[cli]'``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
import threading
import zipfile
from typing import Any, Iterator

import numpy as np

from ._bulk import Progress, Spool, dequantize_bulk, quantize_bulk
from ._core import ENVELOPE_BYTES, BODY_SHARE, wire_bytes
from ._models import Codec, Encoded, row_dtype

#: Rows per block when nothing else says (Client's CHUNK_ROWS).
DEFAULT_CHUNK_ROWS = 8192
#: Parquet read buffer: column chunks are streamed page by page, not read whole.
PARQUET_BUFFER = 1 << 20
CODES_FORMAT = "codes/1"
META_PREFIX = "embquant."


class InputError(ValueError):
    """A file or argument the job cannot use; the message says what and where."""


def _arrow():
    if _arrow_import["thread"] is not None:
        _arrow_import["thread"].join()
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("Parquet needs pyarrow: pip install 'embquant-client[cli]'") from None
    return pa, pq


_arrow_import: dict[str, Any] = {"thread": None}


def _arrow_soon() -> None:
    """Fail now if pyarrow is missing, and import it in a thread of its own: a job that
    only writes Parquet needs it at the end, and its import (0.1-0.2 s) then overlaps
    the encoding instead of delaying the first request. `_arrow` waits for it."""
    if importlib.util.find_spec("pyarrow") is None:
        raise InputError("Parquet needs pyarrow: pip install 'embquant-client[cli]'")
    if _arrow_import["thread"] is None and "pyarrow.parquet" not in sys.modules:
        t = threading.Thread(target=_import_arrow, name="embquant-import-pyarrow", daemon=True)
        _arrow_import["thread"] = t
        t.start()


def _import_arrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:  # `_arrow` imports again and says so
        pass


def _kind(path: str, what: str, allowed: tuple[str, ...]) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    ext = {"pq": "parquet"}.get(ext, ext)
    if ext not in allowed:
        raise InputError(f"{what} {path!r}: unknown file type (use {', '.join('.' + a for a in allowed)})")
    return ext


def _file_id(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check_finite(x: np.ndarray, row0: int, where: str) -> None:
    if np.isfinite(x.sum()):  # NaN and infinity reach the sum; a finite sum: all finite (else look row by row)
        return
    ok = np.isfinite(x).all(axis=1)
    if not ok.all():
        i = int(np.argmin(ok))
        raise InputError(f"{where}: row {row0 + i} holds NaN or infinity")


# -- vectors in ----------------------------------------------------------------------------
class Vectors:
    """Rows of float vectors, read a block at a time from ``start`` on."""

    rows: int | None
    dim: int
    ids: list[str] = []
    fingerprint: dict

    def read(self, start: int, chunk_rows: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def id_batches(self, chunk_rows: int) -> Iterator[Any]:
        return iter(())


class NpyVectors(Vectors):
    """A 2-D float .npy, read with plain reads into a fresh block each time (no
    memory map: the pages of a mapped file would count towards the job's memory)."""

    def __init__(self, path: str):
        self.path, self.ids = path, []
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                self.offset = f.tell()
        except ValueError as e:
            raise InputError(f"{path} is not a .npy file: {e}") from None
        if dtype.kind != "f" or dtype.fields is not None:
            raise InputError(f"{path} holds {dtype}, not floating-point vectors")
        if len(shape) != 2:
            raise InputError(f"{path} holds an array of shape {shape}, not (rows, dim) vectors")
        if fortran and shape[0] > 1 and shape[1] > 1:
            raise InputError(f"{path} is Fortran-ordered; save it C-ordered (np.save(path, np.ascontiguousarray(x)))")
        self.rows, self.dim, self.dtype = int(shape[0]), int(shape[1]), dtype
        want = self.offset + self.rows * self.dim * dtype.itemsize
        if os.path.getsize(path) < want:
            raise InputError(f"{path} is truncated: {os.path.getsize(path)} bytes, its header says {want}")
        self.fingerprint = _file_id(path)

    def read(self, start: int, chunk_rows: int) -> Iterator[np.ndarray]:
        row_bytes = self.dim * self.dtype.itemsize
        with open(self.path, "rb") as f:
            for lo in range(start, self.rows, chunk_rows):
                n = min(chunk_rows, self.rows - lo)
                buf = np.empty((n, self.dim), dtype=self.dtype)
                f.seek(self.offset + lo * row_bytes)
                if f.readinto(memoryview(buf.reshape(-1).view(np.uint8))) != buf.nbytes:
                    raise InputError(f"{self.path} ends before row {lo + n}")
                x = buf if buf.dtype == np.float32 else buf.astype(np.float32)
                _check_finite(x, lo, self.path)
                yield x


def _is_vector_type(pa, t) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
        and pa.types.is_floating(t.value_type)


class ParquetVectors(Vectors):
    """A list<float> or fixed_size_list<float> column of a Parquet file, streamed by
    record batches; the other columns are ids, carried to the output."""

    def __init__(self, path: str, column: str | None):
        pa, pq = _arrow()
        self.pa, self.path = pa, path
        try:
            self.pf = pq.ParquetFile(path, buffer_size=PARQUET_BUFFER, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path} is not a Parquet file: {e}") from None
        schema = self.pf.schema_arrow
        if column is None:
            found = [f.name for f in schema if _is_vector_type(pa, f.type)]
            if len(found) != 1:
                raise InputError(f"{path}: choose the vector column with --column ("
                                 f"{'list columns: ' + ', '.join(found) if found else 'it has no list<float> column'})")
            column = found[0]
        if column not in schema.names:
            raise InputError(f"{path} has no column {column!r} (its columns: {', '.join(schema.names)})")
        t = schema.field(column).type
        if not _is_vector_type(pa, t):
            raise InputError(f"{path}: column {column!r} is {t}, not a list of floats")
        self.column, self.rows = column, int(self.pf.metadata.num_rows)
        self.ids = [n for n in schema.names if n != column]
        self.fixed = pa.types.is_fixed_size_list(t)
        if self.fixed:
            self.dim = int(t.list_size)
        else:
            self.dim = 0
            for b in self.pf.iter_batches(batch_size=1, columns=[column]):
                if b.num_rows:
                    v = b.column(0)[0]
                    if not v.is_valid:
                        raise InputError(f"{path}: row 0 of column {column!r} is null")
                    self.dim = len(v)
                    break
        if self.rows and not self.dim:
            raise InputError(f"{path}: row 0 of column {column!r} is an empty list")
        self.fingerprint = {**_file_id(path), "column": column}

    def _matrix(self, arr, row0: int) -> np.ndarray:
        col = self.column
        if arr.null_count:
            i = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
            raise InputError(f"{self.path}: row {row0 + i} of column {col!r} is null")
        if not self.fixed:
            import pyarrow.compute as pc  # its import alone takes 0.3 s: only where lists may be ragged

            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(lengths != self.dim)
            if bad.size:
                i = int(bad[0])
                raise InputError(f"{self.path}: ragged lists in column {col!r}: row {row0 + i} has {lengths[i]} "
                                 f"values, row 0 has {self.dim}")
        values = arr.flatten()
        if values.null_count:
            i = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False))) // self.dim
            raise InputError(f"{self.path}: row {row0 + i} of column {col!r} holds a null value")
        x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, self.dim)
        _check_finite(x, row0, self.path)
        return x

    def _batches(self, start: int, chunk_rows: int, columns: list[str]) -> Iterator[tuple[int, Any]]:
        """(first row, record batch) from ``start`` on, skipping whole row groups."""
        md = self.pf.metadata
        row, groups = 0, []
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if row + n > start or groups:
                groups.append(g)
            else:
                row += n
        if not groups:
            return
        for b in self.pf.iter_batches(batch_size=chunk_rows, row_groups=groups, columns=columns):
            if row + b.num_rows <= start:
                row += b.num_rows
                continue
            if row < start:
                b, row = b.slice(start - row), start
            yield row, b
            row += b.num_rows

    def read(self, start: int, chunk_rows: int) -> Iterator[np.ndarray]:
        for row, b in self._batches(start, chunk_rows, [self.column]):
            yield self._matrix(b.column(0), row)

    def id_batches(self, chunk_rows: int) -> Iterator[Any]:
        if self.ids:
            for _, b in self._batches(0, chunk_rows, self.ids):
                yield b


class ArrayVectors(Vectors):
    """An array in memory (or a memory map) or an iterator of chunks."""

    def __init__(self, source: Any):
        self.source = source
        shape = getattr(source, "shape", None)
        if shape is not None:
            if len(shape) != 2:
                raise InputError(f"vectors must be 2-D (rows, dim), got shape {tuple(shape)}")
            self.rows, self.dim = int(shape[0]), int(shape[1])
            self.fingerprint = {"array": [self.rows, self.dim]}
        else:  # an iterator: its length is known at the end; a resume trusts it is the same
            self.rows, self.dim = None, 0
            self.fingerprint = {"iterator": True}
        self.ids = []

    def read(self, start: int, chunk_rows: int) -> Iterator[np.ndarray]:
        if self.rows is not None:
            for lo in range(start, self.rows, chunk_rows):
                x = np.ascontiguousarray(self.source[lo:lo + chunk_rows], dtype=np.float32)
                _check_finite(x, lo, "vectors")
                yield x
            return
        row = 0
        for chunk in self.source:
            x = np.asarray(chunk, dtype=np.float32)
            x = x[None, :] if x.ndim == 1 else x
            if row + x.shape[0] > start:
                x = x[max(start - row, 0):]
                _check_finite(x, max(row, start), "vectors")
                yield x
            row += len(chunk)


def open_vectors(source: Any, column: str | None = None) -> Vectors:
    """Vectors from a .npy or Parquet path, or an array / iterator of chunks."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file")
        kind = _kind(path, "input", ("npy", "parquet"))
        if kind == "npy":
            if column is not None:
                raise InputError(f"--column is for Parquet input; {path} is a .npy file")
            return NpyVectors(path)
        return ParquetVectors(path, column)
    return ArrayVectors(source)


def fit_sample(source: Any, rows: int, column: str | None = None) -> np.ndarray:
    """About ``rows`` rows spread evenly over the input (every k-th row), read in
    blocks: memory is the sample's, whatever the input's size."""
    inp = open_vectors(source, column)
    total = inp.rows or 0
    stride = max(1, math.ceil(total / max(rows, 1))) if total else 1
    out, row = [], 0
    for x in inp.read(0, DEFAULT_CHUNK_ROWS):
        first = (-row) % stride
        out.append(x[first::stride])
        row += x.shape[0]
    if not out or not sum(len(o) for o in out):
        raise InputError("the input holds no vectors")
    return np.concatenate(out)[:rows]


def fit_rows(limits, dim: int, wire: str) -> int:
    """The most rows one /fit request carries within the service's body limit."""
    return max(1, int((limits.max_body_bytes * BODY_SHARE - ENVELOPE_BYTES) // max(wire_bytes(dim, 4, wire), 1)))


# -- codes in ------------------------------------------------------------------------------
class Codes:
    """Codes (and side values) read a block at a time, with what the file says of its
    codec."""

    def __init__(self, path: str):
        self.path = path
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file")
        self.kind = _kind(path, "codes file", ("parquet", "npy", "npz"))
        self.ids: list[str] = []
        self.codec_id: str | None = None
        self.codec: dict | None = None
        self.layout: dict = {}
        self.fingerprint = _file_id(path)
        getattr(self, "_open_" + self.kind)()

    def _open_parquet(self) -> None:
        pa, pq = _arrow()
        self.pa = pa
        try:
            self.pf = pq.ParquetFile(self.path, buffer_size=PARQUET_BUFFER, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{self.path} is not a Parquet file: {e}") from None
        meta = {k.decode(): v.decode() for k, v in (self.pf.schema_arrow.metadata or {}).items()}
        if meta.get(META_PREFIX + "format") != CODES_FORMAT:
            raise InputError(f"{self.path} is not a codes file written by embquant-client (no embquant.format "
                             f"{CODES_FORMAT!r} in its metadata)")
        self.codec_id = meta.get(META_PREFIX + "codec_id") or None
        self.codec = json.loads(meta[META_PREFIX + "codec"]) if META_PREFIX + "codec" in meta else None
        self.layout = json.loads(meta.get(META_PREFIX + "layout", "{}"))
        schema = self.pf.schema_arrow
        t = schema.field("codes").type
        self.words = t.byte_width // 8
        self.side = int(schema.field("side").type.list_size) if "side" in schema.names else 0
        self.rows = int(self.pf.metadata.num_rows)
        self.ids = [n for n in schema.names if n not in ("codes", "side")]

    def _open_npy(self) -> None:
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{self.path} is not a .npy file: {e}") from None
        names = arr.dtype.names or ()
        if arr.ndim != 1 or "codes" not in names:
            raise InputError(f"{self.path} is not a codes .npy (a structured array with a codes field, as "
                             f"`embquant-client quantize` writes)")
        self.arr = arr
        self.rows, self.words = arr.shape[0], arr.dtype["codes"].shape[0]
        self.side = arr.dtype["side"].shape[0] if "side" in names else 0

    def _open_npz(self) -> None:
        try:
            z = np.load(self.path, allow_pickle=False)
        except (ValueError, zipfile.BadZipFile) as e:
            raise InputError(f"{self.path} is not a .npz file: {e}") from None
        if "codes" not in z.files:
            raise InputError(f"{self.path} holds no codes array (its arrays: {', '.join(z.files)})")
        self.z = z
        self.rows, self.words = z["codes"].shape
        self.side = z["side"].shape[1] if "side" in z.files else 0
        self.codec_id = str(z["codec_id"]) if "codec_id" in z.files else None
        self.codec = json.loads(z["codec"].tobytes()) if "codec" in z.files else None

    def read(self, start: int, chunk_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        if self.kind == "parquet":
            cols = ["codes"] + (["side"] if self.side else [])
            for b in _parquet_batches(self.pf, start, chunk_rows, cols):
                codes = _fixed_binary(b.column(0), self.words, self.path)
                side = None
                if self.side:
                    s = b.column(1)
                    if s.null_count:
                        raise InputError(f"{self.path}: null side values")
                    side = s.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, self.side)
                yield codes, side
        elif self.kind == "npy":
            for lo in range(start, self.rows, chunk_rows):
                rec = np.asarray(self.arr[lo:lo + chunk_rows])
                yield rec["codes"].astype(np.int64), rec["side"].astype(np.float32) if self.side else None
        else:  # npz members are read whole by numpy
            codes = self.z["codes"]
            side = self.z["side"] if self.side else None
            for lo in range(start, self.rows, chunk_rows):
                yield codes[lo:lo + chunk_rows], None if side is None else side[lo:lo + chunk_rows]

    def id_batches(self, chunk_rows: int) -> Iterator[Any]:
        if self.kind == "parquet" and self.ids:
            for b in _parquet_batches(self.pf, 0, chunk_rows, self.ids):
                yield b


def _parquet_batches(pf, start: int, chunk_rows: int, columns: list[str]) -> Iterator[Any]:
    row = 0
    for b in pf.iter_batches(batch_size=chunk_rows, columns=columns):
        if row + b.num_rows > start:
            yield b.slice(max(start - row, 0))
        row += b.num_rows


def _fixed_binary(arr, words: int, where: str) -> np.ndarray:
    if arr.null_count:
        raise InputError(f"{where}: null codes")
    width = 8 * words
    buf = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
    raw = buf[arr.offset * width:(arr.offset + len(arr)) * width]
    return raw.view("<i8").astype(np.int64).reshape(len(arr), words)


# -- writing outputs -----------------------------------------------------------------------
def _tmp_name(out: str) -> str:
    return f"{out}.tmp-{os.getpid()}"


def _install(tmp: str, out: str) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)


def _spool_blocks(spool: Spool, rows: int, chunk_rows: int) -> Iterator[bytes]:
    for lo in range(0, rows, chunk_rows):
        yield spool.read(lo, min(lo + chunk_rows, rows))


def _write_npy(path: str, dtype: np.dtype, shape: tuple, blocks: Iterator[bytes]) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": shape})
        for b in blocks:
            f.write(b)


def _npz_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple, blocks: Iterator[bytes]) -> None:
    with zf.open(name + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": shape})
        for b in blocks:
            f.write(b)


def _with_ids(pa, ids: Iterator[Any] | None, spool: Spool, rows: int, chunk_rows: int):
    """(id batch or None, spool bytes) pairs over all rows, aligned row for row."""
    lo = 0
    if ids is not None:
        for b in ids:
            yield b, spool.read(lo, lo + b.num_rows)
            lo += b.num_rows
        if lo != rows:
            raise InputError(f"the input's id columns hold {lo} rows, its vectors {rows}")
        return
    for data in _spool_blocks(spool, rows, chunk_rows):
        yield None, data


def _write_codes(kind: str, path: str, spool: Spool, rows: int, words: int, side: int, codec: Codec,
                 codec_id: str | None, inp: Vectors | None, chunk_rows: int) -> None:
    dt = row_dtype(words, side)
    codec_json = json.dumps(codec.codec, separators=(",", ":")).encode()
    if kind == "npy":
        _write_npy(path, dt, (rows,), _spool_blocks(spool, rows, chunk_rows))
        return
    if kind == "npz":
        def field(name):
            for data in _spool_blocks(spool, rows, chunk_rows):
                yield np.ascontiguousarray(np.frombuffer(data, dtype=dt)[name]).tobytes()

        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _npz_member(zf, "codes", np.dtype("<i8"), (rows, words), field("codes"))
            if side:
                _npz_member(zf, "side", np.dtype("<f4"), (rows, side), field("side"))
            with zf.open("codec_id.npy", "w") as f:
                np.lib.format.write_array(f, np.array(codec_id or ""), allow_pickle=False)
            with zf.open("codec.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.frombuffer(codec_json, dtype=np.uint8), allow_pickle=False)
        return
    pa, pq = _arrow()
    fields = []
    ids = None
    if inp is not None and inp.ids:
        in_schema = inp.pf.schema_arrow
        for n in inp.ids:
            if n in ("codes", "side"):
                raise InputError(f"the input has a column named {n!r}, which the output's codes take; rename it")
            fields.append(in_schema.field(n))
        ids = inp.id_batches(chunk_rows)
    fields.append(pa.field("codes", pa.binary(8 * words), nullable=False))
    if side:
        fields.append(pa.field("side", pa.list_(pa.float32(), side), nullable=False))
    layout = {**codec.layout, "words": words, "side": side}
    meta = {META_PREFIX + "format": CODES_FORMAT, META_PREFIX + "codec_id": codec_id or "",
            META_PREFIX + "layout": json.dumps(layout), META_PREFIX + "codec": codec_json.decode()}
    schema = pa.schema(fields, metadata=meta)
    with pq.ParquetWriter(path, schema) as w:
        for idb, data in _with_ids(pa, ids, spool, rows, chunk_rows):
            rec = np.frombuffer(data, dtype=dt)
            n = len(rec)
            cols = [] if idb is None else list(idb.columns)
            codes = np.ascontiguousarray(rec["codes"]).astype("<i8", copy=False)
            cols.append(pa.FixedSizeBinaryArray.from_buffers(pa.binary(8 * words), n, [None, pa.py_buffer(codes)]))
            if side:
                sv = np.ascontiguousarray(rec["side"], dtype=np.float32).reshape(-1)
                cols.append(pa.FixedSizeListArray.from_arrays(pa.array(sv, type=pa.float32()), side))
            w.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))


def _write_vectors(kind: str, path: str, spool: Spool, rows: int, dim: int, column: str, inp: Codes,
                   chunk_rows: int) -> None:
    if kind == "npy":
        _write_npy(path, np.dtype("<f4"), (rows, dim), _spool_blocks(spool, rows, chunk_rows))
        return
    pa, pq = _arrow()
    fields, ids = [], None
    if inp.kind == "parquet" and inp.ids:
        for n in inp.ids:
            if n == column:
                raise InputError(f"the codes file has a column named {column!r}; choose another with --column")
            fields.append(inp.pf.schema_arrow.field(n))
        ids = inp.id_batches(chunk_rows)
    fields.append(pa.field(column, pa.list_(pa.float32(), dim), nullable=False))
    schema = pa.schema(fields)
    with pq.ParquetWriter(path, schema) as w:
        for idb, data in _with_ids(pa, ids, spool, rows, chunk_rows):
            x = np.frombuffer(data, dtype="<f4")
            cols = [] if idb is None else list(idb.columns)
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(x, type=pa.float32()), dim))
            w.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))


def _as_codec(codec: Any) -> Codec:
    if isinstance(codec, (str, os.PathLike)):
        if not os.path.exists(codec):
            raise InputError(f"{os.fspath(codec)}: no such codec file")
        return Codec.load(codec)
    if isinstance(codec, (Codec, Encoded)):
        if codec.codec is None:
            raise InputError("this Encoded holds no codec")
        return Codec(codec=codec.codec, layout=dict(codec.layout), codec_id=codec.codec_id)
    if isinstance(codec, dict):
        return Codec(codec=codec)
    raise InputError(f"codec must be a Codec, a codec dict or a codec file, got {type(codec).__name__}")


def _codec_key(codec: Codec) -> str:
    return codec.codec_id or hashlib.sha256(json.dumps(codec.codec, sort_keys=True).encode()).hexdigest()


def _run_spooled(spool: Spool, results: Iterator[Any], to_bytes) -> None:
    """Append every result; on an error, keep the spool for a resume only when it
    holds rows (a job that failed at once leaves nothing behind)."""
    try:
        for r in results:
            spool.append(to_bytes(r))
    except BaseException:
        if spool.rows:
            spool.close()
        else:
            spool.finish()
        raise


# -- the jobs ------------------------------------------------------------------------------
def quantize_file(client: Any, source: Any, codec: Any, out: str | os.PathLike, *, column: str | None = None,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, concurrency: int = 4, progress: Progress | None = None,
                  timeout_s: float | None = None) -> dict:
    """Encode ``source`` (a .npy or Parquet path, a 2-D array or an iterator of
    chunks) with ``codec`` (a Codec, a codec dict or a codec file) into ``out``
    (.parquet, .npy or .npz, see the module's docstring), ``concurrency`` blocks of
    ``chunk_rows`` rows in flight. Resumable: after a crash, the same call sends only
    the rows the spool does not hold. Returns {"rows", "resumed_rows", "codec_id"}."""
    out = os.fspath(out)
    kind = _kind(out, "output", ("parquet", "npy", "npz"))
    if kind == "parquet":
        _arrow_soon()
    codec = _as_codec(codec)
    inp = open_vectors(source, column)
    dim = codec.dim
    if dim is not None and inp.dim and inp.dim != dim:
        raise InputError(f"the input's vectors have {inp.dim} dimensions, the codec was fitted for {dim}")
    ref = client._core.codec_ref(codec)
    layout = dict(codec.layout)
    if "words" not in layout:  # a bare codec: one row of noise tells its layout (the input is not touched)
        probe = np.random.default_rng(0).standard_normal((1, dim or inp.dim)).astype(np.float32)
        layout = dict(client.quantize(probe, codec=codec).layout)
        codec.layout = layout
    words, side = int(layout["words"]), int(layout.get("side", 0) or 0)
    limits = client.limits()  # an unreachable service fails here, before any file is made
    spool = Spool(out, 8 * words + 4 * side,
                  {"input": inp.fingerprint, "codec": _codec_key(codec), "output": kind, "job": "quantize"})
    start = spool.open()
    rows_total = inp.rows

    def shifted(done: int, total: int | None) -> None:
        if progress is not None:
            progress(start + done, rows_total)

    def check(enc: Encoded) -> np.ndarray:
        if enc.codes.shape[1] != words or (0 if enc.side is None else enc.side.shape[1]) != side:
            raise InputError(f"the service answered {enc.codes.shape[1]} code words per row, the codec file says "
                             f"{words}")
        return enc.row_bytes()

    if progress is not None and start:
        progress(start, rows_total)
    rows = client._core.quantize_rows(limits, np.broadcast_to(np.float32(0), (chunk_rows, dim or inp.dim)),
                                      codec, ref, chunk_rows)
    results = quantize_bulk(client, _Reader(inp, start, rows), codec, rows, concurrency, shifted, 0, timeout_s)
    _run_spooled(spool, results, check)
    n = spool.rows
    codec_id = client._core.codec_ref(codec).id or codec.codec_id  # the id the service answered
    tmp = _tmp_name(out)
    try:
        if inp.rows is not None and n != inp.rows:
            raise InputError(f"{n} rows encoded, the input holds {inp.rows}")
        spool.open_read()
        _write_codes(kind, tmp, spool, n, words, side, codec, codec_id, inp, chunk_rows)
        _install(tmp, out)
    except BaseException:
        _unlink(tmp)
        spool.close()
        raise
    spool.finish()
    return {"rows": n, "resumed_rows": start, "codec_id": codec_id}


class _Reader:
    """An input's blocks as quantize_bulk's iterator of chunks (already past ``start``)."""

    def __init__(self, inp: Vectors, start: int, chunk_rows: int):
        self.inp, self.start, self.chunk_rows = inp, start, chunk_rows

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.inp.read(self.start, self.chunk_rows)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def dequantize_file(client: Any, source: str | os.PathLike, out: str | os.PathLike, *, codec: Any = None,
                    column: str = "embedding", chunk_rows: int = DEFAULT_CHUNK_ROWS, concurrency: int = 4,
                    progress: Progress | None = None, timeout_s: float | None = None) -> dict:
    """Decode a codes file ``quantize_file`` wrote into float32 vectors in ``out``
    (.npy, or .parquet with the vectors in ``column`` beside the codes file's id
    columns). The codec is the file's own (Parquet, .npz) unless ``codec`` is given;
    a codec whose id differs from the file's is refused. Resumable as quantize_file."""
    out = os.fspath(out)
    kind = _kind(out, "output", ("npy", "parquet"))
    inp = Codes(os.fspath(source))
    if codec is not None:
        codec = _as_codec(codec)
        if codec.codec_id and inp.codec_id and codec.codec_id != inp.codec_id:
            raise InputError(f"{inp.path} was made with codec {inp.codec_id}, not the given one ({codec.codec_id})")
    elif inp.codec is not None:
        codec = Codec(codec=inp.codec, layout=inp.layout, codec_id=inp.codec_id)
    else:
        raise InputError(f"{inp.path} does not hold its codec: pass --codec CODEC.json")
    lw = codec.layout.get("words")
    if lw is not None and (int(lw) != inp.words or int(codec.layout.get("side", 0) or 0) != inp.side):
        raise InputError(f"{inp.path} holds {inp.words} code words and {inp.side} side values per row, the codec "
                         f"makes {lw} and {codec.layout.get('side', 0)}")
    dim = codec.dim
    if not dim:
        raise InputError("the codec does not say its dimension")
    client.limits()  # an unreachable service fails here, before any file is made
    spool = Spool(out, 4 * dim, {"input": inp.fingerprint, "codec": _codec_key(codec), "output": kind,
                                 "column": column, "job": "dequantize"})
    start = spool.open()
    if progress is not None and start:
        progress(start, inp.rows)

    def counted(done: int, total: int | None) -> None:
        if progress is not None:
            progress(start + done, inp.rows)

    results = dequantize_bulk(client, inp.read(start, chunk_rows), codec, chunk_rows, concurrency, counted, 0,
                              timeout_s)
    _run_spooled(spool, results, lambda y: np.ascontiguousarray(y, dtype="<f4"))
    n = spool.rows
    tmp = _tmp_name(out)
    try:
        if n != inp.rows:
            raise InputError(f"{n} rows decoded, the codes file holds {inp.rows}")
        spool.open_read()
        _write_vectors(kind, tmp, spool, n, dim, column, inp, chunk_rows)
        _install(tmp, out)
    except BaseException:
        _unlink(tmp)
        spool.close()
        raise
    spool.finish()
    return {"rows": n, "resumed_rows": start, "dim": dim}
