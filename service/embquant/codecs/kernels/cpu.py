"""Compiled CPU kernels (numba): one fused pass per block of rows, on all cores.

Every kernel repeats the reference's arithmetic operation for operation, in the
same order and the same precision, so its results are bit-identical to the torch
code in the scheme modules (the tests compare them for every scheme, bit width and
dimension):

- float32 throughout where the reference is float32; a scalar constant the
  reference multiplies by (a Python float) is rounded to float32 first, as torch does;
- sums are `_scalar.fixed_sum`'s pairwise order: the row padded with +0.0 to a
  power of two, then halves added elementwise;
- the Hadamard butterflies are `rotation._fwht`'s, stage by stage (several stages
  per pass over the block, each output still the same adds of the same operands);
- symbols are counts of thresholds <= z (`torch.bucketize(right=True)`): a
  branch-free count over a short sorted table, a search in buckets of float32 bit
  patterns over a long one (exact: the patterns order like the floats).

Layout: a block of RB = 16 rows is held transposed, (D, 16), so every step of a
row's computation (a butterfly, a permutation, a per-row sum, a threshold count)
is one operation on a 16-lane vector: row j of the block is lanes [16 j, 16 j + 16)
of a flat array. The vectors are explicit (`F32x16` and friends below: LLVM vector
types, one zmm register or two ymm), not left to LLVM's loop vectoriser, which
gives up on 16-trip loops (it unrolls past 16, or cannot prove the buffers do not
alias). Rows are independent, so blocks are the unit of parallel work and each
task owns its scratch: nothing of size (N, D) is allocated besides the outputs.
No fastmath: it would let LLVM reorder sums and contract multiply-adds, which
changes bits; the vector operations are plain IEEE fadd/fsub/fmul/fdiv/sqrt and
ordered compares, lane by lane the scalar code's operations.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic, models, register_model

# the status codes a kernel reports per row (the caller turns them into errors)
from .status import BAD_PADDING, BAD_SYMBOL, EXTRA_BITS, NOT_FINITE, NOT_UNIT, OK  # noqa: F401

RB = 16  # rows per block: the lanes of every vector step
TASK_ROWS = 512  # rows per parallel task (scratch allocated once per task)
LOOKUP_COUNT_MAX = 15  # up to this many thresholds, a branch-free binary search in one vector
LINEAR_COUNT_MAX = 31  # up to this many, count by comparing with all; beyond, a bucketed search
BUCKET_SHIFT = 16  # the bucketed search's buckets: 2**16 consecutive float32 bit patterns each
BUCKET_COUNT = 1 << (32 - BUCKET_SHIFT)


# Helpers are numba functions of their own, not inline="always": numba-level inlining
# re-types the helper at every call site and made a cold compile of the kernels 8x
# slower; LLVM still inlines them once linked (measured: the same speed).
_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


# ---------------------------------------------------------------------------
# 16-lane vectors: numba types backed by LLVM <16 x float>, <16 x i32>, <16 x i64>,
# and intrinsics that load, store and combine them. Row j of a transposed block is
# `vload(buf, j)`. Masks (compare results) are int32 lanes, -1 (true) or 0.

LANES = 16
assert RB == LANES


class _Vec(types.Type):
    def __init__(self, kind):
        self.kind = kind
        super().__init__(name=f"{kind}x{LANES}")


F32x16 = _Vec("f32")
F64x16 = _Vec("f64")  # transform's float64 projections (two zmm registers)
I32x16 = _Vec("i32")
I64x16 = _Vec("i64")
_ELEM = {"f32": ir.FloatType(), "f64": ir.DoubleType(), "i32": ir.IntType(32), "i64": ir.IntType(64)}
_SCALAR = {"f32": types.float32, "f64": types.float64, "i32": types.int32, "i64": types.int64}
_FLOAT = ("f32", "f64")
_VEC_OF = {types.float32: F32x16, types.float64: F64x16, types.int32: I32x16, types.int64: I64x16}
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


@register_model(_Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_ELEM[fe_type.kind], LANES))


def _lanes_of(kind):
    return ir.VectorType(_ELEM[kind], LANES)


def _as_i64(context, builder, val, ty):
    return context.cast(builder, val, ty, types.int64)


def _row_ptr(context, builder, arrty, arr, row, rowty):
    """Pointer to lanes [16 row, 16 row + 16) of a flat array, as a vector pointer."""
    data = cgutils.create_struct_proxy(arrty)(context, builder, value=arr).data
    off = builder.mul(_as_i64(context, builder, row, rowty), ir.Constant(_I64, LANES))
    return builder.bitcast(builder.gep(data, [off]), ir.VectorType(data.type.pointee, LANES).as_pointer())


def _broadcast(builder, val, kind):
    lt = _lanes_of(kind)
    v = builder.insert_element(ir.Constant(lt, ir.Undefined), val, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(lt, ir.Undefined), ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _flat(arr):
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype in _VEC_OF


@intrinsic
def vload(typingctx, arr, row):
    """Row `row` of a transposed block: arr[16 row : 16 row + 16] (float32, int32 or int64)."""
    if not _flat(arr):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_row_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1]), align=4)

    return _VEC_OF[arr.dtype](arr, row), codegen


@intrinsic
def vstore(typingctx, arr, row, v):
    """arr[16 row : 16 row + 16] = v."""
    if not (_flat(arr) and _VEC_OF[arr.dtype] == v):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _row_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1]), align=4)
        return context.get_dummy_value()

    return types.void(arr, row, v), codegen


def _splat(kind):
    vt = {"f32": F32x16, "f64": F64x16, "i32": I32x16, "i64": I64x16}[kind]

    @intrinsic
    def splat(typingctx, x):
        if not isinstance(x, (types.Float, types.Integer, types.Boolean)):
            return None

        def codegen(context, builder, sig, args):
            return _broadcast(builder, context.cast(builder, args[0], sig.args[0], _SCALAR[kind]), kind)

        return vt(x), codegen

    return splat


fsplat = _splat("f32")  # all lanes x (cast to float32 like np.float32(x))
dsplat = _splat("f64")
isplat = _splat("i32")
lsplat = _splat("i64")


def _binop(fop, iop):
    @intrinsic
    def op(typingctx, a, b):
        if not (isinstance(a, _Vec) and a == b and (fop if a.kind in _FLOAT else iop)):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, fop if sig.args[0].kind in _FLOAT else iop)(args[0], args[1])

        return a(a, b), codegen

    return op


vadd = _binop("fadd", "add")
vsub = _binop("fsub", "sub")
vmul = _binop("fmul", "mul")
vdiv = _binop("fdiv", None)
vand = _binop(None, "and_")
vor = _binop(None, "or_")
vxor = _binop(None, "xor")


def _compare(op):
    @intrinsic
    def cmp(typingctx, a, b):
        if not (isinstance(a, _Vec) and a == b):
            return None

        def codegen(context, builder, sig, args):
            if sig.args[0].kind in _FLOAT:
                c = builder.fcmp_ordered(op, args[0], args[1])  # false where either is NaN
            else:
                c = builder.icmp_signed(op, args[0], args[1])
            return builder.sext(c, _lanes_of("i32"))

        return I32x16(a, b), codegen

    return cmp


vge = _compare(">=")  # mask of a >= b
vgt = _compare(">")
vne = _compare("!=")


@intrinsic
def vsel(typingctx, mask, a, b):
    """a where mask is nonzero, else b (lane by lane)."""
    if not (mask == I32x16 and isinstance(a, _Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.select(builder.icmp_signed("!=", args[0], ir.Constant(args[0].type, None)), args[1], args[2])

    return a(mask, a, b), codegen


def _unary_float(name):
    @intrinsic
    def op(typingctx, a):
        if a not in (F32x16, F64x16):
            return None

        def codegen(context, builder, sig, args):
            lt = args[0].type
            suffix = "f32" if sig.args[0] == F32x16 else "f64"
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lt, [lt]),
                                                f"llvm.{name}.v{LANES}{suffix}")
            return builder.call(fn, [args[0]])

        return a(a), codegen

    return op


vabs = _unary_float("fabs")
vsqrt = _unary_float("sqrt")  # correctly rounded, like np.sqrt
vfloor = _unary_float("floor")  # math.floor, lane by lane
vrint = _unary_float("rint")  # np.rint: to nearest, halves to even (the default rounding mode)


def _convert(src, dst, how):
    """An intrinsic that converts src lanes to dst lanes with one LLVM instruction."""

    @intrinsic
    def conv(typingctx, v):
        if v != src:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, how)(args[0], _lanes_of(dst.kind))

        return dst(v), codegen

    return conv


vwiden = _convert(I32x16, I64x16, "zext")  # int32 lanes (non-negative) as int64 lanes
vnarrow = _convert(I64x16, I32x16, "trunc")  # int64 lanes truncated to int32 lanes
vfext = _convert(F32x16, F64x16, "fpext")  # float32 lanes as float64 lanes (exact)
vfround = _convert(F64x16, F32x16, "fptrunc")  # float64 lanes to float32, to nearest (np.float32 of a float64)
vbits = _convert(F32x16, I32x16, "bitcast")  # float32 lanes' bit patterns (``x.view(np.int32)``)
vfrombits = _convert(I32x16, F32x16, "bitcast")  # int32 bit patterns as float32 lanes
vbits64 = _convert(F64x16, I64x16, "bitcast")  # float64 lanes' bit patterns
vfrombits64 = _convert(I64x16, F64x16, "bitcast")
vitod = _convert(I32x16, F64x16, "sitofp")  # int32 lanes as float64 (exact)
vitof = _convert(I32x16, F32x16, "sitofp")  # int32 lanes as float32 (exact below 2**24)
vdtoi = _convert(F64x16, I32x16, "fptosi")  # float64 lanes (integral, in range) as int32
vftoi = _convert(F32x16, I32x16, "fptosi")  # float32 lanes (integral, in range) as int32


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: the hardware's fused multiply-add). Only
    `transform_cpu`'s float64 projection uses it, where the reference's sum order is
    BLAS's own; the float32 kernels keep the reference's separate multiply and add."""
    if not (isinstance(a, _Vec) and a.kind in _FLOAT and a == b and a == c):
        return None

    def codegen(context, builder, sig, args):
        lt = args[0].type
        suffix = "f32" if sig.args[0].kind == "f32" else "f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lt, [lt, lt, lt]), f"llvm.fma.v{LANES}{suffix}")
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


