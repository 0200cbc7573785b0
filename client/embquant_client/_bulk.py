"""Bulk requests: a huge array (a memory map, say) or an iterator of chunks, sent in
blocks of ``chunk_rows`` rows, ``concurrency`` at a time, answers in input order.

Each block is one request, retried by the client's own retry policy. At most
``concurrency`` blocks are in flight (a msgpack body is sent from the block's own
memory, a megabyte at a time: `_core.Body`; a JSON body is a copy), plus the answer
the caller is handling and the block being read: memory is bounded by about
(concurrency + 2) blocks with msgpack, whatever the size of the input.
Resuming is by rows: ``start_row`` skips rows a previous run already holds (``Spool``
records them beside an output file).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

import numpy as np

from ._models import _write_atomic

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

#: ``progress(rows_done, rows_total)``: after each block the caller has taken;
#: ``rows_total`` is None when the input's length is unknown (an iterator).
Progress = Callable[[int, "int | None"], None]


def blocks(source: Any, chunk_rows: int, start_row: int = 0, dim: int | None = None) -> Iterator[np.ndarray]:
    """float32 (rows, D) blocks of ``chunk_rows`` rows (the last may be shorter) from a
    2-D array or an iterator of 2-D chunks (any sizes), skipping the first
    ``start_row`` rows. An array is read a block at a time (a memory map stays
    mapped, not loaded); chunks of an iterator are gathered into blocks."""
    chunk_rows = max(int(chunk_rows), 1)
    if hasattr(source, "shape") and hasattr(source, "__getitem__"):
        if len(source.shape) != 2:
            raise ValueError(f"vectors must be 2-D (rows, dim), got shape {tuple(source.shape)}")
        _check_dim(source.shape[1], dim)
        for lo in range(start_row, source.shape[0], chunk_rows):
            yield np.ascontiguousarray(source[lo:lo + chunk_rows], dtype=np.float32)
        return
    pending: list[np.ndarray] = []
    have = 0
    skip = start_row
    for chunk in source:
        x = np.asarray(chunk, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError(f"each chunk must be 1-D or 2-D, got shape {x.shape}")
        _check_dim(x.shape[1], dim)
        dim = x.shape[1]
        if skip:
            drop = min(skip, x.shape[0])
            x, skip = x[drop:], skip - drop
            if not x.shape[0]:
                continue
        pending.append(x)
        have += x.shape[0]
        while have >= chunk_rows:
            whole = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(whole[:chunk_rows])
            rest = whole[chunk_rows:]
            pending, have = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
    if have:
        yield np.ascontiguousarray(np.concatenate(pending) if len(pending) > 1 else pending[0])


def _check_dim(got: int, want: int | None) -> None:
    if want is not None and got != want:
        raise ValueError(f"vectors have {got} dimensions, the codec was fitted for {want}")


def total_rows(source: Any) -> int | None:
    shape = getattr(source, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) >= 1 else None


_NOTHING = object()


def _head(items: Iterable[Any], first_alone: bool) -> tuple[Any, Iterator[Any]]:
    """(the first item when it goes alone, else _NOTHING; the items left)."""
    it = iter(items)
    return (next(it, _NOTHING) if first_alone else _NOTHING), it


def ordered(run: Callable[[Any], Any], items: Iterable[Any], concurrency: int,
            first_alone: bool = False) -> Iterator[Any]:
    """``run(item)`` for each item on ``concurrency`` threads, results in input order.
    At most ``concurrency`` items are taken from ``items`` ahead of the result the
    caller is handling. ``first_alone``: the first item runs before any other starts
    (it teaches the client the codec's id, which the rest then send). An error in
    any item is raised here, in order; items not yet started are cancelled."""
    first, it = _head(items, first_alone)
    if first is not _NOTHING:
        yield run(first)
    concurrency = max(1, int(concurrency))
    if concurrency == 1:
        for item in it:
            yield run(item)
        return
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="embquant-bulk")
    pending: deque = deque()
    try:
        for item in it:
            if len(pending) >= concurrency:
                yield pending.popleft().result()
            pending.append(pool.submit(run, item))
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _freed(result: Any) -> Any:
    """httpx's answer holds its request (our body, a block's size) in a reference cycle
    (the answer and its stream), freed only by the cycle collector, which counts
    objects, not bytes: dozens of blocks piled up between its runs. A collection of
    the young generations, where that fresh cycle is, after each request frees it
    (0.2 ms)."""
    gc.collect(1)
    return result


def _counted(results: Iterable[Any], done: int, total: int | None, progress: Progress | None) -> Iterator[Any]:
    """Each result, then ``progress(rows_done, total)`` once the caller has taken it."""
    for r in results:
        yield r
        done += len(r)
        if progress is not None:
            progress(done, total)


def quantize_bulk(client: Any, source: Any, codec: Any, chunk_rows: int, concurrency: int,
                  progress: Progress | None, start_row: int, timeout_s: float | None) -> Iterator[Any]:
    """Client.quantize_bulk: one Encoded per block, in order."""
    core = client._core
    ref, dim, shape = _bulk_args(core, codec, source, chunk_rows, start_row)
    total = total_rows(source)

    def gen() -> Iterator[Any]:
        rows = _block_rows(core, client.limits(), codec, ref, chunk_rows, dim, shape)

        def run(x: np.ndarray) -> Any:
            return _freed(client._by_id(ref, _encode_block(core, ref, x, timeout_s)))

        work = ordered(run, blocks(source, rows, start_row, dim), concurrency, first_alone=ref.id is None)
        yield from _counted(work, start_row, total, progress)

    return gen()


def dequantize_bulk(client: Any, source: Any, codec: Any, chunk_rows: int, concurrency: int,
                    progress: Progress | None, start_row: int, timeout_s: float | None) -> Iterator[np.ndarray]:
    """Client.dequantize_bulk: float32 vectors per block, in order. ``source``: an
    Encoded, or an iterator of Encoded or (codes, side) pairs."""
    from ._models import Encoded

    core = client._core
    ref = core.codec_ref(codec)
    if isinstance(source, Encoded):
        source = [source]
    total = None

    def pairs() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        skip = start_row
        for item in source:
            codes, side = (item.codes, item.side) if isinstance(item, Encoded) else item
            codes = np.asarray(codes, dtype=np.int64)
            side = None if side is None else np.asarray(side, dtype=np.float32)
            if skip:
                drop = min(skip, codes.shape[0])
                codes, side, skip = codes[drop:], None if side is None else side[drop:], skip - drop
            if codes.shape[0]:
                yield codes, side

    def gen() -> Iterator[np.ndarray]:
        limits = client.limits()

        def requests() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
            for codes, side in pairs():
                rows = core.dequantize_rows(limits, codes, side, ref, chunk_rows)
                for lo, hi in core.spans(codes.shape[0], rows):
                    yield codes[lo:hi], None if side is None else side[lo:hi]

        def run(item) -> np.ndarray:
            codes, side = item
            return _freed(client._by_id(ref, lambda by_id: core.dequantize(codes, side, ref, timeout_s, by_id)))

        work = ordered(run, requests(), concurrency, first_alone=ref.id is None)
        yield from _counted(work, start_row, total, progress)

    return gen()


# -- AsyncClient --------------------------------------------------------------------------
async def aordered(run: Callable[[Any], Any], items: Iterable[Any], concurrency: int,
                   first_alone: bool = False) -> AsyncIterator[Any]:
    """As `ordered`, with ``run(item)`` a coroutine: at most ``concurrency`` in flight
    as tasks, results in input order; an error is raised in order, and the tasks not
    yet done are cancelled (also when the caller stops iterating)."""
    first, it = _head(items, first_alone)
    if first is not _NOTHING:
        yield await run(first)
    concurrency = max(1, int(concurrency))
    pending: deque = deque()
    try:
        for item in it:
            if len(pending) >= concurrency:
                yield await pending.popleft()
            pending.append(asyncio.ensure_future(run(item)))
        while pending:
            yield await pending.popleft()
    finally:
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _block_rows(core: Any, limits: Any, codec: Any, ref: Any, chunk_rows: int | None, dim: int | None,
                shape: Any) -> int:
    """Rows per block: one request each, within the service's body and output limits."""
    d = dim or (shape[1] if shape is not None else 1)
    return core.quantize_rows(limits, np.broadcast_to(np.float32(0), (chunk_rows or 1 << 30, d)), codec, ref,
                              chunk_rows)


