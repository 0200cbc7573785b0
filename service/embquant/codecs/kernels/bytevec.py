"""Byte-lane vectors for numba kernels: 32 unsigned bytes (`B8x32`, LLVM <32 x i8>,
one ymm register) and 16 unsigned 16-bit lanes (`W16x16`, <16 x i16>), with the few
operations a 4-bit table lookup needs (`kernels.fastscan_cpu`): load 32 bytes, split
them into low and high nibbles, look each nibble up in a 16-byte table (`bshuf`: one
``vpshufb`` with AVX2; lane by lane elsewhere), and add the looked-up bytes into
16-bit sums.

Integer lanes only: the results are exact, whatever the instructions.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic, models, register_model

from .cpu import I32x16, I64x16, _isa, _lanes_of

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_B = ir.VectorType(_I8, 32)
_W = ir.VectorType(_I16, 16)


class _ByteVec(types.Type):
    def __init__(self, name, lt):
        self.lt = lt
        super().__init__(name=name)


B8x32 = _ByteVec("u8x32", _B)
W16x16 = _ByteVec("u16x16", _W)


@register_model(_ByteVec)
class _ByteVecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.lt)


def _const(lt, v):
    return ir.Constant(lt, [v] * lt.count)


@intrinsic
def bload(typingctx, arr, off):
    """arr[off : off + 32] of a 1-D uint8 array (any alignment; in bounds)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8
            and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
        k = context.cast(builder, args[1], sig.args[1], types.int64)
        p = builder.bitcast(builder.gep(data, [k]), _B.as_pointer())
        return builder.load(p, align=1)

    return B8x32(arr, off), codegen


@intrinsic
def nib_lo(typingctx, x):
    """Each byte's low nibble (x & 15)."""
    if x != B8x32:
        return None

    def codegen(context, builder, sig, args):
        return builder.and_(args[0], _const(_B, 15))

    return B8x32(x), codegen


@intrinsic
def nib_hi(typingctx, x):
    """Each byte's high nibble (x >> 4)."""
    if x != B8x32:
        return None

    def codegen(context, builder, sig, args):
        return builder.lshr(args[0], _const(_B, 4))

    return B8x32(x), codegen


@intrinsic
def bshuf(typingctx, tab, idx):
    """tab[idx] byte by byte within each 16-byte half (``vpshufb``): every index in
    [0, 16); the table's two halves hold the same 16 entries, so byte r of the result
    is entry idx[r] whatever the half."""
    if not (tab == B8x32 and idx == B8x32):
        return None

    def codegen(context, builder, sig, args):
        if _isa(context) in ("avx2", "avx512"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_B, [_B, _B]), "llvm.x86.avx2.pshuf.b")
            return builder.call(fn, [args[0], args[1]])
        out = ir.Constant(_B, ir.Undefined)
        for i in range(32):
            k = builder.zext(builder.extract_element(args[1], ir.Constant(_I32, i)), _I32)
            if i >= 16:
                k = builder.add(k, ir.Constant(_I32, 16))
            out = builder.insert_element(out, builder.extract_element(args[0], k), ir.Constant(_I32, i))
        return out

    return B8x32(tab, idx), codegen


@intrinsic
def w_even(typingctx, x):
    """Bytes 0, 2, ..., 30 of x as 16-bit lanes (each 16-bit lane's low byte)."""
    if x != B8x32:
        return None

    def codegen(context, builder, sig, args):
        return builder.and_(builder.bitcast(args[0], _W), _const(_W, 255))

    return W16x16(x), codegen


@intrinsic
def w_odd(typingctx, x):
    """Bytes 1, 3, ..., 31 of x as 16-bit lanes (each 16-bit lane's high byte)."""
    if x != B8x32:
        return None

    def codegen(context, builder, sig, args):
        return builder.lshr(builder.bitcast(args[0], _W), _const(_W, 8))

    return W16x16(x), codegen


@intrinsic
def wadd(typingctx, a, b):
    """a + b in 16-bit lanes (wrapping; the caller keeps the sums below 2**16)."""
    if not (a == W16x16 and b == W16x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return W16x16(a, b), codegen


@intrinsic
def wzero(typingctx):
    """All 16-bit lanes zero."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_W, None)

    return W16x16(), codegen


@intrinsic
def wwiden(typingctx, w):
    """16-bit lanes as int32 lanes (`cpu.I32x16`), zero-extended."""
    if w != W16x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.zext(args[0], _lanes_of("i32"))

    return I32x16(w), codegen


@intrinsic
def has_pshufb(typingctx):
    """True (a constant) when `bshuf` is one instruction (AVX2 or AVX-512): where it is
    not, the callers score by multiply-adds instead (`codecs.score`)."""

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.IntType(1), 1 if _isa(context) in ("avx2", "avx512") else 0)

    return types.boolean(), codegen


@intrinsic
def bstore_low(typingctx, arr, off, v):
    """arr[off : off + 16] = the low byte of each of v's 16 int64 lanes (`cpu.I64x16`):
    one truncation and one 16-byte store (any alignment; in bounds)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8 and v == I64x16
            and isinstance(off, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
        k = context.cast(builder, args[1], sig.args[1], types.int64)
        b16 = ir.VectorType(_I8, 16)
        p = builder.bitcast(builder.gep(data, [k]), b16.as_pointer())
        builder.store(builder.trunc(args[2], b16), p, align=1)
        return context.get_dummy_value()

    return types.void(arr, off, v), codegen