@intrinsic
def popcount64(typingctx, x):
    """The set bits of an int64 (llvm.ctpop: one POPCNT instruction on x86-64 CPUs that
    have it, which numba's host target enables)."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, [_I64]), "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return types.int64(x), codegen


@intrinsic
def vget(typingctx, v, r):
    """Lane r of v."""
    if not isinstance(v, _Vec):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], args[1])

    return _SCALAR[v.kind](v, r), codegen


@intrinsic
def vset(typingctx, v, r, x):
    """v with lane r replaced by x."""
    if not isinstance(v, _Vec):
        return None

    def codegen(context, builder, sig, args):
        val = context.cast(builder, args[2], sig.args[2], _SCALAR[sig.args[0].kind])
        return builder.insert_element(args[0], val, args[1])

    return v(v, r, x), codegen


@intrinsic
def vany(typingctx, mask):
    """Whether any lane of an int32 mask is nonzero."""
    if mask != I32x16:
        return None

    def codegen(context, builder, sig, args):
        nz = builder.icmp_signed("!=", args[0], ir.Constant(args[0].type, None))
        bits = builder.bitcast(nz, ir.IntType(LANES))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(LANES), 0))

    return types.boolean(mask), codegen


def _shift(name):
    @intrinsic
    def op(typingctx, v, s):
        if not (isinstance(v, _Vec) and v.kind not in _FLOAT and isinstance(s, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            kind = sig.args[0].kind
            sv = context.cast(builder, args[1], sig.args[1], _SCALAR[kind])
            return getattr(builder, name)(args[0], _broadcast(builder, sv, kind))

        return v(v, s), codegen

    return op


vshl = _shift("shl")
vshr = _shift("lshr")  # logical: zeros shifted in
vsra = _shift("ashr")  # arithmetic: copies of the sign bit shifted in (numba's >> on int32)


@intrinsic
def vshrv(typingctx, v, s):
    """v >> s lane by lane, a shift per lane (logical; every lane of s in [0, 32))."""
    if not (v == I32x16 and s == I32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.lshr(args[0], args[1])

    return v(v, s), codegen


@intrinsic
def vgather(typingctx, arr, idx):
    """arr[idx] lane by lane: a 1-D float32 or int32 array, int32 indices (in bounds)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype in (types.float32, types.int32)
            and idx == I32x16):
        return None
    kind = "f32" if arr.dtype == types.float32 else "i32"

    def codegen(context, builder, sig, args):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
        out = ir.Constant(_lanes_of(kind), ir.Undefined)
        for i in range(LANES):
            k = builder.sext(builder.extract_element(args[1], ir.Constant(_I32, i)), _I64)
            out = builder.insert_element(out, builder.load(builder.gep(data, [k])), ir.Constant(_I32, i))
        return out

    return _VEC_OF[arr.dtype](arr, idx), codegen


