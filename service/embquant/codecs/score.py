"""Scores of float queries against codes: the top k per query, or every score, for
``dot``, ``cosine`` or ``l2`` (squared Euclidean distance, smallest first).

Two paths, the same answer (ties aside):

- **asymmetric** (`score_path` says which runs): on the CPU with the numba backend,
  for the schemes whose decode is ``level(d, symbol) * gain(row)`` after an optional
  rotation (lloyd in every mode and norm, absmax, codebook with scale row or codec,
  binary; and tcq, whose level is that of the symbol along its trellis path; and
  bitcodes for ``dot``, its bits levels 0 and 1 against the query projected onto its
  codebook, `_projection`), the codes are scored where they lie, packed, never decoded
  to vectors. The query is
  rotated once (``q . R^T z = (R q) . z``, R orthogonal) and a row's ``q' . levels``
  is computed one of two ways (`kernels.score_cpu`; `dense_scan` picks by the count of
  queries and the width): with enough queries, blocks of rows are decoded to their
  levels (not rotated, not scaled) once for all the queries and multiplied with them,
  a float32 fused multiply-add per dimension in ascending order, 16 rows in the lanes
  of a vector (`scan_dense`); with few, a lookup table per query holds
  ``q'_d * level(d, s)`` summed over the symbols of a byte (1, 2, 4, 8 bits) or per
  symbol (other widths), and the product is a sum of table entries (`scan`,
  `scan_words`). tcq's codes take the levels kernel whatever the count (a level is
  known only by walking the row's trellis). Times the row's gain that is the dot product; cosine and l2 add
  ``||y||^2 = gain^2 * sum_d level(d, s_d)^2``, summed by table once per row. Top k
  per query is kept in the kernel and merged, ties to the lower index.
  For top k of 1- and 2-bit codes (and of 4-bit codes for up to 16 queries:
  `fast_scan`), a third kernel gives the levels kernel's answer bit for bit, faster
  (`kernels.fastscan_cpu.scan_fast`): byte tables looked up 32 rows at a time
  (``vpshufb``) bound every row's score from integers, and only the rows whose bound
  can still reach a query's top k are scored, the levels kernel's way.
- **exact**: decode then score, done in row chunks so the decoded N x D matrix never
  exists whole: each chunk of codes is decoded (by the same `decode` the service
  answers with), scored against every query with one matrix product, and merged into
  a running top k. Every other scheme, device or backend takes this path; so do codes
  the asymmetric path finds invalid (the exact path then raises the decode's error).

Both give a score in float32 (the asymmetric sums in float32, the exact path's
products in float64 rounded once), each computed from the row's own codes and the
query alone, and ties keep the lower index first, so the answer does not depend on the
chunking nor on where a code sits.

`rescore` is the two-pass search: `score` keeps the best ``candidates`` codes per
query, and those alone are scored again exactly, against their decoded vectors (only
the candidate rows are decoded) or against float vectors the caller holds for them,
as `score_exact` scores (float64 products rounded once to float32, ties to the lower
index). With every code a candidate its answer is `score_exact`'s. For codes of one
bit per dimension the first pass may instead be a Hamming search (`hamming_candidates`:
the queries encoded with the codec, the fewest differing bits, ties to the lower index),
as a binary index does: faster than the asymmetric pass, coarser.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..errors import CodecMismatch, InvalidInput
from . import kernels, rotation
from .base import Codec
from .checks import all_finite, check_code_shapes
from .core import CENTER, centred, decode

METRICS = ("dot", "cosine", "l2")
#: Decoded values per chunk (float32): bounds the scoring's memory whatever N is.
SCORE_CHUNK_VALUES = 1 << 22
#: Table entries (float64 while built) per chunk of queries on the asymmetric path.
LUT_CHUNK_VALUES = 1 << 23
#: Rows per parallel task of the asymmetric kernel (grown when k is large).
TASK_ROWS = 2048
#: Bytes of per-task top-k buffers at most (the task size grows to stay under it).
TOPK_BUFFER_BYTES = 1 << 28
_F32_MAX = float(np.finfo(np.float32).max)
#: `dense_scan` from this many queries x bits per symbol (measured: bench/score.py)
DENSE_MIN = 16
#: Queries per chunk on the dense path (each chunk decodes the codes' levels once more).
DENSE_QUERIES = 1024
#: The bound-and-rescore path (`fast_scan`): these widths, for at most this many queries
#: (None: any; at 4 bits a row of 384 dimensions is 192 byte positions and its looser
#: bounds leave more rows to score exactly: 2.1-3.5x the levels kernel up to 4 queries,
#: 1.1-1.3x at 16, even at 64: bench/score.py's kernels-alone table), k up to
#: FAST_MAX_K, from FAST_MIN_QUERIES queries
FAST_BITS = {1: None, 2: None, 4: 16}
FAST_MAX_K = 16384
FAST_MIN_QUERIES = 1
#: Its query tables per chunk of queries (bytes), each task's per-query state per
#: chunk (bytes), its tasks per numba thread (long tasks tighten each query's bound),
#: and the candidates held per query and task (at least; 4 k more)
FAST_LUT_BYTES = 1 << 24
FAST_STATE_BYTES = 1 << 25
FAST_TASKS_PER_THREAD = 4
FAST_CAP_MIN = 256


def score(codec: Codec, queries: torch.Tensor, codes: torch.Tensor, side: torch.Tensor | None,
          k: int | None, metric: str = "dot", stats: dict | None = None
          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scores, indices): with ``k``, float32 (Q, min(k, N)) and int64 (Q, min(k, N)),
    best first; with ``k=None``, every score, float32 (Q, N), and None. ``stats``, if
    given, gets "kernel" (which ran: "bound" (`fast_scan`), "levels", "tables" or
    "exact") and, for "bound", "rescored" (rows scored exactly, all queries)."""
    if stats is not None:
        stats["kernel"] = "exact"
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if queries.dim() != 2 or queries.shape[1] != codec.dim:
        raise CodecMismatch(f"queries must be (Q, {codec.dim}) for this codec, got {list(queries.shape)}")
    # centred codes: dot and l2 take the mean into account below; cosine needs each
    # code's norm with the mean added, which the tables do not give: exact
    if _asymmetric_ok(codec, queries, codes) and _metric_ok(codec, metric):
        out = _score_asymmetric(codec, queries, codes, side, k, metric, stats)
        if out is not None:
            return out
    return score_exact(codec, queries, codes, side, k, metric)


