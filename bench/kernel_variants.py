"""Inner loops of the CPU kernels against the variants they replaced or that were tried,
side by side in one run on one core (what docs/design.md and the README cite about
register blocking and lloyd 8-bit's gathers). Measurement only: nothing here asserts
a speed.

- transform's float64 projection: `transform_cpu._project_T` (two outputs per pass
  with AVX2, four with AVX-512) against four outputs per pass whatever the CPU (the
  loop before this change; its AVX-512 step, `_project4`, called for every output);
- bitcodes' correlations: `bitcodes_cpu._correlations` against four outputs per pass
  (its AVX-512 step, `_correlations4`);
- /score's many-query inner product: `score_cpu._dot4` twice per block (what AVX2 runs)
  against sixteen accumulators, two blocks of codes by eight queries (`score_cpu._dot16`,
  what AVX-512 runs, and what every CPU ran before);
- lloyd 8-bit's threshold count (255 thresholds): `cpu._bucket_count_T` (one 64-bit
  gather per lane of the bucket's start and threshold key) against the two dependent
  element-wise gathers it took before, and against those two by the hardware gather
  instruction (vpgatherdd; AVX2 only).
Every variant's results are checked equal to the shipped loop's before it is timed.

    .venv/bin/python bench/kernel_variants.py            # writes docs/kernel-variants.md
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils
from numba.core.extending import intrinsic

from embquant.codecs.kernels import bitcodes_cpu, cpu, cpu_ops, score_cpu, transform_cpu
from embquant.codecs.kernels.cpu import (
    BUCKET_COUNT, BUCKET_SHIFT, I32x16, fsplat, isplat, vadd, vand, vbits, vgather, vge, vload, vsel, vsra, vstore,
    vsub, vxor,
)
from embquant.codecs.lloyd import gaussian_tables
from machine import cpu_model, cpu_vectors  # bench/machine.py

_o = dict(nogil=True, error_model="numpy", boundscheck=False)
_I32 = ir.IntType(32)


# -- the variants ----------------------------------------------------------------

@njit(**_o)
def project_four(aT, d, bt, zT):
    """transform's projection, four outputs per pass (all of D outputs): the shipped
    AVX-512 step, `transform_cpu._project4`."""
    for j in range(0, d - 3, 4):
        transform_cpu._project4(aT, d, bt, j, j + 1, j + 2, j + 3, zT)


@njit(**_o)
def correlations_four(E, CB, m, d, CORR):
    """bitcodes' correlations, four outputs per pass (m a multiple of 4): the shipped
    AVX-512 step, `bitcodes_cpu._correlations4`."""
    for t in range(0, m, 4):
        bitcodes_cpu._correlations4(E, CB, 0, t, d, CORR)


@njit(**_o)
def dots_sixteen(Y, dim, qf, lanes):
    """Two blocks of 16 codes against eight queries, sixteen accumulators live: the
    shipped AVX-512 step, `score_cpu._dot16`."""
    score_cpu._dot16(Y, 0, dim, dim, qf[0], qf[1], qf[2], qf[3], qf[4], qf[5], qf[6], qf[7], lanes)


@njit(**_o)
def dots_four(Y, dim, qf, lanes):
    """The same sums by `score_cpu._dot4`, four accumulators at a time (AVX2's path)."""
    score_cpu._dot4(Y, 0, dim, qf[0], qf[1], qf[2], qf[3], lanes, 0)
    score_cpu._dot4(Y, 0, dim, qf[4], qf[5], qf[6], qf[7], lanes, 4)
    score_cpu._dot4(Y, dim, dim, qf[0], qf[1], qf[2], qf[3], lanes, 8)
    score_cpu._dot4(Y, dim, dim, qf[4], qf[5], qf[6], qf[7], lanes, 12)


@intrinsic
def gather_hw(typingctx, arr, idx):
    """arr[idx] from an int32 array by AVX2's vpgatherdd, eight lanes per instruction."""
    def codegen(context, builder, sig, args):
        data = cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0]).data
        v8 = ir.VectorType(_I32, 8)
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8, i8p, v8, v8, ir.IntType(8)]),
                                            "llvm.x86.avx2.gather.d.d.256")
        base = builder.bitcast(data, i8p)
        parts = []
        for lo in (0, 8):
            ix = builder.shuffle_vector(args[1], ir.Constant(args[1].type, ir.Undefined),
                                        ir.Constant(v8, list(range(lo, lo + 8))))
            parts.append(builder.call(fn, [ir.Constant(v8, [0] * 8), base, ix, ir.Constant(v8, [-1] * 8),
                                           ir.Constant(ir.IntType(8), 4)]))
        return builder.shuffle_vector(parts[0], parts[1], ir.Constant(ir.VectorType(_I32, 16), list(range(16))))

    return I32x16(arr, idx), codegen