@intrinsic
def vgather_pairs(typingctx, arr, idx):
    """Pairs of an int32 array read as one int64 each, lane by lane: the int64 at element
    2 idx (an int64 array's memory viewed as int32, so the same on any byte order);
    int32 indices of pairs, in bounds. One 64-bit load per lane where two dependent
    gathers would take two."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int32 and idx == I32x16):
        return None

    def codegen(context, builder, sig, args):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
        p64 = builder.bitcast(data, _I64.as_pointer())
        out = ir.Constant(_lanes_of("i64"), ir.Undefined)
        for i in range(LANES):
            k = builder.sext(builder.extract_element(args[1], ir.Constant(_I32, i)), _I64)
            out = builder.insert_element(out, builder.load(builder.gep(p64, [k]), align=4), ir.Constant(_I32, i))
        return out

    return I64x16(arr, idx), codegen


def _isa(context):
    """The vector extension the kernels are compiled for (numba's target machine
    features: the host's, or NUMBA_CPU_FEATURES; part of numba's cache key)."""
    feats = context.codegen().magic_tuple()[2]
    if "+avx512f" in feats:
        return "avx512"
    if "+avx2" in feats:
        return "avx2"
    return "generic"


@intrinsic
def has_avx512(typingctx):
    """True (a constant LLVM folds) when the kernels are compiled for AVX-512: 32 vector
    registers of 16 float32 or 8 float64 lanes, against AVX2's 16 of 8 or 4. Kernels
    that keep several 16-lane accumulators live size their register blocking by it."""

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(1), 1 if _isa(context) == "avx512" else 0)

    return types.boolean(), codegen


@intrinsic
def vlookup(typingctx, tab, idx):
    """tab[idx] lane by lane: a 16-entry table held in a vector (float32, or int32 moved
    as its bits), int32 indices in [0, 16). One permute instruction (vpermps) with
    AVX-512, four with AVX2, else lane by lane."""
    if not (tab in (F32x16, I32x16) and idx == I32x16):
        return None

    def codegen(context, builder, sig, args):
        if sig.args[0] == I32x16:
            out = _permute(context, builder, builder.bitcast(args[0], _lanes_of("f32")), args[1])
            return builder.bitcast(out, _lanes_of("i32"))
        return _permute(context, builder, *args)

    return tab(tab, idx), codegen


def _permute(context, builder, tabv, idxv):
    """`vlookup`'s instructions on a float32 table."""
    vf, vi = tabv.type, idxv.type
    isa = _isa(context)
    if isa == "avx512":
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vi]), "llvm.x86.avx512.permvar.sf.512")
        return builder.call(fn, [tabv, idxv])
    if isa == "avx2":
        f8, i8 = ir.VectorType(ir.FloatType(), 8), ir.VectorType(_I32, 8)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f8, [f8, i8]), "llvm.x86.avx2.permps")

        def half(v, lo):
            return builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                                          ir.Constant(ir.VectorType(_I32, 8), list(range(lo, lo + 8))))

        tlo, thi = half(tabv, 0), half(tabv, 8)
        parts = []
        for lo in (0, 8):
            ix = half(idxv, lo)  # permps reads the low 3 bits; bit 3 picks the table half
            upper = builder.icmp_signed(">=", ix, ir.Constant(i8, [8] * 8))
            parts.append(builder.select(upper, builder.call(fn, [thi, ix]), builder.call(fn, [tlo, ix])))
        return builder.shuffle_vector(parts[0], parts[1], ir.Constant(ir.VectorType(_I32, LANES), list(range(LANES))))
    out = ir.Constant(vf, ir.Undefined)
    for i in range(LANES):
        k = builder.extract_element(idxv, ir.Constant(_I32, i))
        out = builder.insert_element(out, builder.extract_element(tabv, k), ir.Constant(_I32, i))
    return out


def _transpose_tile(builder, rows):
    """The 16 x 16 transpose of 16 row vectors (four rounds of two-input shuffles:
    round k swaps bit k of the row index with bit k of the lane index)."""
    k = 1
    while k < LANES:
        new = list(rows)
        for a in range(LANES):
            if a & k:
                continue
            b = a | k
            ma = [(LANES + (e ^ k)) if e & k else e for e in range(LANES)]
            mb = [(LANES + e) if e & k else (e ^ k) for e in range(LANES)]
            new[a] = builder.shuffle_vector(rows[a], rows[b], ir.Constant(ir.VectorType(_I32, LANES), ma))
            new[b] = builder.shuffle_vector(rows[a], rows[b], ir.Constant(ir.VectorType(_I32, LANES), mb))
        rows = new
        k *= 2
    return rows


def _tile_ptrs(context, builder, mat_ty, mat, i0, i0ty, j0, j0ty, flat_ty, flat):
    """(pointers to mat[i0 + r, j0 : j0 + 16] for r < 16, pointers to rows j0 + e of flat for e < 16)."""
    vt = ir.VectorType(ir.FloatType(), LANES)
    ms = cgutils.create_struct_proxy(mat_ty)(context, builder, value=mat)
    ncol = builder.extract_value(ms.shape, 1)
    i0v = _as_i64(context, builder, i0, i0ty)
    j0v = _as_i64(context, builder, j0, j0ty)
    mp = []
    for r in range(LANES):
        off = builder.add(builder.mul(builder.add(i0v, ir.Constant(_I64, r)), ncol), j0v)
        mp.append(builder.bitcast(builder.gep(ms.data, [off]), vt.as_pointer()))
    fdata = cgutils.create_struct_proxy(flat_ty)(context, builder, value=flat).data
    fp = []
    for e in range(LANES):
        off = builder.mul(builder.add(j0v, ir.Constant(_I64, e)), ir.Constant(_I64, LANES))
        fp.append(builder.bitcast(builder.gep(fdata, [off]), vt.as_pointer()))
    return mp, fp


def _is_mat(x):
    return isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" and x.dtype == types.float32


def _is_flat32(x):
    return isinstance(x, types.Array) and x.ndim == 1 and x.dtype == types.float32


@intrinsic
def transpose_in(typingctx, x, i0, j0, T):
    """Rows j0..j0+16 of the transposed block T <- x[i0 : i0 + 16, j0 : j0 + 16] (x: 2-D C-contiguous)."""
    if not (_is_mat(x) and _is_flat32(T)):
        return None

    def codegen(context, builder, sig, args):
        mp, fp = _tile_ptrs(context, builder, sig.args[0], args[0], args[1], sig.args[1], args[2], sig.args[2],
                            sig.args[3], args[3])
        rows = _transpose_tile(builder, [builder.load(p, align=4) for p in mp])
        for p, v in zip(fp, rows):
            builder.store(v, p, align=4)
        return context.get_dummy_value()

    return types.void(x, i0, j0, T), codegen


@intrinsic
def transpose_out(typingctx, T, out, i0, j0):
    """out[i0 : i0 + 16, j0 : j0 + 16] <- rows j0..j0+16 of the transposed block T, transposed back."""
    if not (_is_mat(out) and _is_flat32(T)):
        return None

    def codegen(context, builder, sig, args):
        mp, fp = _tile_ptrs(context, builder, sig.args[1], args[1], args[2], sig.args[2], args[3], sig.args[3],
                            sig.args[0], args[0])
        rows = _transpose_tile(builder, [builder.load(p, align=4) for p in fp])
        for p, v in zip(mp, rows):
            builder.store(v, p, align=4)
        return context.get_dummy_value()

    return types.void(T, out, i0, j0), codegen


# ---------------------------------------------------------------------------
# building blocks on a transposed block: a flat array of D rows of 16 lanes. Lanes
# past the live rows (the last block of a batch) hold stale finite values and are
# never stored.


@njit(**_opts)
def _pow2_at_least(n):
    w = 1
    while w < n:
        w *= 2
    return w


@njit(**_opts)
def _halve_sum_v(buf, d):
    """Per lane, `_scalar.fixed_sum` of buf's first d rows (a float32 block), in place: rows
    d..pow2(d) of buf must hold +0.0 (the halving never writes them, so they stay so)."""
    w = _pow2_at_least(d)
    while w > 1:
        h = w // 2
        for j in range(h):
            vstore(buf, j, vadd(vload(buf, j), vload(buf, j + h)))
        w = h
    return vload(buf, 0)


