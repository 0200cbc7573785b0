"""Triton kernels of `lloyd` (the data-oblivious default): one fused pass per block of
rows on a CUDA device, encode and decode.

Encode reads a row once and writes its packed words and its gain: the seeded
rotation (both rounds), the row's RMS, the threshold counts, the least-squares gain
and the packing, all in registers. Decode is the mirror image. Nothing of size
(N, D) is allocated besides the outputs, and there is one launch per call.

Every step repeats the reference's operations (`rotation.forward`, `lloyd.encode`,
`lloyd.ls_gain`, `packing.pack`, and their inverses) in its order and precision, so
the codes, side values and decoded floats are the reference's bit for bit:

- a row is held as DP = next power of two >= D float32 lanes, the lanes past D +0.0
  (where `_scalar.fixed_sum` pads); a rotation round's source lanes are gathered
  (the first round straight from memory, the second with `tl.gather`) and multiplied
  by sign x 1/sqrt(block), rounded to float32 as torch rounds the Python float (a sign
  flip is exact, so x * s * c == x * (s * c));
- the Hadamard butterflies of stride h pair lane i with lane i ^ h within its block
  (blocks are aligned powers of two), stage by stage, a + c and a - c as in
  `rotation._fwht`; lanes of blocks no larger than h keep their value;
- sums are `fixed_sum`'s pairwise halves (the upper half added to the lower);
- division and square root are IEEE round-to-nearest (`div_rn`, `sqrt_rn`: Triton's
  `/` and `sqrt` on float32 are approximations on NVIDIA GPUs), the float32 root of a
  float32 equals the reference's float64 root rounded once to float32, and the
  kernels are launched with `enable_fp_fusion=False` so that no multiply and add
  are contracted into one rounding;
- a count of thresholds <= z is a branch-free binary search (the table's length is
  2**bits - 1), exact for any sorted table.

Covered: lloyd with bits 1, 2, 4 or 8 (the widths whose words hold a power of two
of symbols), any mode (Gaussian, fit_global, fit_dim), norm row or unit, rotation on
or off, D up to `MAX_DIM`; `gpu_ops.has_fused` says which, the rest takes the
reference. The tests run these kernels against the reference on CUDA when a GPU is
present, and in Triton's interpreter (TRITON_INTERPRET=1, numpy on the CPU)
otherwise: the interpreter checks the logic, not the GPU's rounding, which the
CUDA run checks.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import status

MAX_DIM = 8192  # a row in one block of lanes; wider rows take the reference
LANES_PER_PROGRAM = 2048  # rows per program: this many lanes (R = max(1, 2048 // DP))

# a compiled kernel reads module globals only as constexprs
OK = tl.constexpr(status.OK)
BAD_PADDING = tl.constexpr(status.BAD_PADDING)
NOT_FINITE = tl.constexpr(status.NOT_FINITE)
NOT_UNIT = tl.constexpr(status.NOT_UNIT)
INF = tl.constexpr(float("inf"))


@triton.jit
def _block(n, D, R: tl.constexpr, DP: tl.constexpr):
    """This program's rows (R, 1) int64 and lanes (1, DP), and which are real: (rows,
    lanes, rows < n, lanes < D, both)."""
    rows = tl.program_id(0) * R + tl.arange(0, R)[:, None]
    col = tl.arange(0, DP)[None, :]
    rmask = rows < n
    cmask = col < D
    return rows.to(tl.int64), col, rmask, cmask, rmask & cmask


@triton.jit
def _butterflies(y, col, bsz, R: tl.constexpr, DP: tl.constexpr, LOG_DP: tl.constexpr):
    """`rotation._hadamard_blocks`' butterflies (without the 1/sqrt(b) scaling) on the
    lanes of (R, DP) y: stage h pairs lane i with i ^ h where the lane's block (bsz, its
    size; 0 past D) is larger than h."""
    for s in tl.static_range(LOG_DP):
        h = 1 << s
        partner = tl.gather(y, (col ^ h) + tl.zeros((R, DP), tl.int32), axis=1)
        low = (col & h) == 0
        # lane i (bit h clear) gets a + c, its partner i + h gets a - c: a the low lane
        y = tl.where(bsz > h, tl.where(low, y + partner, partner - y), y)
    return y


@triton.jit
def _fixed_sum(t, R: tl.constexpr, DP: tl.constexpr, LOG_DP: tl.constexpr):
    """`_scalar.fixed_sum` of each row of (R, DP) t (lanes past D already +0.0): halves
    added elementwise, the upper half onto the lower. (R, 1)."""
    w = t
    for s in tl.static_range(LOG_DP):
        # the width inline: a constexpr (a name assigned in the loop would be a tensor)
        v = tl.permute(tl.reshape(w, (R, 2, DP >> (s + 1))), (0, 2, 1))
        a, b = tl.split(v)
        w = a + b
    return tl.reshape(w, (R, 1))


# the row count and the widths vary by call: compiled once for all of them (Triton would
# otherwise compile a variant per value that is 1 or a multiple of 16)
@triton.jit(do_not_specialize=["n", "D", "NW"])
def lloyd_encode(x_ptr, n, D, src0_ptr, coef0_ptr, src1_ptr, coef1_ptr, bsz_ptr, th_ptr, lv_ptr,
                 codes_ptr, NW, gain_ptr, status_ptr, unit_scale, Df, tol_ptr,
                 R: tl.constexpr, DP: tl.constexpr, LOG_DP: tl.constexpr, ROTATE: tl.constexpr,
                 UNIT: tl.constexpr, PER_DIM: tl.constexpr, BITS: tl.constexpr, V: tl.constexpr):
    """Codes (n, NW) int64, gain (n, 1) float32 (row norm) and status (n,) int8 of rows
    x (n, D) float32 C-contiguous. Rotation tables (DP,), padded past D: src0/src1 the
    rounds' source lanes, coef0/coef1 sign x scale (0 past D), bsz the block sizes (0
    past D). th (m,) / lv (m + 1,), or (D, m) / (D, m + 1) with PER_DIM, m = 2**BITS - 1.
    unit_scale, Df: float32 sqrt(D) and D; tol_ptr: `lloyd.UNIT_TOLERANCE`, one float64
    (a scalar argument would be rounded to float32)."""
    rows64, col, rmask, cmask, mask = _block(n, D, R, DP)
    if ROTATE:
        bsz = tl.load(bsz_ptr + col)
        src = tl.load(src0_ptr + col)
        x = tl.load(x_ptr + rows64 * D + src, mask=mask, other=0.0)
    else:
        x = tl.load(x_ptr + rows64 * D + col, mask=mask, other=0.0)
    # NaN or +-Inf anywhere in the row (|x| < inf is false for both)
    bad = tl.max(tl.where(mask & ~(tl.abs(x) < INF), 1, 0), axis=1)
    x = tl.where(mask, x, 0.0)
    if ROTATE:
        y = x * tl.load(coef0_ptr + col)
        y = _butterflies(y, col, bsz, R, DP, LOG_DP)
        y = tl.gather(y, tl.load(src1_ptr + col) + tl.zeros((R, DP), tl.int32), axis=1) * tl.load(coef1_ptr + col)
        y = _butterflies(y, col, bsz, R, DP, LOG_DP)
        y = tl.where(mask, y, 0.0)
    else:
        y = x
    # `lloyd._row_max`: the largest magnitude, 1 for a zero row
    m = tl.reshape(tl.max(tl.abs(y), axis=1), (R, 1))
    m = tl.where(m > 0, m, 1.0)
    q = tl.math.div_rn(y, m)  # x / m, shared by `_rms` and `ls_gain`
    if UNIT:
        y64 = y.to(tl.float64)
        norm = tl.sqrt(_fixed_sum(y64 * y64, R, DP, LOG_DP))
        off = tl.reshape(tl.abs(norm - 1.0) > tl.load(tol_ptr), (R,))
        z = y * unit_scale
    else:
        ms = tl.math.div_rn(_fixed_sum(q * q, R, DP, LOG_DP), Df)
        s = tl.math.sqrt_rn(ms) * m
        s = tl.where(s > 0, s, 1.0)
        z = tl.math.div_rn(y, s)
    M: tl.constexpr = (1 << BITS) - 1
    cnt = tl.zeros((R, DP), tl.int32)
    for k in tl.static_range(BITS):
        step = 1 << (BITS - 1 - k)
        probe_at = cnt + (step - 1)
        if PER_DIM:
            probe_at = probe_at + col * M
        probe = tl.load(th_ptr + probe_at, mask=cmask, other=0.0)
        cnt = tl.where(z >= probe, cnt + step, cnt)
    cnt = tl.where(cmask, cnt, 0)
    if not UNIT:
        at = cnt + col * (M + 1) if PER_DIM else cnt
        c = tl.where(cmask, tl.load(lv_ptr + at, mask=cmask, other=0.0), 0.0)
        den = _fixed_sum(c * c, R, DP, LOG_DP)
        num = _fixed_sum(q * c, R, DP, LOG_DP)
        g = tl.where(den > 0, tl.math.div_rn(num, tl.where(den > 0, den, 1.0)), 0.0) * m
        tl.store(gain_ptr + rows64, g, mask=rmask)
    # `packing.pack`: symbol j in word j // V at bit (j % V) * BITS
    sym = cnt.to(tl.int64)
    if DP >= V:
        sh = (tl.arange(0, V) * BITS).to(tl.int64)
        words = tl.sum(tl.reshape(sym, (R, DP // V, V)) << sh[None, None, :], axis=2)
        wcol = tl.arange(0, DP // V)[None, :]
    else:
        words = tl.reshape(tl.sum(sym << (col * BITS).to(tl.int64), axis=1), (R, 1))
        wcol = tl.arange(0, 1)[None, :]
    tl.store(codes_ptr + rows64 * NW + wcol, words, mask=rmask & (wcol < NW))
    st = tl.where(bad > 0, NOT_FINITE, OK)
    if UNIT:
        st = tl.where((bad == 0) & off, NOT_UNIT, st)
    tl.store(status_ptr + tl.reshape(rows64, (R,)), st.to(tl.int8), mask=tl.reshape(rmask, (R,)))


@triton.jit(do_not_specialize=["n", "D", "NW"])
def lloyd_decode(codes_ptr, n, D, NW, side_ptr, inv0_ptr, sg0_ptr, inv1_ptr, sg1_ptr, scale_ptr, bsz_ptr, lv_ptr,
                 out_ptr, status_ptr, unit_scale,
                 R: tl.constexpr, DP: tl.constexpr, LOG_DP: tl.constexpr, NWP: tl.constexpr, ROTATE: tl.constexpr,
                 UNIT: tl.constexpr, PER_DIM: tl.constexpr, BITS: tl.constexpr, V: tl.constexpr):
    """out (n, D) float32 and status (n,) int8 (BAD_PADDING where an unused bit of a word is
    set, else NOT_FINITE where the decoded row is not finite) of codes (n, NW) int64
    and gains side (n, 1) (row norm). Rotation tables (DP,), padded past D: inv0/inv1
    the rounds' inverse permutations, sg0/sg1 their signs (0 past D), scale each lane's
    1/sqrt(block) (1 for a block of 1), bsz the block sizes (0 past D)."""
    rows64, col, rmask, cmask, mask = _block(n, D, R, DP)
    # every word's unused bits (`packing.padding_is_clean`)
    wcol = tl.arange(0, NWP)[None, :]
    wmask = rmask & (wcol < NW)
    words = tl.load(codes_ptr + rows64 * NW + wcol, mask=wmask, other=0)
    used = tl.minimum(D - wcol * V, V) * BITS
    partial = wmask & (used < 64)
    rest = words >> tl.where(partial, used, 0).to(tl.int64)
    bad_pad = tl.max(tl.where(partial & (rest != 0), 1, 0), axis=1)
    # `packing.unpack`
    w = tl.load(codes_ptr + rows64 * NW + col // V, mask=mask, other=0)
    sym = ((w >> ((col % V) * BITS).to(tl.int64)) & ((1 << BITS) - 1)).to(tl.int32)
    M: tl.constexpr = (1 << BITS) - 1
    at = sym + col * (M + 1) if PER_DIM else sym
    c = tl.load(lv_ptr + at, mask=mask, other=0.0)
    if UNIT:
        y = c * unit_scale
    else:
        y = c * tl.load(side_ptr + rows64, mask=rmask, other=0.0)
    y = tl.where(mask, y, 0.0)
    if ROTATE:
        bsz = tl.load(bsz_ptr + col)
        scale = tl.load(scale_ptr + col)
        # `rotation.inverse`: the second round first, each `_hadamard_blocks(x)[:, inv] * signs`
        y = _butterflies(y * scale, col, bsz, R, DP, LOG_DP)
        y = tl.gather(y, tl.load(inv1_ptr + col) + tl.zeros((R, DP), tl.int32), axis=1) * tl.load(sg1_ptr + col)
        y = _butterflies(y * scale, col, bsz, R, DP, LOG_DP)
        y = tl.gather(y, tl.load(inv0_ptr + col) + tl.zeros((R, DP), tl.int32), axis=1) * tl.load(sg0_ptr + col)
    tl.store(out_ptr + rows64 * D + col, y, mask=mask)
    nonfinite = tl.max(tl.where(mask & ~(tl.abs(y) < INF), 1, 0), axis=1)
    st = tl.where(bad_pad > 0, BAD_PADDING, tl.where(nonfinite > 0, NOT_FINITE, OK))
    tl.store(status_ptr + tl.reshape(rows64, (R,)), st.to(tl.int8), mask=tl.reshape(rmask, (R,)))