def _encode_block(core: Any, ref: Any, x: np.ndarray, timeout_s: float | None):
    """``make(by_id)`` for a block's /quantize request (Client._by_id and AsyncClient._by_id take it)."""
    return lambda by_id: core.quantize(x, None, ref, {}, False, False, timeout_s, by_id)


def _bulk_args(core: Any, codec: Any, source: Any, chunk_rows: int | None, start_row: int):
    ref = core.codec_ref(codec)
    dim = ref.json.get("dim")
    dim = int(dim) if isinstance(dim, int) else None
    if start_row < 0:
        raise ValueError(f"start_row must be >= 0, got {start_row}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    shape = getattr(source, "shape", None)
    if shape is not None:
        if len(shape) != 2:
            raise ValueError(f"vectors must be 2-D (rows, dim), got shape {tuple(shape)}")
        _check_dim(shape[1], dim)
    return ref, dim, shape


def aquantize_bulk(client: Any, source: Any, codec: Any, chunk_rows: int, concurrency: int,
                   progress: Progress | None, start_row: int, timeout_s: float | None) -> AsyncIterator[Any]:
    """AsyncClient.quantize_bulk: one Encoded per block, in order (the blocks are cut
    from ``source`` as in `quantize_bulk`; an array or a plain iterator of chunks)."""
    core = client._core
    ref, dim, shape = _bulk_args(core, codec, source, chunk_rows, start_row)
    total = total_rows(source)

    async def gen() -> AsyncIterator[Any]:
        rows = _block_rows(core, await client.limits(), codec, ref, chunk_rows, dim, shape)

        async def run(x: np.ndarray) -> Any:
            return _freed(await client._by_id(ref, _encode_block(core, ref, x, timeout_s)))

        work = aordered(run, blocks(source, rows, start_row, dim), concurrency, first_alone=ref.id is None)
        done = start_row
        try:
            async for r in work:
                yield r
                done += len(r)
                if progress is not None:
                    progress(done, total)
        finally:  # an async generator left early does not close the one it iterates: cancel the requests now
            await work.aclose()

    return gen()


class Spool:
    """Rows of a fixed size appended to ``OUT.embquant-part``, with the rows done
    recorded in ``OUT.embquant-resume.json``. The record only ever names rows that
    are on disk: the data is fsync'd before the record is written, at most every
    ``sync_s`` seconds and when the spool is closed (an error, Ctrl-C), so a job
    killed outright sends again at most the last ``sync_s`` seconds of rows, and
    never a row the record holds. A later run with the same ``fingerprint`` (same
    input, codec, layout) resumes after the rows recorded; bytes past them (a block
    cut short by a crash) are dropped. Nothing here is the output: that is written
    from the spool at the end, under a temporary name, and renamed."""

    VERSION = 1

    def __init__(self, out_path: str | os.PathLike, row_bytes: int, fingerprint: dict, sync_s: float = 0.5):
        out = os.fspath(out_path)
        self.data_path = out + ".embquant-part"
        self.state_path = out + ".embquant-resume.json"
        self.row_bytes = int(row_bytes)
        self.fingerprint = {**fingerprint, "row_bytes": self.row_bytes, "version": self.VERSION}
        self.rows = 0
        self.recorded = 0
        self.resumed = False
        self.sync_s = sync_s
        self._synced_at = 0.0
        self._writing = False
        self._f = None

    def open(self) -> int:
        """Open for appending; the rows already done (0 on a fresh start). A second
        job writing the same output at the same time is refused (the spool is locked
        while open, where the platform has fcntl)."""
        data = os.fdopen(os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o666), "r+b")
        if fcntl is not None:
            try:
                fcntl.flock(data.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                data.close()
                raise ValueError(f"another job is writing {self.data_path[:-len('.embquant-part')]} "
                                 f"(its spool is locked)") from None
        rows = 0
        try:
            with open(self.state_path, "rb") as f:
                state = json.loads(f.read())
            if state.get("fingerprint") == self.fingerprint:
                rows = int(state["rows"])
                if os.path.getsize(self.data_path) < rows * self.row_bytes:
                    rows = 0  # the data file is not what the record says: start again
        except (OSError, ValueError, KeyError, TypeError):
            rows = 0
        self._f = data
        self._f.truncate(rows * self.row_bytes)
        self._f.seek(rows * self.row_bytes)
        self.rows = self.recorded = rows
        self.resumed = rows > 0
        self._writing = True
        self._synced_at = time.monotonic()
        if not rows:
            self._record()
        return rows

    def append(self, data: Any) -> None:
        """Append whole rows (bytes, or an array whose bytes are the rows)."""
        mv = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        if len(mv) % self.row_bytes:
            raise ValueError(f"{len(mv)} bytes is not a whole number of {self.row_bytes}-byte rows")
        self._f.write(mv)
        self.rows += len(mv) // self.row_bytes
        if time.monotonic() - self._synced_at >= self.sync_s:
            self.sync()

    def sync(self) -> None:
        """Put the rows written so far on disk, then record them."""
        self._f.flush()
        os.fsync(self._f.fileno())
        self._synced_at = time.monotonic()
        if self.rows != self.recorded:
            self._record()

    def _record(self) -> None:
        _write_atomic(self.state_path, json.dumps({"fingerprint": self.fingerprint, "rows": self.rows}).encode())
        self.recorded = self.rows

    def read(self, lo: int, hi: int) -> bytes:
        """Rows [lo, hi) as bytes."""
        self._f.seek(lo * self.row_bytes)
        data = self._f.read((hi - lo) * self.row_bytes)
        if len(data) != (hi - lo) * self.row_bytes:
            raise ValueError(f"the spool {self.data_path} ends before row {hi}")
        return data

    def open_read(self) -> None:
        """Read the spool back: everything written is synced and recorded, and the
        spool stays open (and locked) until ``finish`` or ``close``."""
        if self._f is None:
            self._f = open(self.data_path, "rb")
        elif self._writing:
            self.sync()
            self._writing = False

    def close(self) -> None:
        """Close; rows appended since the last record are synced and recorded first."""
        if self._f is not None:
            try:
                if self._writing:
                    self.sync()
            finally:
                self._writing = False
                self._f.close()
                self._f = None

    def finish(self) -> None:
        """The output is complete (or nothing was done): remove the spool and its record."""
        self._writing = False
        self.close()
        for p in (self.state_path, self.data_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