@njit(**_opts)
def _halve_sum64_T(buf, d, rb, out):
    """out[r] = `_halve_sum_v` of lane r of a float64 block (flat loops: long enough for
    LLVM to vectorise them)."""
    w = _pow2_at_least(d)
    while w > 1:
        h = w // 2
        lo = buf[: h * rb]
        hi = buf[h * rb : w * rb]
        for k in range(h * rb):
            lo[k] = lo[k] + hi[k]
        w = h
    for r in range(rb):
        out[r] = buf[r]


@njit(**_opts)
def _fixed_sum_T(vals, d, buf, rb, out):
    """`_halve_sum64_T` of a copy of vals' first d rows in buf (pow2(d) rows, zero-padded here)."""
    w = _pow2_at_least(d)
    src = vals[: d * rb]
    dst = buf[: d * rb]
    for k in range(d * rb):
        dst[k] = src[k]
    pad = buf[d * rb : w * rb]
    for k in range(pad.shape[0]):
        pad[k] = 0.0
    _halve_sum64_T(buf, d, rb, out)


@njit(**_opts)
def _b2(a, b):
    return vadd(a, b), vsub(a, b)


@njit(**_opts)
def _bfly4(a0, a1, a2, a3):
    """Two butterfly stages (strides 1, 2) on four rows: `rotation._fwht`'s adds."""
    b0, b1 = _b2(a0, a1)
    b2, b3 = _b2(a2, a3)
    c0, c2 = _b2(b0, b2)
    c1, c3 = _b2(b1, b3)
    return c0, c1, c2, c3


@njit(**_opts)
def _bfly8(a0, a1, a2, a3, a4, a5, a6, a7):
    """Three butterfly stages (strides 1, 2, 4) on eight rows."""
    c0, c1, c2, c3 = _bfly4(a0, a1, a2, a3)
    c4, c5, c6, c7 = _bfly4(a4, a5, a6, a7)
    d0, d4 = _b2(c0, c4)
    d1, d5 = _b2(c1, c5)
    d2, d6 = _b2(c2, c6)
    d3, d7 = _b2(c3, c7)
    return d0, d1, d2, d3, d4, d5, d6, d7


@njit(**_opts)
def _src(S, idx, signs, rnd, j, by_src, sc):
    """Row j of a round's input: S[idx[rnd, j]] times its sign and the block's 1/sqrt(b)
    in one multiply (a sign flip is exact, so x * s * c == x * (s * c)); rnd < 0: S[j] * c."""
    if rnd < 0:
        return vmul(vload(S, j), fsplat(sc))
    p = idx[rnd, j]
    s = signs[rnd, p] if by_src else signs[rnd, j]
    return vmul(vload(S, p), fsplat(s * sc))


@njit(**_opts)
def _gather_fwht(S, D, idx, signs, rnd, by_src, blocks, scales):
    """D <- `rotation._hadamard_blocks` of the gathered rows `_src(S, ...)`: the first
    pass gathers, scales and does up to three butterfly stages, later passes three
    (or two, or one) stages each, in place on D. S and D are distinct."""
    lo = 0
    for bi in range(blocks.shape[0]):
        b = blocks[bi]
        sc = scales[bi] if b > 1 else np.float32(1.0)  # a block of 1 is not scaled
        if b >= 8:
            for g in range(lo, lo + b, 8):
                d0, d1, d2, d3, d4, d5, d6, d7 = _bfly8(
                    _src(S, idx, signs, rnd, g, by_src, sc), _src(S, idx, signs, rnd, g + 1, by_src, sc),
                    _src(S, idx, signs, rnd, g + 2, by_src, sc), _src(S, idx, signs, rnd, g + 3, by_src, sc),
                    _src(S, idx, signs, rnd, g + 4, by_src, sc), _src(S, idx, signs, rnd, g + 5, by_src, sc),
                    _src(S, idx, signs, rnd, g + 6, by_src, sc), _src(S, idx, signs, rnd, g + 7, by_src, sc),
                )
                vstore(D, g, d0)
                vstore(D, g + 1, d1)
                vstore(D, g + 2, d2)
                vstore(D, g + 3, d3)
                vstore(D, g + 4, d4)
                vstore(D, g + 5, d5)
                vstore(D, g + 6, d6)
                vstore(D, g + 7, d7)
            h = 8
        elif b == 4:
            c0, c1, c2, c3 = _bfly4(
                _src(S, idx, signs, rnd, lo, by_src, sc), _src(S, idx, signs, rnd, lo + 1, by_src, sc),
                _src(S, idx, signs, rnd, lo + 2, by_src, sc), _src(S, idx, signs, rnd, lo + 3, by_src, sc),
            )
            vstore(D, lo, c0)
            vstore(D, lo + 1, c1)
            vstore(D, lo + 2, c2)
            vstore(D, lo + 3, c3)
            h = 4
        elif b == 2:
            c0, c1 = _b2(_src(S, idx, signs, rnd, lo, by_src, sc), _src(S, idx, signs, rnd, lo + 1, by_src, sc))
            vstore(D, lo, c0)
            vstore(D, lo + 1, c1)
            h = 2
        else:
            vstore(D, lo, _src(S, idx, signs, rnd, lo, by_src, sc))
            h = 1
        while h < b:
            if 8 * h <= b:
                for g in range(lo, lo + b, 8 * h):
                    for j in range(g, g + h):
                        d0, d1, d2, d3, d4, d5, d6, d7 = _bfly8(
                            vload(D, j), vload(D, j + h), vload(D, j + 2 * h), vload(D, j + 3 * h),
                            vload(D, j + 4 * h), vload(D, j + 5 * h), vload(D, j + 6 * h), vload(D, j + 7 * h),
                        )
                        vstore(D, j, d0)
                        vstore(D, j + h, d1)
                        vstore(D, j + 2 * h, d2)
                        vstore(D, j + 3 * h, d3)
                        vstore(D, j + 4 * h, d4)
                        vstore(D, j + 5 * h, d5)
                        vstore(D, j + 6 * h, d6)
                        vstore(D, j + 7 * h, d7)
                h *= 8
            elif 4 * h <= b:
                for g in range(lo, lo + b, 4 * h):
                    for j in range(g, g + h):
                        c0, c1, c2, c3 = _bfly4(vload(D, j), vload(D, j + h), vload(D, j + 2 * h), vload(D, j + 3 * h))
                        vstore(D, j, c0)
                        vstore(D, j + h, c1)
                        vstore(D, j + 2 * h, c2)
                        vstore(D, j + 3 * h, c3)
                h *= 4
            else:
                for j in range(lo, lo + h):
                    c0, c1 = _b2(vload(D, j), vload(D, j + h))
                    vstore(D, j, c0)
                    vstore(D, j + h, c1)
                h *= 2
        lo += b