# -- which path ---------------------------------------------------------------------


def _level_spec(codec: Codec):
    """(levels float64 (n,) or (D, n), gain(side, n_rows) -> float64 (N,)) when the
    scheme decodes to ``levels[d, symbol] * gain`` (then the inverse rotation), else None."""
    name, p = codec.scheme.name, codec.params
    dim = codec.dim
    if name == "lloyd":
        from .lloyd import gaussian_tables

        if p.mode == "gaussian":
            lv = gaussian_tables(p.bits)[1].astype(np.float64)
        else:
            lv = np.asarray(codec.state["levels"], dtype=np.float32).astype(np.float64)
        if p.norm == "unit":
            g = float(np.float32(1.0 / math.sqrt(dim)))  # torch rounds the Python float to float32
            return lv, lambda side, n: np.full(n, g)
        return lv, _side_gain
    if name == "absmax":
        qmax = (1 << (p.bits - 1)) - 1
        return np.arange(-qmax, qmax + 1, dtype=np.float64), _side_gain
    if name == "codebook":
        lv = p.level_values().astype(np.float64)
        if p.scale == "row":
            return lv, _side_gain
        a = float(np.float32(codec.state["absmax"][0]))
        return lv, lambda side, n: np.full(n, a)
    if name == "tcq":  # levels along the trellis: decoded by walking it (`_trellis`)
        lv = np.asarray(codec.state["levels"], dtype=np.float32).astype(np.float64)
        if p.norm == "unit":
            g = float(np.float32(1.0 / math.sqrt(dim)))
            return lv, lambda side, n: np.full(n, g)
        return lv, _side_gain
    if name == "bitcodes":  # o + sum_j b_j C_j: levels 0 and 1 against the projected query (`_projection`)
        return np.array([0.0, 1.0]), lambda side, n: np.ones(n)
    if name == "binary":
        lv = np.array([-1.0, 1.0])
        if p.scale == "row":
            return lv, _side_gain
        a = float(np.float32(codec.state["scale"][0])) if p.scale == "global" else 1.0
        return lv, lambda side, n: np.full(n, a)
    return None


def _trellis(codec: Codec) -> bool:
    """Codes whose levels depend on the path through tcq's trellis, not on the symbol
    alone: decoded by a walk, scored by the levels kernel only."""
    return codec.scheme.name == "tcq"