@njit(**_o)
def _key(Z, j):
    z = vadd(vload(Z, j), fsplat(0.0))
    b = vbits(z)
    return b, vxor(b, vand(vsra(b, 31), isplat(0x7FFFFFFF)))


@njit(**_o)
def count_two(Z, d, bstart, tkeys, S):
    """The count before: the bucket's start, then its threshold key, two element-wise gathers."""
    for j in range(d):
        b, key = _key(Z, j)
        c = vgather(bstart, vadd(vsra(key, BUCKET_SHIFT), isplat(BUCKET_COUNT // 2)))
        c = vsub(c, vge(key, vgather(tkeys, c)))
        vstore(S, j, vsel(vge(isplat(0x7F800000), vand(b, isplat(0x7FFFFFFF))), c, isplat(0)))


@njit(**_o)
def count_hw(Z, d, bstart, tkeys, S):
    """`count_two` with both gathers by vpgatherdd."""
    for j in range(d):
        b, key = _key(Z, j)
        c = gather_hw(bstart, vadd(vsra(key, BUCKET_SHIFT), isplat(BUCKET_COUNT // 2)))
        c = vsub(c, vge(key, gather_hw(tkeys, c)))
        vstore(S, j, vsel(vge(isplat(0x7F800000), vand(b, isplat(0x7FFFFFFF))), c, isplat(0)))


# -- timing ----------------------------------------------------------------------

def best(fn, reps: int, rounds: int = 5) -> float:
    """Seconds per call, best of ``rounds`` of ``reps`` calls (one warm-up call first)."""
    fn()
    out = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        out = min(out, (time.perf_counter() - t) / reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "kernel-variants.md")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []  # (loop, variant, figure, unit, x shipped)

    d = 384  # transform's projection: 16 rows x D outputs x D inputs
    aT = rng.standard_normal(d * 16)
    bt = rng.standard_normal((d, d))
    outs = np.arange(d, dtype=np.int64)
    z1, z2 = np.empty(d * 16), np.empty(d * 16)
    transform_cpu._project_T(aT, d, bt, outs, z1)
    project_four(aT, d, bt, z2)
    assert np.array_equal(z1, z2)
    fma = 16 * d * d
    t_new = best(lambda: transform_cpu._project_T(aT, d, bt, outs, z1), 200)
    t_old = best(lambda: project_four(aT, d, bt, z2), 200)
    rows += [("transform projection (float64 FMA)", "`_project_T`, shipped", fma / t_new / 1e9, "GFMA/s", 1.0),
             ("", "four outputs per pass", fma / t_old / 1e9, "GFMA/s", t_new / t_old)]

    m = 64  # bitcodes' correlations: 16 rows x a block of 64 bits x D
    E = rng.standard_normal(d * 16)
    CB = rng.standard_normal((m, d))
    c1, c2 = np.empty(m * 16), np.empty(m * 16)
    bitcodes_cpu._correlations(E, CB, 0, m, d, c1)
    correlations_four(E, CB, m, d, c2)
    assert np.array_equal(c1, c2)
    ops = 16 * m * d
    t_new = best(lambda: bitcodes_cpu._correlations(E, CB, 0, m, d, c1), 1000)
    t_old = best(lambda: correlations_four(E, CB, m, d, c2), 1000)
    rows += [("bitcodes correlations (float64 multiply, add)", "`_correlations`, shipped", ops / t_new / 1e9,
              "G multiply-adds/s", 1.0),
             ("", "four outputs per pass", ops / t_old / 1e9, "G multiply-adds/s", t_new / t_old)]

    Y = rng.standard_normal(2 * d * 16).astype(np.float32)  # /score: 2 blocks of 16 codes x 8 queries
    qf = rng.standard_normal((8, d)).astype(np.float32)
    l1, l2 = np.empty(16 * 16, np.float32), np.empty(16 * 16, np.float32)
    dots_four(Y, d, qf, l1)
    dots_sixteen(Y, d, qf, l2)
    assert np.array_equal(l1, l2)
    pairs = 32 * 8
    t4 = best(lambda: dots_four(Y, d, qf, l1), 5000)
    t16 = best(lambda: dots_sixteen(Y, d, qf, l2), 5000)
    avx512 = cpu_vectors() == "AVX-512"
    rows += [("/score many-query inner product (float32 FMA)", "`_dot4`, four accumulators"
              + (" (AVX2's path: shipped here)" if not avx512 else ""), pairs / t4 / 1e6, "M pairs/s",
              (t16 / t4) if avx512 else 1.0),
             ("", "sixteen accumulators" + (" (AVX-512's path: shipped here)" if avx512 else ""),
              pairs / t16 / 1e6, "M pairs/s", 1.0 if avx512 else t4 / t16)]

    th, _, _ = gaussian_tables(8)  # lloyd 8-bit: 255 thresholds
    bs, pairs, steps = cpu_ops.bucket_index(np.asarray(th, np.float32))
    assert steps == 1
    th32 = np.asarray(th, np.float32) + np.float32(0.0)
    keys = th32.view(np.int32) ^ ((th32.view(np.int32) >> 31) & np.int32(0x7FFFFFFF))
    tk = np.append(keys, np.int32(np.iinfo(np.int32).max)).astype(np.int32)  # the tables before
    Z = rng.standard_normal(d * 16).astype(np.float32)
    Z[5], Z[7], Z[9] = np.nan, -0.0, th[100]
    s_ref, s_alt = np.empty(d * 16, np.int32), np.empty(d * 16, np.int32)
    cpu._bucket_count_T(Z, d, bs, pairs, 1, s_ref, 16)
    count_two(Z, d, bs, tk, s_alt)
    assert np.array_equal(s_ref, s_alt)
    vals = 16 * d
    t_ref = best(lambda: cpu._bucket_count_T(Z, d, bs, pairs, 1, s_ref, 16), 5000)
    t_two = best(lambda: count_two(Z, d, bs, tk, s_alt), 5000)
    rows += [("lloyd 8-bit threshold count", "`_bucket_count_T`, shipped (one 64-bit gather)",
              t_ref / vals * 1e9, "ns/value", 1.0),
             ("", "two element-wise gathers (before)", t_two / vals * 1e9, "ns/value", t_ref / t_two)]
    if cpu_vectors() in ("AVX2", "AVX-512"):
        count_hw(Z, d, bs, tk, s_alt)
        assert np.array_equal(s_ref, s_alt)
        t_hw = best(lambda: count_hw(Z, d, bs, tk, s_alt), 5000)
        rows.append(("", "two gathers by vpgatherdd", t_hw / vals * 1e9, "ns/value", t_ref / t_hw))

    cmd = "`.venv/bin/python bench/kernel_variants.py`"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Kernel inner loops and their variants", "",
             f"Command: {cmd} (written by bench/kernel_variants.py).", "",
             f"- Machine: {cpu_model()} ({cpu_vectors() or 'no AVX2'}); one core (each loop runs alone, "
             f"not in the kernels' parallel loop); {when}.",
             "- Every variant's results were checked equal to the shipped loop's before timing; each figure is "
             "the best of 5 rounds of many calls on data in cache. `x shipped`: the variant's speed over the "
             "shipped loop's, in this run.", "",
             "| loop | variant | speed | unit | x shipped |", "|---|---|---:|---|---:|"]
    lines += [f"| {a} | {b} | {v:.3g} | {u} | {x:.2f} |" for a, b, v, u, x in rows]
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