@njit(**_opts)
def _transpose_rows(x, i0, nr, A, rb):
    """A <- rows i0..i0+nr of x, transposed: whole 16 x 16 tiles by shuffles, the rest lane by lane."""
    d = x.shape[1]
    j0 = 0
    if nr == rb:
        while j0 + rb <= d:
            transpose_in(x, i0, j0, A)
            j0 += rb
    if j0 < d:
        for r in range(nr):
            row = x[i0 + r]
            for j in range(j0, d):
                A[j * rb + r] = row[j]


@njit(**_opts)
def _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb):
    """A <- rows i0..i0+nr of x, transposed, rotated (rotation.forward) when asked; B: scratch."""
    if not rotate:
        _transpose_rows(x, i0, nr, A, rb)
        return
    rounds = signs.shape[0]
    # the rounds alternate between A and B and must end in A
    _transpose_rows(x, i0, nr, A if rounds % 2 == 0 else B, rb)
    for rnd in range(rounds):
        if (rounds - rnd) % 2 == 0:
            _gather_fwht(A, B, perm, signs, rnd, True, blocks, scales)
        else:
            _gather_fwht(B, A, perm, signs, rnd, True, blocks, scales)


@njit(**_opts)
def _unrotate_T(A, B, signs, inv, blocks, scales, rb):
    """R^T A (rotation.inverse: per round from the last, H, then the inverse permutation
    and the signs); returns the buffer holding it, A or B (the other is overwritten).
    Each round's gather and signs are folded into the next round's first Hadamard pass."""
    d = A.shape[0] // rb
    rounds = signs.shape[0]
    src, dst = A, B
    _gather_fwht(src, dst, inv, signs, -1, False, blocks, scales)
    for rnd in range(rounds - 1, 0, -1):
        src, dst = dst, src
        _gather_fwht(src, dst, inv, signs, rnd, False, blocks, scales)
    src, dst = dst, src
    for j in range(d):
        vstore(dst, j, vmul(vload(src, inv[0, j]), fsplat(signs[0, j])))
    return dst


@njit(**_opts)
def _finite_rows(xbits, i0, nr, status):
    """NaN/Inf check on the float32 bit patterns (an integer OR, which vectorises)."""
    for r in range(nr):
        row = xbits[i0 + r]
        bad = np.int32(0)
        for j in range(row.shape[0]):
            bad |= np.int32((row[j] & 0x7F800000) == 0x7F800000)
        status[i0 + r] = NOT_FINITE if bad else OK


@njit(**_opts)
def _absmax_v(A, d):
    """Largest magnitude per lane (a NaN never replaces the running maximum)."""
    m = fsplat(0.0)
    for j in range(d):
        v = vabs(vload(A, j))
        m = vsel(vgt(v, m), v, m)
    return m


@njit(**_opts)
def _absmax_T(A, d, rb, out):
    vstore(out, 0, _absmax_v(A, d))


@njit(**_opts)
def _pad16(tab, fill_last):
    """A (T, n) table as T rows of 16 lanes (flat), n <= 16: thresholds padded with NaN
    (no value is >= NaN), levels padded with the last level (a symbol past the table
    decodes as the last level)."""
    rows, n = tab.shape
    out = np.empty(rows * LANES, np.float32)
    for t in range(rows):
        for k in range(LANES):
            out[t * LANES + k] = tab[t, min(k, n - 1)] if (k < n or fill_last) else np.nan
    return out


@njit(**_opts)
def _steps_for(m):
    """Halvings of a branch-free binary search over m sorted entries (m + 1 <= 2**steps)."""
    steps = 0
    while (1 << steps) < m + 1:
        steps += 1
    return steps


@njit(**_opts)
def _search16_v(z, T, steps):
    """Per lane: the number of entries of the sorted 16-lane table T (NaN-padded) that are
    <= z, by binary search with lookups: the compares z >= T[k] are true exactly for the
    entries counted, so each halving keeps the count's lower bound exact. Never counts
    for a NaN z."""
    cnt = isplat(0)
    half = (1 << steps) >> 1
    while half >= 1:
        probe = vlookup(T, vadd(cnt, isplat(half - 1)))
        cnt = vsel(vge(z, probe), vadd(cnt, isplat(half)), cnt)
        half >>= 1
    return cnt


@njit(**_opts)
def _count_v(z, th, t, m):
    """Per lane: the number of th[t, :m] entries <= z (sorted; never counts for a NaN z)."""
    cnt = isplat(0)
    for k in range(m):
        cnt = vsub(cnt, vge(z, fsplat(th[t, k])))
    return cnt


@njit(**_opts)
def _count_levels_v(z, th, lv, t, m):
    """(`_count_v`, lv[t, count]): a sorted table's compares are true for a prefix, so
    the last true one selects the level."""
    cnt = isplat(0)
    c = fsplat(lv[t, 0])
    for k in range(m):
        ge = vge(z, fsplat(th[t, k]))
        cnt = vsub(cnt, ge)
        c = vsel(ge, fsplat(lv[t, k + 1]), c)
    return cnt, c


@njit(**_opts)
def _search_T(Z, d, th, S, rb):
    """S <- counts of thresholds <= Z by a branch-free binary search over th (T, m), sorted,
    T = 1 or D: 16 lanes at a time, each probe a gather from the row."""
    per_dim = th.shape[0] > 1
    m = th.shape[1]
    top = (1 << _steps_for(m)) >> 1
    last = isplat(m)
    one = isplat(1)
    zero = isplat(0)
    for j in range(d):
        row = th[j if per_dim else 0]
        z = vload(Z, j)
        cnt = zero
        step = top
        while step >= 1:
            k = vadd(cnt, isplat(step))  # the count if th[k - 1] <= z
            real = vge(last, k)  # th[k - 1] exists
            probe = vgather(row, vsel(real, vsub(k, one), zero))
            cnt = vsel(vand(real, vge(z, probe)), k, cnt)
            step >>= 1
        vstore(S, j, cnt)