def _side_gain(side: torch.Tensor, n: int) -> np.ndarray:
    return side[:, 0].float().numpy().astype(np.float64)


def _projection(codec: Codec) -> tuple[np.ndarray, np.ndarray] | None:
    """(C float64 (S, D), o float64 (D,)) for codes that decode to ``o + sum_j b_j C_j``
    (bitcodes: S bits per row): ``q . x = q . o + sum_j b_j (C_j . q)``, the 1-bit levels
    0 and 1 against the projected query ``C q``. Else None."""
    if codec.scheme.name != "bitcodes":
        return None
    return codec.derived("score_projection", lambda: (
        np.ascontiguousarray(codec.state["codebook"], dtype=np.float64),
        np.ascontiguousarray(codec.state["offset"], dtype=np.float64)))


def _metric_ok(codec: Codec, metric: str) -> bool:
    """Whether the asymmetric path gives this metric for this codec: centred codes' cosine
    needs each code's norm with the mean added, and bitcodes' cosine and l2 each code's
    norm (its bits' Gram form): neither comes from the tables, so those go exact."""
    if centred(codec.params) and metric == "cosine":
        return False
    return _projection(codec) is None or metric == "dot"


def score_path(codec: Codec, device: torch.device | str = "cpu", metric: str | None = None) -> str:
    """"asymmetric" when `score` scores this codec's codes on ``device`` without
    decoding them (for ``metric``, when given), else "exact" (decode then score)."""
    if torch.device(device).type != "cpu" or kernels.active() != "numba":
        return "exact"
    lay = codec.layout
    if lay.bits > 8 or _level_spec(codec) is None:
        return "exact"
    if lay.symbols != codec.dim and _projection(codec) is None:
        return "exact"
    if metric is not None and not _metric_ok(codec, metric):
        return "exact"
    return "asymmetric"


def dense_scan(bits: int, queries: int) -> bool:
    """Whether the asymmetric path multiplies the queries with decoded levels (blocks of
    rows decoded once for all the queries of a chunk) rather than summing table
    entries: the tables cost ``D * bits / 8`` lookups per (query, row), the levels ``D``
    multiply-adds 16 rows at a time plus a decode per row shared by the queries, so
    the levels win from a few queries at 4 and 8 bits and from about 16 at 1 bit."""
    return queries * bits >= DENSE_MIN


def fast_scan(bits: int, k: int, queries: int) -> bool:
    """Whether top-k scoring of these codes takes `kernels.fastscan_cpu` (4-bit table
    lookups on byte lanes bound every score, the rows that may reach the top k are
    scored as `scan_dense` scores them): widths and query counts of FAST_BITS,
    0 < k <= FAST_MAX_K, at least FAST_MIN_QUERIES queries, and a CPU with a byte shuffle
    instruction (AVX2)."""
    if bits not in FAST_BITS or not 0 < k <= FAST_MAX_K or queries < FAST_MIN_QUERIES:
        return False
    most = FAST_BITS[bits]
    return (most is None or queries <= most) and _has_pshufb()


@functools.cache
def _has_pshufb() -> bool:
    from .kernels import fastscan_cpu

    return bool(fastscan_cpu.pshufb_available())


def _fast_ok(qr: np.ndarray, lv: np.ndarray, gain: np.ndarray, gmax: float, n2: np.ndarray, qsq: np.ndarray,
             metric: str) -> bool:
    """Whether every term of `fastscan_cpu`'s float32 vector test (a row's factor times a
    query's sums of products, ||y||^2, ||q||^2) stays far inside float32's range; beyond,
    `scan_dense` runs. gmax: the largest |gain|."""
    if not qr.size or not lv.size:
        return False
    amax = np.abs(lv).reshape(-1, lv.shape[-1]).max(axis=1) * np.ones(qr.shape[1])
    qm = float((np.abs(qr).astype(np.float64) @ amax).max())  # the largest sum |q_d| |level_d|
    if metric == "cosine":
        g = np.abs(gain)
        a = float((g / np.maximum(np.sqrt(g * g * n2), 1e-30)).max())
    else:
        a = 2.0 * gmax
    b = gmax * gmax * float(n2.max()) if metric == "l2" else 0.0
    lim = 1e36
    return bool(np.isfinite(qm) and 4.0 * qm * a < lim and b + float(qsq.max()) < lim)