@njit(**_opts)
def _bucket_count_T(Z, d, bstart, tkeys, steps, S, rb):
    """S <- counts of thresholds <= Z for one long sorted table, through the float32 bit
    patterns: key = bits ^ ((bits >> 31) & 0x7fffffff) orders int32 keys as the floats
    (once -0.0 is +0.0), so the count is bstart[bucket of the key] (the thresholds below
    the bucket) plus `steps` branch-free compares with the keys tkeys (padded with
    int32 max), 16 lanes at a time (gathers). With steps == 1 (every long table the
    codecs use) tkeys holds each bucket's (start, the one key it may hold) as one int64
    pair, and a count takes one 64-bit gather instead of two dependent ones
    (bench/kernel_variants.py). Built by `cpu_ops.bucket_index`; Z's rows are
    canonicalised in place."""
    zero = fsplat(0.0)
    half = isplat(BUCKET_COUNT // 2)
    mag = isplat(0x7FFFFFFF)
    top = isplat(0x7F800000)
    none = isplat(0)
    for j in range(d):
        z = vadd(vload(Z, j), zero)  # -0.0 + 0.0 == +0.0; nothing else changes
        vstore(Z, j, z)
        b = vbits(z)
        key = vxor(b, vand(vsra(b, 31), mag))
        bucket = vadd(vsra(key, BUCKET_SHIFT), half)
        if steps == 1:
            pair = vgather_pairs(tkeys, bucket)
            c = vsub(vnarrow(pair), vge(key, vnarrow(vsra(pair, 32))))
        else:
            c = vgather(bstart, bucket)
            for _ in range(steps):
                c = vsub(c, vge(key, vgather(tkeys, c)))
        vstore(S, j, vsel(vge(top, vand(b, mag)), c, none))  # a NaN counts no threshold


@njit(**_opts)
def _count_le_T(Z, d, th, th16, bstart, tkeys, bsteps, S, rb):
    """S[j, r] = number of th[t(j)] entries <= Z[j, r]; th: (T, m) sorted, T = 1 or D;
    th16: `_pad16(th)` when m <= LOOKUP_COUNT_MAX; bsteps >= 0: a bucket index of th."""
    m = th.shape[1]
    per_dim = th.shape[0] > 1
    if m <= LOOKUP_COUNT_MAX:
        steps = _steps_for(m)
        T = vload(th16, 0)
        for j in range(d):
            if per_dim:
                T = vload(th16, j)
            vstore(S, j, _search16_v(vload(Z, j), T, steps))
    elif m <= LINEAR_COUNT_MAX:
        for j in range(d):
            vstore(S, j, _count_v(vload(Z, j), th, j if per_dim else 0, m))
    elif bsteps >= 0:
        _bucket_count_T(Z, d, bstart, tkeys, bsteps, S, rb)
    else:
        _search_T(Z, d, th, S, rb)


@njit(**_opts)
def _pack_T(S, d, i0, nr, bits, codes, W, rb):
    """codes rows i0.. <- the int32 symbols of S's lanes, `packing.pack`'s layout; W: scratch
    of codes.shape[1] rows of 16 int64 lanes (a word per lane, then copied row by row)."""
    v = 64 // bits
    nw = codes.shape[1]
    for wi in range(nw):
        base = wi * v
        acc = lsplat(0)
        for k in range(min(v, d - base)):
            acc = vor(acc, vshl(vwiden(vload(S, base + k)), k * bits))
        vstore(W, wi, acc)
    for r in range(nr):
        row = codes[i0 + r]
        for wi in range(nw):
            row[wi] = W[wi * rb + r]


@njit(**_opts)
def _unpack_T(codes, i0, nr, bits, d, S, status, W, rb):
    """S lanes (int32) <- symbols of rows i0.. ; status BAD_PADDING where an unused bit is set.
    W: scratch of codes.shape[1] rows of 16 int64 lanes."""
    v = 64 // bits
    nw = codes.shape[1]
    mask = lsplat((np.int64(1) << bits) - 1)
    zero = lsplat(0)
    bad = isplat(0)
    for r in range(nr):
        row = codes[i0 + r]
        for wi in range(nw):
            W[wi * rb + r] = row[wi]
    for wi in range(nw):
        word = vload(W, wi)
        base = wi * v
        top = min(v, d - base)
        for k in range(top):
            vstore(S, base + k, vnarrow(vand(vshr(word, k * bits), mask)))
        used = top * bits
        if used < 64:
            bad = vor(bad, vne(vshr(word, used), zero))
    for r in range(nr):
        status[i0 + r] = BAD_PADDING if vget(bad, r) != 0 else OK


@njit(**_opts)
def _unpack_row(words, bits, d, sym):
    """sym[:d] <- the symbols of one row's words; BAD_PADDING if an unused bit is set."""
    v = 64 // bits
    mask = (np.int64(1) << bits) - 1
    st = OK
    for wi in range(words.shape[0]):
        word = words[wi]
        base = wi * v
        top = min(v, d - base)
        for k in range(top):
            sym[base + k] = (word >> (k * bits)) & mask
        used = top * bits
        if used < 64 and (word >> used) != 0:
            st = BAD_PADDING
    return st


@njit(**_opts)
def _copy_out_T(A, d, i0, nr, out, O, rb):
    """out rows i0..i0+nr <- A's live lanes, through O, a (16, D) row-major scratch: the
    16 x 16 tiles are transposed into O (in cache) and O's rows copied out whole, which
    writes memory twice as fast as storing every tile's 16 short pieces straight to
    their rows."""
    j0 = 0
    while j0 + rb <= d:
        transpose_out(A, O, 0, j0)
        j0 += rb
    for r in range(nr):
        src = O[r]
        for j in range(j0, d):
            src[j] = A[j * rb + r]
        row = out[i0 + r]
        for j in range(d):
            row[j] = src[j]


@njit(**_opts)
def _store_T(A, d, i0, nr, out, status, O, rb):
    """`_copy_out_T`; a row with a non-finite value gets NOT_FINITE (when its status is OK)."""
    fin = fsplat(0.0)  # stays +-0 in a lane until that lane meets Inf or NaN (x * 0 is NaN)
    zero = fsplat(0.0)
    for j in range(d):
        fin = vadd(fin, vmul(vload(A, j), zero))
    _copy_out_T(A, d, i0, nr, out, O, rb)
    for r in range(nr):
        if vget(fin, r) != 0.0 and status[i0 + r] == OK:  # NaN != 0
            status[i0 + r] = NOT_FINITE


# ---------------------------------------------------------------------------
# generic pieces: packing and the rotation alone (used by every scheme)


@njit(parallel=True, **_opts)
def pack(sym, bits, out):
    n, length = sym.shape
    v = 64 // bits
    for i in prange(n):
        row = sym[i]
        o = out[i]
        for wi in range(o.shape[0]):
            acc = np.int64(0)
            base = wi * v
            for k in range(min(v, length - base)):
                acc |= row[base + k] << (k * bits)
            o[wi] = acc


@njit(parallel=True, **_opts)
def unpack(words, bits, length, sym, status):
    for i in prange(words.shape[0]):
        status[i] = _unpack_row(words[i], bits, length, sym[i])


@njit(parallel=True, **_opts)
def rotate_forward(x, signs, perm, blocks, scales, out, rb):
    n, d = x.shape
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        O = np.zeros((rb, d), np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _load_T(x, i0, nr, A, True, signs, perm, blocks, scales, B, rb)
            _copy_out_T(A, d, i0, nr, out, O, rb)


@njit(parallel=True, **_opts)
def rotate_inverse(y, signs, inv, blocks, scales, out, rb):
    n, d = y.shape
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        O = np.zeros((rb, d), np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _transpose_rows(y, i0, nr, A, rb)
            R = _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _copy_out_T(R, d, i0, nr, out, O, rb)


# ---------------------------------------------------------------------------
# lloyd: rotate, normalise, bucketize, gain, pack (and back)
# (the normalising and gain steps are shared with `tcq_cpu.encode`)


@njit(**_opts)
def _unit_rows_T(A, d, i0, nr, status, unit_scale, unit_tol, sq64, buf64, nrm, Z, rb):
    """norm='unit': rows whose float64 norm (lloyd._check_unit's fixed pairwise order) is
    off by more than unit_tol get NOT_UNIT; Z <- A * unit_scale (float32)."""
    for k in range(d * rb):
        v = np.float64(A[k])
        sq64[k] = v * v
    _fixed_sum_T(sq64, d, buf64, rb, nrm)
    for r in range(nr):
        if status[i0 + r] == OK and abs(np.sqrt(nrm[r]) - 1.0) > unit_tol:
            status[i0 + r] = NOT_UNIT
    us = fsplat(unit_scale)
    for j in range(d):
        vstore(Z, j, vmul(vload(A, j), us))


@njit(**_opts)
def _rms_T(A, d, Q, B):
    """(m, s): each row's largest magnitude (1 for a zero row) and its RMS scaled by it
    (lloyd._rms); Q <- A / m, the gain's first factor. B: scratch (its rows d.. +0.0)."""
    zero = fsplat(0.0)
    one = fsplat(1.0)
    m = _absmax_v(A, d)
    m = vsel(vgt(m, zero), m, one)
    for j in range(d):
        q = vdiv(vload(A, j), m)
        vstore(Q, j, q)
        vstore(B, j, vmul(q, q))
    s = vmul(vsqrt(vdiv(_halve_sum_v(B, d), fsplat(d))), m)
    return m, vsel(vgt(s, zero), s, one)


@njit(**_opts)
def _gain_T(B, Q, d, m, i0, nr, gain):
    """lloyd's least-squares gain <x/m, c> / <c, c> * m from B = c * c and Q = (x/m) * c
    (0 where c is all zero), into gain[i0 + r, 0]."""
    den = _halve_sum_v(B, d)
    num = _halve_sum_v(Q, d)
    for r in range(nr):
        dr = vget(den, r)
        mr = vget(m, r)
        if dr > 0:
            gain[i0 + r, 0] = (vget(num, r) / dr) * mr
        else:
            gain[i0 + r, 0] = np.float32(0.0) * mr


@njit(parallel=True, **_opts)
def lloyd_encode(x, xbits, rotate, signs, perm, blocks, scales, th, lv, bstart, tkeys, bsteps, unit, unit_scale, unit_tol,
                 bits, codes, gain, status, rb):
    """th, lv: (T, n-1), (T, n) with T = 1 (one table) or D (one per dimension);
    bstart, tkeys, bsteps: `cpu_ops.bucket_index` of a long single table (bsteps -1: none)."""
    n, d = x.shape
    per_dim = lv.shape[0] > 1
    m_th = th.shape[1]
    lookup = m_th <= LOOKUP_COUNT_MAX
    linear = m_th <= LINEAR_COUNT_MAX
    steps = _steps_for(m_th)
    th16 = _pad16(th, False) if lookup else np.empty(0, np.float32)
    lv16 = _pad16(lv, True) if lookup else np.empty(0, np.float32)
    w2 = _pow2_at_least(d)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(w2 * rb, np.float32)  # rows d.. stay +0.0: the padding of the sums
        Q = np.zeros(w2 * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        buf64 = np.zeros(w2 * rb, np.float64)
        sq64 = np.zeros(d * rb, np.float64)
        nrm = np.ones(rb, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            if unit:
                _unit_rows_T(A, d, i0, nr, status, unit_scale, unit_tol, sq64, buf64, nrm, B, rb)
                _count_le_T(B, d, th, th16, bstart, tkeys, bsteps, S, rb)
                _pack_T(S, d, i0, nr, bits, codes, W, rb)
                continue
            m, s = _rms_T(A, d, Q, B)
            # symbols (z = x / s against the thresholds), their levels c, and the terms
            # of the least-squares gain <x/m, c> / <c, c> * m
            if lookup:
                T = vload(th16, 0)
                L = vload(lv16, 0)
                for j in range(d):
                    if per_dim:
                        T = vload(th16, j)
                        L = vload(lv16, j)
                    cnt = _search16_v(vdiv(vload(A, j), s), T, steps)
                    c = vlookup(L, cnt)
                    vstore(S, j, cnt)
                    vstore(B, j, vmul(c, c))
                    vstore(Q, j, vmul(vload(Q, j), c))
            elif linear:
                for j in range(d):
                    t = j if per_dim else 0
                    cnt, c = _count_levels_v(vdiv(vload(A, j), s), th, lv, t, m_th)
                    vstore(S, j, cnt)
                    vstore(B, j, vmul(c, c))
                    vstore(Q, j, vmul(vload(Q, j), c))
            else:
                for j in range(d):
                    vstore(B, j, vdiv(vload(A, j), s))
                _count_le_T(B, d, th, th16, bstart, tkeys, bsteps, S, rb)
                for j in range(d):
                    c = vgather(lv[j if per_dim else 0], vload(S, j))  # a count is a level index
                    vstore(B, j, vmul(c, c))
                    vstore(Q, j, vmul(vload(Q, j), c))
            _gain_T(B, Q, d, m, i0, nr, gain)
            _pack_T(S, d, i0, nr, bits, codes, W, rb)


@njit(**_opts)
def _levels_T(S, d, lv, lv16, nlev, g, A, rb):
    """A[j] <- lv[t(j), min(S[j], nlev - 1)] * g (lane by lane); lv (T, >= nlev), T = 1 or D;
    lv16: `_pad16(lv[:, :nlev], True)` for a 16-lane lookup when every symbol is < 16, else empty."""
    per_dim = lv.shape[0] > 1
    if lv16.shape[0] > 0:
        L = vload(lv16, 0)
        for j in range(d):
            if per_dim:
                L = vload(lv16, j)
            vstore(A, j, vmul(vlookup(L, vload(S, j)), g))
        return
    top = isplat(nlev - 1)
    for j in range(d):
        sj = vload(S, j)
        vstore(A, j, vmul(vgather(lv[j if per_dim else 0], vsel(vge(sj, top), top, sj)), g))


@njit(parallel=True, **_opts)
def lloyd_decode(codes, side, unit, unit_scale, rotate, signs, inv, blocks, scales, lv, bits, out, status, rb):
    n = codes.shape[0]
    d = out.shape[1]
    nlev = lv.shape[1]
    lv16 = _pad16(lv, True) if bits <= 4 else np.empty(0, np.float32)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        O = np.zeros((rb, d), np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, bits, d, S, status, W, rb)
            g = fsplat(unit_scale)
            if not unit:
                for r in range(nr):
                    g = vset(g, r, side[i0 + r, 0])
            _levels_T(S, d, lv, lv16, nlev, g, A, rb)
            R = A
            if rotate:
                R = _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(R, d, i0, nr, out, status, O, rb)


# ---------------------------------------------------------------------------
# absmax: rotate, one scale per row, round half to even, pack (decode: `table_decode` with
# the levels -qmax .. qmax, cpu_ops._absmax_decode)


@njit(parallel=True, **_opts)
def absmax_encode(x, xbits, rotate, signs, perm, blocks, scales, qmax, bits, codes, scale_out, status, rb):
    n, d = x.shape
    fq = np.float32(qmax)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        m = np.ones(rb, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            _absmax_T(A, d, rb, m)
            for r in range(rb):
                sc = m[r] / fq
                if r < nr:
                    scale_out[i0 + r, 0] = sc
                m[r] = sc if sc > 0 else np.float32(1.0)
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                for r in range(rb):
                    q = np.rint(a[r] / m[r])
                    q = min(max(q, -fq), fq)
                    sj[r] = np.int32(q) + qmax
            _pack_T(S, d, i0, nr, bits, codes, W, rb)


# ---------------------------------------------------------------------------
# table schemes (codebook, distributional): normalise, count thresholds, pack (and back)
#   mode ROW_ABSMAX: z = x / absmax(row) (0 -> 1), side = absmax   (codebook scale=row)
#   mode FIXED:      z = x / scale                                   (codebook scale=codec)
#   mode AFFINE:     z = (x - loc) / scale; decode level * scale + loc (distributional)

ROW_ABSMAX = 0
FIXED = 1
AFFINE = 2


@njit(parallel=True, **_opts)
def table_encode(x, xbits, rotate, signs, perm, blocks, scales, th, bstart, tkeys, bsteps, mode, loc, gscale, bs, bits,
                 codes, side, status, rb):
    """x / scale counted against the sorted thresholds th (1, m), packed: the scale is, by
    mode, each block of bs dimensions' largest magnitude (ROW_ABSMAX: codebook's row
    scale with bs = D, blockwise's blocks; a side value per block, 1 dividing an
    all-zero block), a fixed gscale, or (x - loc) / gscale (AFFINE). Float32 operations
    as the references'."""
    n, d = x.shape
    ng = (d + bs - 1) // bs
    th16 = _pad16(th, False) if th.shape[1] <= LOOKUP_COUNT_MAX else np.empty(0, np.float32)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            if mode == ROW_ABSMAX:
                for gi in range(ng):
                    lo = gi * bs
                    hi = min(d, lo + bs)
                    m = _absmax_v(A[lo * rb:], hi - lo)
                    for r in range(nr):
                        side[i0 + r, gi] = vget(m, r)
                    m = vsel(vgt(m, fsplat(0.0)), m, fsplat(1.0))
                    for j in range(lo, hi):
                        vstore(B, j, vdiv(vload(A, j), m))
            elif mode == FIXED:
                g = fsplat(gscale)
                for j in range(d):
                    vstore(B, j, vdiv(vload(A, j), g))
            else:
                g = fsplat(gscale)
                lo = fsplat(loc)
                for j in range(d):
                    vstore(B, j, vdiv(vsub(vload(A, j), lo), g))
            _count_le_T(B, d, th, th16, bstart, tkeys, bsteps, S, rb)
            _pack_T(S, d, i0, nr, bits, codes, W, rb)


@njit(parallel=True, **_opts)
def table_decode(codes, side, mode, loc, gscale, bs, nlev, rotate, signs, inv, blocks, scales, lv, bits, out, status,
                 rb):
    """Level times its scale (ROW_ABSMAX: its block's side value), plus loc (AFFINE); a
    symbol past the table: BAD_SYMBOL; then the inverse rotation."""
    n = codes.shape[0]
    d = out.shape[1]
    ng = (d + bs - 1) // bs
    lv16 = _pad16(lv[:, :nlev], True) if bits <= 4 else np.empty(0, np.float32)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        O = np.zeros((rb, d), np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, bits, d, S, status, W, rb)
            over = isplat(0)
            top = isplat(nlev)
            for j in range(d):
                over = vor(over, vge(vload(S, j), top))
            for r in range(nr):
                if vget(over, r) != 0 and status[i0 + r] == OK:
                    status[i0 + r] = BAD_SYMBOL
            if mode == ROW_ABSMAX:  # lv[min(s, nlev - 1)] * the block's side value
                for gi in range(ng):
                    lo = gi * bs
                    g = fsplat(1.0)
                    for r in range(nr):
                        g = vset(g, r, side[i0 + r, gi])
                    _levels_T(S[lo * rb:], min(d, lo + bs) - lo, lv, lv16, nlev, g, A[lo * rb:], rb)
            else:
                _levels_T(S, d, lv, lv16, nlev, fsplat(gscale), A, rb)
            if mode == AFFINE:
                lo = fsplat(loc)
                for j in range(d):
                    vstore(A, j, vadd(vload(A, j), lo))
            R = A
            if rotate:
                R = _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(R, d, i0, nr, out, status, O, rb)


# ---------------------------------------------------------------------------
# int8 (per-dimension ranges) and binary (sign bits): the providers' formats


@njit(parallel=True, **_opts)
def int8_encode(x, xbits, rotate, signs, perm, blocks, scales, starts, steps, codes, status, rb):
    n, d = x.shape
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                st = starts[j]
                sp = steps[j]
                for r in range(rb):
                    q = np.floor((a[r] - st) / sp)
                    q = min(max(q, np.float32(0.0)), np.float32(255.0))
                    sj[r] = np.int32(q)
            _pack_T(S, d, i0, nr, 8, codes, W, rb)


@njit(parallel=True, **_opts)
def int8_decode(codes, rotate, signs, inv, blocks, scales, starts, steps, maxes, out, status, rb):
    n = codes.shape[0]
    d = out.shape[1]
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        O = np.zeros((rb, d), np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, 8, d, S, status, W, rb)
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                st = starts[j]
                sp = steps[j]
                flat = maxes[j] == st
                for r in range(rb):
                    # every bin at its midpoint, the top one too (as the reference, binary.Int8)
                    mid = st + (np.float32(sj[r]) + np.float32(0.5)) * sp
                    a[r] = st if flat else mid
            R = A
            if rotate:
                R = _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(R, d, i0, nr, out, status, O, rb)


@njit(parallel=True, **_opts)
def binary_encode(x, xbits, rotate, signs, perm, blocks, scales, row_scale, codes, side, status, rb):
    n, d = x.shape
    w2 = _pow2_at_least(d)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        abs64 = np.zeros(d * rb, np.float64)
        buf64 = np.zeros(w2 * rb, np.float64)
        tot = np.zeros(rb, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            for k in range(d * rb):
                S[k] = A[k] > 0
            if row_scale:
                # binary._mean_abs: float64 |x| summed in the fixed pairwise order
                for k in range(d * rb):
                    abs64[k] = abs(np.float64(A[k]))
                _fixed_sum_T(abs64, d, buf64, rb, tot)
                for r in range(nr):
                    side[i0 + r, 0] = np.float32(tot[r] / np.float64(d))
            _pack_T(S, d, i0, nr, 1, codes, W, rb)


@njit(parallel=True, **_opts)
def binary_decode(codes, side, mode, gscale, rotate, signs, inv, blocks, scales, out, status, rb):
    """mode 0: +-side of the row; 1: +-gscale; 2: +-1."""
    n = codes.shape[0]
    d = out.shape[1]
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        O = np.zeros((rb, d), np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        g = np.ones(rb, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, 1, d, S, status, W, rb)
            for r in range(nr):
                g[r] = side[i0 + r, 0] if mode == 0 else gscale
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                for r in range(rb):
                    pm = np.float32(sj[r]) * np.float32(2.0) - np.float32(1.0)
                    a[r] = pm if mode == 2 else pm * g[r]
            R = A
            if rotate:
                R = _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(R, d, i0, nr, out, status, O, rb)