def fast_tables(qf: np.ndarray, lvf: np.ndarray, bits: int, dim: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(luts uint8 (Q, nbytes * 64), C, delta, h float64 (Q,)): `fastscan_cpu.scan_fast`'s
    query tables and bounds (`fastscan_cpu.tables`). qf (Q, D) float32 rotated queries,
    lvf (D, 16) float32 levels."""
    from .kernels import fastscan_cpu

    nq = qf.shape[0]
    nbytes = -(-dim * bits // 8)
    luts = np.empty((nq, nbytes * 64), np.uint8)
    cc, delta, hw = np.empty(nq), np.empty(nq), np.empty(nq)
    fastscan_cpu.tables(np.ascontiguousarray(qf, dtype=np.float32), np.ascontiguousarray(lvf, dtype=np.float32),
                        bits, dim, luts, cc, delta, hw)
    return luts, cc, delta, hw


def _asymmetric_ok(codec: Codec, queries: torch.Tensor, codes: torch.Tensor) -> bool:
    if codes.device.type != "cpu" or queries.device.type != "cpu":
        return False
    if codes.dim() != 2 or codes.shape[0] == 0 or queries.shape[0] == 0:
        return False
    return score_path(codec, "cpu") == "asymmetric"


# -- asymmetric path ------------------------------------------------------------------


def _group(bits: int) -> int:
    """Symbols per table key: a byte's worth where symbols never straddle bytes."""
    return 8 // bits if bits in (1, 2, 4, 8) else 1


def _tables(qr: np.ndarray, lv: np.ndarray, bits: int, dim: int, spg: int) -> np.ndarray:
    """lut (Q, keys, 2**(spg*bits)): lut[q, g, key] = sum over the key's symbols of
    qr[q, d] * lv[d, s] (float64; symbols past dim add nothing)."""
    nsym = 1 << bits
    nk = -(-dim // spg)
    full = np.zeros((nk * spg, nsym), np.float64)
    if lv.ndim == 1:
        full[:dim, : lv.shape[0]] = lv[None, :]
    else:
        full[:dim, : lv.shape[1]] = lv
    qpad = np.zeros((qr.shape[0], nk * spg), np.float64)
    qpad[:, :dim] = qr
    per = (qpad[:, :, None] * full[None, :, :]).reshape(qr.shape[0], nk, spg, nsym)
    keys = np.arange(1 << (spg * bits))
    out = np.zeros((qr.shape[0], nk, keys.size), np.float64)
    for j in range(spg):
        out += per[:, :, j, (keys >> (j * bits)) & (nsym - 1)]
    return out


def _score_asymmetric(codec, queries, codes, side, k, metric, stats=None):
    """The asymmetric path, or None where these codes must go the exact way (invalid
    codes or values beyond float32 range: the exact path raises its error)."""
    from .kernels import score_cpu

    check_code_shapes(codec, codes, side)
    lay = codec.layout
    dim, bits = lay.symbols, lay.bits  # symbols per row: codec.dim, or bitcodes' bits
    lv, gain_of = _level_spec(codec)
    words = np.ascontiguousarray(codes.numpy(), dtype=np.int64)
    n = words.shape[0]
    nlev = lay.levels if lay.levels is not None else 1 << bits
    # with every bit of every word a symbol's and every symbol a level, no code is invalid
    if nlev < (1 << bits) or 64 % bits or (dim * bits) % 64:
        status = np.empty(n, np.uint8)
        score_cpu.check(words, bits, dim, nlev, status)
        if status.any():
            return None
    gain = np.ascontiguousarray(gain_of(side, n), dtype=np.float64)
    amax = float(np.abs(lv).max()) if lv.size else 0.0
    gmax = float(np.abs(gain).max())  # NaN where any gain is NaN
    if not (np.isfinite(gmax) and gmax * amax * math.sqrt(dim) < _F32_MAX):
        return None
    q = queries.detach().double()
    if not all_finite(q):
        return None
    shift = None  # a centred codec decodes to x_c + mean
    proj = _projection(codec)
    if proj is not None:  # dot only (`_metric_ok`): q . o, then the query projected to the bits
        shift = (q @ torch.from_numpy(proj[1])).numpy()
        q = q @ torch.from_numpy(proj[0]).T
        # a codebook out of range (a corrupted codec): sums that would leave float32 go the exact way
        if not (np.isfinite(shift).all() and float(q.abs().max()) * dim < _F32_MAX / 4):
            return None
    elif centred(codec.params):
        mean = torch.from_numpy(np.asarray(codec.state[CENTER], dtype=np.float64))
        if metric == "l2":  # |q - x_c - mean|^2: the codes against q - mean
            q = q - mean
        else:  # dot: q.x_c + q.mean, the same for every code of a query
            shift = (q @ mean).numpy()
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-30)
    qsq = (q * q).sum(dim=1).numpy() if metric == "l2" else np.zeros(q.shape[0])
    if getattr(codec.params, "rotate", False):
        q = rotation.forward(q, codec.params.rotation_seed)
    qr = q.numpy()
    spg = _group(bits)
    n2 = np.zeros(n)
    trellis = _trellis(codec)
    if metric != "dot":
        if trellis:
            n2 = score_cpu.trellis_row_sums(words, bits, dim, lv.astype(np.float32))
        else:
            sq = _tables(np.ones((1, dim)), lv * lv, bits, dim, spg)[0]
            score_cpu.row_sums(words, bits, dim, spg, sq, n2)
    m = {"dot": 0, "cosine": 1, "l2": 2}[metric]
    largest = metric != "l2"
    nq = qr.shape[0]
    kk = 0 if k is None else min(k, n)
    fast = not trellis and fast_scan(bits, kk, nq) and _fast_ok(qr, lv, gain, gmax, n2, qsq, metric)
    qf = np.ascontiguousarray(qr, dtype=np.float32)  # the levels and bound kernels' queries
    if trellis:  # the whole alphabet, once: the kernel walks the trellis
        lvf = np.asarray(lv, dtype=np.float32)[None, :]
    else:  # the levels per dimension, padded to 16 (at least) with zeros
        lvf = np.zeros((dim, max(16, 1 << bits)), np.float32)
        lvf[:, : lv.shape[-1]] = lv if lv.ndim == 2 else lv[None, :]
    if fast:
        from .kernels import fastscan_cpu

        nbytes = -(-dim * bits // 8)
        cap = FAST_CAP_MIN + 4 * kk
        # queries per chunk: their tables, and each task's per-query state (candidates
        # with their bounds, the heap), both bounded whatever Q and k
        qstep = max(1, min(FAST_LUT_BYTES // (64 * nbytes), FAST_STATE_BYTES // (16 * cap + 8 * kk)))

        def run(lo, hi, task_rows, kq, ts, ti, out):
            luts, cc, delta, hw = fast_tables(qf[lo:hi], lvf, bits, dim)
            fastscan_cpu.scan_fast(words, bits, dim, nbytes, lvf, gain, n2, qf[lo:hi], qsq[lo:hi], luts, cc, delta,
                                   hw, m, largest, task_rows, kq, cap, ts, ti, rescored)
    elif trellis or dense_scan(bits, nq):
        junk = np.empty(n, np.uint8)
        qstep = DENSE_QUERIES

        def run(lo, hi, task_rows, kq, ts, ti, out):
            score_cpu.scan_dense(words, bits, dim, lvf, gain, n2, qf[lo:hi], qsq[lo:hi], m, largest, task_rows,
                                 kq, ts, ti, out, junk, trellis)
    else:
        nk = -(-dim // spg)
        qstep = max(1, LUT_CHUNK_VALUES // (nk * (1 << (spg * bits))))

        def run(lo, hi, task_rows, kq, ts, ti, out):
            lut = _tables(qr[lo:hi], lv, bits, dim, spg).astype(np.float32)
            _run(score_cpu, words, bits, dim, spg, lut, gain, n2, np.ascontiguousarray(qsq[lo:hi]), m, largest,
                 task_rows, kq, ts, ti, out)
    task_rows = TASK_ROWS
    if kk and (fast or trellis or dense_scan(bits, nq)):
        # long tasks: fewer rows pushed into each task's top k (a row enters when it
        # beats the task's k-th best so far; the bound kernel's k-th lower bound tightens
        # along a task), a few per thread to share the work (bench/score.py's large-k
        # table times both task sizes)
        import numba

        task_rows = max(TASK_ROWS, -(-n // (FAST_TASKS_PER_THREAD * numba.get_num_threads())))
    if kk:
        while -(-n // task_rows) * min(qstep, nq) * kk * 12 > TOPK_BUFFER_BYTES and task_rows < n:
            task_rows *= 2
    ntask = -(-n // task_rows)
    rescored = np.zeros(ntask, np.int64)
    rescored_total = 0
    if kk:
        out_s = np.empty((nq, kk), np.float32)
        out_i = np.empty((nq, kk), np.int64)
    else:
        full = np.empty((nq, n), np.float32)
    for lo in range(0, nq, qstep):
        hi = min(nq, lo + qstep)
        if kk:
            ts = np.empty((ntask, hi - lo, kk), np.float32)
            ti = np.empty((ntask, hi - lo, kk), np.int64)
            run(lo, hi, task_rows, kk, ts, ti, np.empty((1, 1), np.float32))
            rescored_total += int(rescored.sum())
            s, i = _merge_tasks(ts, ti, kk, largest)
            out_s[lo:hi] = s.numpy()
            out_i[lo:hi] = i.numpy()
        else:
            run(lo, hi, task_rows, 0, np.empty((1, 1, 1), np.float32), np.empty((1, 1, 1), np.int64), full[lo:hi])
    if shift is not None:
        if kk:
            out_s = (out_s + shift[:, None]).astype(np.float32)
        else:
            full = (full + shift[:, None]).astype(np.float32)
    if stats is not None:
        stats["kernel"] = "bound" if fast else "levels" if trellis or dense_scan(bits, nq) else "tables"
        if fast:
            stats["rescored"] = int(rescored_total)
    if kk:
        return torch.from_numpy(out_s), torch.from_numpy(out_i)
    return torch.from_numpy(full), None


def _merge_tasks(ts: np.ndarray, ti: np.ndarray, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The best k per query of the kernels' per-task buffers (ntask, Q, k): tasks hold
    disjoint index ranges in order, each buffer best first with ties in index order, so
    a stable sort of the concatenation keeps ties to the lower index."""
    nq = ts.shape[1]
    s = torch.from_numpy(ts.transpose(1, 0, 2).reshape(nq, -1))
    i = torch.from_numpy(ti.transpose(1, 0, 2).reshape(nq, -1))
    order = torch.sort(s, dim=1, descending=largest, stable=True).indices[:, :k]
    return torch.gather(s, 1, order), torch.gather(i, 1, order)


def _run(score_cpu, words, bits, dim, spg, lut, gain, n2, qs, m, largest, task_rows, k, ts, ti, full):
    """The scan kernel for this width: bytes read in place where a key is a byte."""
    if bits in (1, 2, 4, 8):
        nb = 8 * words.shape[1]
        if lut.shape[1] < nb:  # the padding bytes past the last symbol: zero entries
            lut = np.concatenate([lut, np.zeros((lut.shape[0], nb - lut.shape[1], lut.shape[2]), lut.dtype)], axis=1)
        score_cpu.scan_words(words, lut, gain, n2, qs, m, largest, task_rows, k, ts, ti, full)
    else:
        score_cpu.scan(words, bits, dim, spg, lut, gain, n2, qs, m, largest, task_rows, k, ts, ti, full)


# -- exact path -----------------------------------------------------------------------


def score_exact(codec: Codec, queries: torch.Tensor, codes: torch.Tensor, side: torch.Tensor | None,
                k: int | None, metric: str = "dot") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode then score (the reference the asymmetric path is checked against)."""
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if queries.dim() != 2 or queries.shape[1] != codec.dim:
        raise CodecMismatch(f"queries must be (Q, {codec.dim}) for this codec, got {list(queries.shape)}")
    # float64 products, rounded once to float32: a code's score then does not depend on
    # where it sits in a chunk (float32 GEMM kernels round a block's tail rows
    # differently), so ties are ties and the chunking changes nothing
    q = queries.double()
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-30)
    q_sq = (q * q).sum(dim=1, keepdim=True) if metric == "l2" else None
    n = codes.shape[0]
    step = max(1, SCORE_CHUNK_VALUES // max(codec.dim, 1))
    largest = metric != "l2"
    best_s = best_i = None
    full = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        y = decode(codec, codes[lo:hi], None if side is None else side[lo:hi], lo).to(q.device, torch.float64)
        s = q @ y.T
        if metric == "cosine":
            s = s / y.norm(dim=1).clamp_min(1e-30)[None, :]
        elif metric == "l2":
            s = (q_sq - 2 * s + (y * y).sum(dim=1)[None, :]).clamp_min(0)
        s = s.float()
        if k is None:
            full.append(s)
            continue
        idx = torch.arange(lo, hi, device=q.device).expand(q.shape[0], -1)
        if best_s is not None:  # earlier indices first: a stable sort keeps ties in index order
            s = torch.cat([best_s, s], dim=1)
            idx = torch.cat([best_i, idx], dim=1)
        order = torch.sort(s, dim=1, descending=largest, stable=True).indices[:, :k]
        best_s, best_i = torch.gather(s, 1, order), torch.gather(idx, 1, order)
    if k is None:
        return (torch.cat(full, dim=1) if full else q.new_zeros((q.shape[0], 0), dtype=torch.float32)), None
    if best_s is None:
        return (q.new_zeros((q.shape[0], 0), dtype=torch.float32),
                torch.zeros((q.shape[0], 0), dtype=torch.int64, device=q.device))
    return best_s, best_i


# -- rescoring ------------------------------------------------------------------------


#: `rescore`'s first passes: "codes" (`score` on the codes), "hamming" (1-bit codes: the
#: queries encoded too, then the fewest differing bits, as a binary index searches)
FIRST_PASSES = ("codes", "hamming")
#: Tasks per numba thread in the Hamming first pass: enough to balance the threads,
#: few enough that merging ntask x m candidates per query stays cheap
HAMMING_TASKS_PER_THREAD = 4


def rescore(codec: Codec, queries: torch.Tensor, codes: torch.Tensor, side: torch.Tensor | None, k: int,
            metric: str, candidates: int, vectors: torch.Tensor | None = None,
            first_pass: str = "codes") -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` per query of a two-pass search: the first pass keeps the best
    ``candidates`` codes per query (``candidates`` and ``k`` are clamped to N): `score`
    on the codes, or with ``first_pass="hamming"`` (1-bit codes) `hamming_candidates`;
    those are scored again with their decoded vectors, or with ``vectors`` (float
    (N, D), the caller's originals of the N codes) when given. (scores float32
    (Q, k), indices int64 (Q, k)), best first, ties to the lower index."""
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if first_pass not in FIRST_PASSES:
        raise InvalidInput(f"first_pass must be one of {', '.join(FIRST_PASSES)}, got {first_pass!r}")
    n = codes.shape[0]
    if candidates < k:
        raise InvalidInput(f"candidates={candidates} must be at least k={k}")
    if vectors is not None and (vectors.dim() != 2 or vectors.shape[0] != n or vectors.shape[1] != codec.dim):
        raise CodecMismatch(f"vectors must be ({n}, {codec.dim}): one float row per code, got {list(vectors.shape)}")
    m, k = min(candidates, n), min(k, n)
    if m == 0:
        return score_exact(codec, queries, codes, side, 0, metric)
    if first_pass == "hamming":
        cand = hamming_candidates(codec, queries, codes, side, m)
    else:
        _, cand = score(codec, queries, codes, side, m, metric)
    return rerank(codec, queries, codes, side, cand, k, metric, vectors)


# -- Hamming first pass --------------------------------------------------------------


def hamming_check(codec: Codec) -> None:
    """InvalidInput unless the codec's codes are one bit per dimension whose two levels
    decode per row as ``level(d, bit) * gain`` (binary; lloyd at 1 bit): what a
    Hamming distance between the codes of a query and of a row ranks."""
    spec = None if codec.layout.bits != 1 or _trellis(codec) else _level_spec(codec)
    if spec is None:
        raise InvalidInput(
            f"first_pass=hamming needs codes of one bit per dimension (binary, or lloyd with bits=1); "
            f"{codec.scheme.name} with these params has {codec.layout.bits}-bit symbols"
            + (" on a trellis" if _trellis(codec) else ""))


def hamming_candidates(codec: Codec, queries: torch.Tensor, codes: torch.Tensor, side: torch.Tensor | None,
                       m: int) -> torch.Tensor:
    """int64 (Q, min(m, N)): per query, the rows whose codes differ from the query's own
    codes (the queries encoded with the codec) in the fewest bits, fewest first, ties
    to the lower index. The compiled kernel where the CPU kernels run, else the torch
    reference (`_hamming_reference`); both give the same rows."""
    hamming_check(codec)
    check_code_shapes(codec, codes, side)
    if queries.dim() != 2 or queries.shape[1] != codec.dim:
        raise CodecMismatch(f"queries must be (Q, {codec.dim}) for this codec, got {list(queries.shape)}")
    from .core import encode

    qcodes, _ = encode(codec, queries.float())
    n = codes.shape[0]
    m = min(m, n)
    if m == 0 or queries.shape[0] == 0:
        return torch.empty((queries.shape[0], m), dtype=torch.int64)
    if not kernels.compiled(codes):
        return _hamming_reference(qcodes.to(codes.device), codes, m)
    from .kernels import score_cpu

    words = np.ascontiguousarray(codes.numpy(), dtype=np.int64)
    qw = np.ascontiguousarray(qcodes.numpy(), dtype=np.int64)
    nq = qw.shape[0]
    # a few tasks per thread: each task answers m rows per query, and the merge below
    # sorts ntask x m of them per query
    import numba

    task_rows = max(TASK_ROWS, -(-n // (HAMMING_TASKS_PER_THREAD * numba.get_num_threads())))
    while -(-n // task_rows) * nq * m * 12 > TOPK_BUFFER_BYTES and task_rows < n:
        task_rows *= 2
    ntask = -(-n // task_rows)
    ts = np.empty((ntask, nq, m), np.float32)
    ti = np.empty((ntask, nq, m), np.int64)
    score_cpu.hamming_scan(words, qw, task_rows, m, ts, ti)
    return _merge_tasks(ts, ti, m, True)[1]


_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def _popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 (SWAR: torch has no popcount; wrapping int64 arithmetic,
    the masks clear what the arithmetic shifts bring in)."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56


def _hamming_reference(qcodes: torch.Tensor, codes: torch.Tensor, m: int) -> torch.Tensor:
    """`hamming_candidates` in torch, rows in chunks: a running best m per query, and each
    chunk's distances appended after it and stably sorted, so ties keep the lower index."""
    nq, nw = qcodes.shape
    n = codes.shape[0]
    step = max(1, SCORE_CHUNK_VALUES // max(nq * nw, 1))
    best_d = torch.empty((nq, 0), dtype=torch.int64, device=codes.device)
    best_i = torch.empty((nq, 0), dtype=torch.int64, device=codes.device)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        d = _popcount(qcodes[:, None, :] ^ codes[None, lo:hi, :]).sum(dim=2)
        idx = torch.arange(lo, hi, device=codes.device).expand(nq, hi - lo)
        d, idx = torch.cat([best_d, d], dim=1), torch.cat([best_i, idx], dim=1)
        order = torch.sort(d, dim=1, stable=True).indices[:, :m]
        best_d, best_i = torch.gather(d, 1, order), torch.gather(idx, 1, order)
    return best_i


def rerank(codec: Codec, queries: torch.Tensor, codes: torch.Tensor, side: torch.Tensor | None,
           cand: torch.Tensor, k: int, metric: str, vectors: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` of each query's candidate rows ``cand`` (int64 (Q, m), distinct
    per row), scored exactly as `score_exact` scores: against the decoded candidate
    rows (decoded once per chunk of queries, each distinct row once), or against
    ``vectors[cand]`` when given."""
    q = queries.double()
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-30)
    largest = metric != "l2"
    nq, m = cand.shape
    k = min(k, m)
    cand = torch.sort(cand, dim=1).values  # index order: a stable sort by score keeps ties to the lower index
    out_s = torch.empty((nq, k), dtype=torch.float32, device=q.device)
    out_i = torch.empty((nq, k), dtype=torch.int64, device=q.device)
    step = max(1, SCORE_CHUNK_VALUES // max(m * max(codec.dim, 1), 1))
    for lo in range(0, nq, step):
        hi = min(nq, lo + step)
        rows, inv = torch.unique(cand[lo:hi], return_inverse=True)
        if vectors is None:
            y = decode(codec, codes[rows], None if side is None else side[rows])
        else:
            y = vectors[rows]
        y = y.to(q.device, torch.float64)
        qc = q[lo:hi]
        s = torch.bmm(y[inv], qc[:, :, None])[:, :, 0]  # (chunk, m): q . y of each candidate
        if metric == "cosine":
            s = s / y.norm(dim=1).clamp_min(1e-30)[inv]
        elif metric == "l2":
            s = ((qc * qc).sum(dim=1, keepdim=True) - 2 * s + (y * y).sum(dim=1)[inv]).clamp_min(0)
        s = s.float()
        order = torch.sort(s, dim=1, descending=largest, stable=True).indices[:, :k]
        out_s[lo:hi] = torch.gather(s, 1, order)
        out_i[lo:hi] = torch.gather(cand[lo:hi].to(q.device), 1, order)
    return out_s, out_i
