"""The Triton kernels (`codecs.kernels.gpu`, lloyd) against the torch reference: the same
codes, side values and decoded floats for every bit width they cover, mode, norm,
rotation, dimension and batch; the same errors for bad input.

With a CUDA device the compiled kernels run on it, through `codecs.encode` and
`codecs.decode` as the worker calls them, and are compared with the reference on the
CPU. Without one they run in Triton's interpreter (TRITON_INTERPRET=1: the kernels'
own code, every lane computed by numpy on the CPU), which checks their logic; the
GPU's rounding is checked where a GPU is lent (bench/gpu_check.sh runs this file)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import kernels
from embquant.errors import CodecMismatch, InvalidInput
from tests.support.codecs import kernel_rows

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":  # tests/conftest.py sets it
    pytest.skip("no GPU, and TRITON_INTERPRET=1 was not set before triton was imported", allow_module_level=True)
pytest.importorskip("triton")

from embquant.codecs.kernels import gpu, gpu_ops  # noqa: E402
from embquant.codecs.kernels import status as kstatus  # noqa: E402



@pytest.fixture(autouse=True, scope="module")
def _triton_on():
    """The Triton kernels are opt-in (EMBQUANT_GPU_KERNELS=triton): on for this module."""
    kernels.set_gpu_backend("triton")
    yield
    kernels.set_gpu_backend("torch")

DIMS = (1, 3, 64, 100, 384, 385, 1536)
PARAMS = [
    {"bits": 1},
    {"bits": 2},
    {"bits": 4},
    {"bits": 8},
    {"bits": 4, "norm": "unit"},
    {"bits": 1, "norm": "unit"},
    {"bits": 4, "rotate": False},
    {"bits": 8, "rotate": False, "norm": "unit"},
    {"bits": 2, "mode": "fit_global"},
    {"bits": 4, "mode": "fit_dim"},
    {"bits": 8, "mode": "fit_dim", "rotate": False},
    {"bits": 4, "center": True},
]


_rows = kernel_rows


def _fitted(params: dict, d: int):
    unit = params.get("norm") == "unit"
    with kernels.using("torch"):
        return codecs.fit("lloyd", params, _rows(300, d, seed=1, unit=unit))


def _fast(codec, x: torch.Tensor):
    """Encode and decode on the Triton kernels: through the core on CUDA (the path the
    worker takes), straight through `gpu_ops` in the interpreter (the core sends CPU
    tensors to numba)."""
    if CUDA:
        assert kernels.on_gpu(x.cuda())
        codes, side = codecs.encode(codec, x.cuda())
        y = codecs.decode(codec, codes, side)
        return (codes.cpu(), None if side is None else side.cpu()), y.cpu()
    xc = x.float()
    if codecs.core.centred(codec.params):
        xc = xc - codecs.core._mean_of(codec, xc.device)
    codes, side = gpu_ops.encode(codec, xc.contiguous())
    y, status = gpu_ops.decode(codec, codes, side)
    gpu_ops.raise_decode_status(codec, status)
    if codecs.core.centred(codec.params):
        y = y + codecs.core._mean_of(codec, y.device)
    return (codes, side), y


def _assert_same(codec, x):
    with kernels.using("torch"):
        ref = codecs.encode(codec, x)
        yref = codecs.decode(codec, *ref)
    (codes, side), y = _fast(codec, x)
    assert torch.equal(ref[0], codes), "codes differ"
    assert (ref[1] is None) == (side is None)
    if side is not None:
        assert torch.equal(ref[1].view(torch.int32), side.view(torch.int32)), "side values' bits differ"
    assert torch.equal(yref.view(torch.int32), y.view(torch.int32)), "decoded values' bits differ"


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_same_as_reference(params, d):
    codec = _fitted(params, d)
    assert gpu_ops.has_fused(codec)
    x = _rows(21, d, unit=params.get("norm") == "unit")
    _assert_same(codec, x)


@pytest.mark.parametrize("n", [1, 2, 5, 64])
def test_any_batch(n):
    """A row's codes do not depend on the rows beside it or on the rows a program holds."""
    codec = _fitted({"bits": 4}, 384)
    x = _rows(64, 384, seed=3)
    (codes, side), y = _fast(codec, x)
    (c1, s1), y1 = _fast(codec, x[:n])
    assert torch.equal(codes[:n], c1) and torch.equal(side[:n], s1) and torch.equal(y[:n], y1)


def test_not_covered_takes_the_reference():
    with kernels.using("torch"):
        three = codecs.fit("lloyd", {"bits": 3}, _rows(50, 64))
        wide = codecs.fit("lloyd", {"bits": 4}, _rows(4, gpu.MAX_DIM + 1))
        other = codecs.fit("absmax", {"bits": 4}, _rows(50, 64))
    assert not any(gpu_ops.has_fused(c) for c in (three, wide, other))


def _errors(call):
    try:
        call()
    except (InvalidInput, CodecMismatch) as e:
        return type(e), str(e)
    raise AssertionError("no error")


# the interpreter's numpy warns of the NaN, Inf and overflow these rows carry on purpose
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_row():
    codec = _fitted({"bits": 4}, 100)
    x = _rows(9, 100)
    x[6, 17] = float("nan")
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        gpu_ops.encode(codec, x.contiguous())
    x[6, 17] = float("-inf")
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        gpu_ops.encode(codec, x.contiguous())


def test_not_unit_names_the_row_as_the_reference():
    codec = _fitted({"bits": 4, "norm": "unit"}, 100)
    x = _rows(9, 100, unit=True)
    x[5] *= 1.5
    with kernels.using("torch"):
        want = _errors(lambda: codecs.encode(codec, x))
    assert _errors(lambda: gpu_ops.encode(codec, x.contiguous())) == want
    assert "row 5" in want[1]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_bad_padding_and_overflow_as_the_reference():
    codec = _fitted({"bits": 4}, 100)  # 100 symbols: 7 words, the last one 16 bits used
    x = _rows(9, 100)
    with kernels.using("torch"):
        codes, side = codecs.encode(codec, x)
    bad = codes.clone()
    bad[4, 6] |= 1 << 40
    bad[7, 2] |= 0  # (a used bit pattern: not an error)
    with kernels.using("torch"):
        want = _errors(lambda: codecs.decode(codec, bad, side))
    y, status = gpu_ops.decode(codec, bad, side)
    assert int(status[4]) == kstatus.BAD_PADDING and int((status != 0).sum()) == 1
    assert _errors(lambda: gpu_ops.raise_decode_status(codec, status)) == want
    big = side.clone()
    big[3] = 3e38  # finite, but the decoded row overflows
    with kernels.using("torch"):
        want = _errors(lambda: codecs.decode(codec, codes, big))
    y, status = gpu_ops.decode(codec, codes, big)
    assert _errors(lambda: gpu_ops.raise_decode_status(codec, status)) == want


def test_codes_of_another_integer_dtype(monkeypatch):
    """int32 codes decode as the reference reads them (widened to int64): the kernel, which
    reads 64-bit words, gets them widened."""
    codec = _fitted({"bits": 4, "norm": "unit"}, 100)
    x = _rows(5, 100, unit=True)
    with kernels.using("torch"):
        codes, _ = codecs.encode(codec, x)
        small = (codes & 0xFFFF).to(torch.int32)  # symbols 0-3 of each word
        want = codecs.decode(codec, small, None)
    seen = []
    real = gpu.lloyd_decode

    class Spy:
        def __getitem__(self, grid):
            def launch(words, *a, **k):
                seen.append(words.dtype)
                return real[grid](words, *a, **k)
            return launch

    monkeypatch.setattr(gpu, "lloyd_decode", Spy())
    y, status = gpu_ops.decode(codec, small, None)
    gpu_ops.raise_decode_status(codec, status)
    assert seen == [torch.int64]
    assert torch.equal(y, want)


def test_top_bit_of_a_full_word():
    """1-bit codes of 64 dimensions fill the word: symbol 63 in the sign bit."""
    codec = _fitted({"bits": 1, "rotate": False}, 64)
    x = -torch.ones(3, 64)
    x[:, 63] = 1.0
    _assert_same(codec, x)


def test_a_kernel_that_fails_leaves_the_reference(monkeypatch, caplog):
    """A kernel that does not compile or launch: one log line, None (the core then runs
    the reference), and the reference from then on."""
    codec = _fitted({"bits": 4}, 64)

    class Broken:
        def __getitem__(self, grid):
            def launch(*a, **k):
                raise RuntimeError("PTX assembly failed")
            return launch

    monkeypatch.setattr(gpu, "lloyd_encode", Broken())
    monkeypatch.setitem(kernels._state, "triton_ok", True)
    with caplog.at_level("WARNING", logger="embquant.kernels"):
        assert gpu_ops.encode(codec, _rows(3, 64)) is None
    assert "PTX assembly failed" in caplog.text
    assert kernels._state["triton_ok"] is False
    if CUDA:
        assert not kernels.on_gpu(torch.zeros(1, device="cuda"))


def test_opt_in():
    assert kernels.set_gpu_backend("torch") == "torch"
    try:
        if CUDA:
            assert not kernels.on_gpu(torch.zeros(1, device="cuda"))
        with pytest.raises(ValueError, match="GPU kernel backend"):
            kernels.set_gpu_backend("cuda")
    finally:
        kernels.set_gpu_backend("triton")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_torch_backend_turns_the_kernels_off():
    x = _rows(4, 64).cuda()
    assert kernels.on_gpu(x)
    with kernels.using("torch"):
        assert not kernels.on_gpu(x)


# The interpreter runs the kernels' Python, not Triton's compiler: this compiles them for
# an H100/H200 (sm_90) with the ptxas that ships in triton's wheel, no GPU needed, in a
# process of its own (here the kernels are the interpreter's), and reads the PTX for
# the rounding the exactness needs. It found two errors the interpreter let through.
_COMPILE = r'''
import json, os, re, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from embquant.codecs.kernels import gpu, gpu_ops

fusion = json.loads(sys.argv[1])
ENC = {"x_ptr": "*fp32", "n": "i32", "D": "i32", "src0_ptr": "*i32", "coef0_ptr": "*fp32", "src1_ptr": "*i32",
       "coef1_ptr": "*fp32", "bsz_ptr": "*i32", "th_ptr": "*fp32", "lv_ptr": "*fp32", "codes_ptr": "*i64",
       "NW": "i32", "gain_ptr": "*fp32", "status_ptr": "*i8", "unit_scale": "fp32", "Df": "fp32",
       "tol_ptr": "*fp64"}
DEC = {"codes_ptr": "*i64", "n": "i32", "D": "i32", "NW": "i32", "side_ptr": "*fp32", "inv0_ptr": "*i32",
       "sg0_ptr": "*fp32", "inv1_ptr": "*i32", "sg1_ptr": "*fp32", "scale_ptr": "*fp32", "bsz_ptr": "*i32",
       "lv_ptr": "*fp32", "out_ptr": "*fp32", "status_ptr": "*i8", "unit_scale": "fp32"}
ops = re.compile(r"\b((?:fma|div|sqrt|rcp|mul|add|sub)\.[a-z0-9.]+)")
out = []
for d, rot, unit, per_dim, bits in json.loads(sys.argv[2]):
    dp, log_dp, rows = gpu_ops._shape(d)
    v = 64 // bits
    for kernel, sig, ce in (
        (gpu.lloyd_encode, ENC, {}),
        (gpu.lloyd_decode, DEC, {"NWP": gpu_ops._pow2(-(-d // v))}),
    ):
        ce = {"R": rows, "DP": dp, "LOG_DP": log_dp, **ce, "ROTATE": rot, "UNIT": unit, "PER_DIM": per_dim,
              "BITS": bits, "V": v}
        try:  # this call's form is triton's internal API (3.9's here; a GPU machine's may differ)
            src = ASTSource(kernel, {**sig, **{c: "constexpr" for c in ce}}, ce)
        except (TypeError, KeyError, ValueError) as e:
            print("ASTSOURCE", triton.__version__, type(e).__name__, e, file=sys.stderr)
            sys.exit(3)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": fusion})
        out.append(sorted(set(ops.findall(k.asm["ptx"]))) + (["cubin"] if k.asm.get("cubin") else []))
print(json.dumps(out))
'''


def _compiled_ops(cases, fusion=False):
    import json
    import subprocess
    import sys as _sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([_sys.executable, "-c", _COMPILE, json.dumps(fusion), json.dumps(cases)],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode and ("ptxas" in r.stderr and "not found" in r.stderr.lower()):
        pytest.skip("triton's wheel has no ptxas for this platform")
    if r.returncode == 3 and "ASTSOURCE" in r.stderr:
        pytest.skip("this triton's ahead-of-time compile API takes another form: "
                    + r.stderr.split("ASTSOURCE", 1)[1].strip()[:200])
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_compiles_for_sm90_with_ieee_rounding():
    # (D, rotate, unit, per_dim, bits): the shapes gpu_ops launches, every code path
    cases = [(384, True, False, False, 4), (384, True, True, False, 1), (1536, False, False, True, 8),
             (1, True, False, False, 2), (100, True, True, True, 4)]
    for used in _compiled_ops(cases):
        assert "cubin" in used  # ptxas assembled it
        assert not [op for op in used if op.startswith(("fma", "rcp")) or "approx" in op or "full" in op
                    or ".ftz" in op], used
    row_norm = _compiled_ops(cases[:1])[0]
    assert "div.rn.f32" in row_norm and "sqrt.rn.f32" in row_norm
    assert "sqrt.rn.f64" in _compiled_ops(cases[1:2])[0]  # norm='unit''s float64 norm
    # the check has teeth: with Triton's default fusion the same kernel has fused multiply-adds
    assert any(op.startswith("fma.rn") for op in _compiled_ops(cases[:1], fusion=True)[0])


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("params", [{"bits": 4}, {"bits": 1, "norm": "unit"}, {"bits": 8, "mode": "fit_dim"}],
                         ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_worker_batches_on_the_kernels(params):
    """The worker's device side on CUDA with the kernels on: batches of jobs (one large
    enough for a pinned result) give the CPU's codes and decoded floats job by job."""
    from embquant.worker import DecodeJob, EncodeJob
    from embquant.worker import device as dev

    codec = _fitted(params, 384)
    xs = [_rows(n, 384, seed=s, unit=params.get("norm") == "unit").numpy() for n, s in ((1, 1), (37, 2), (1500, 3))]
    got = dev.run_group("encode", [EncodeJob(rows=x.shape[0], timeout_s=60, codec=codec, x=x) for x in xs],
                        torch.device("cuda"))
    dec = dev.run_group("decode", [DecodeJob(rows=r.codes.shape[0], timeout_s=60, codec=codec, codes=r.codes,
                                             side=r.side) for r in got], torch.device("cuda"))
    with kernels.using("numba"):
        for x, r, y in zip(xs, got, dec):
            assert not isinstance(r, Exception) and not isinstance(y, Exception), (r, y)
            codes, side = codecs.encode(codec, torch.from_numpy(x))
            assert np.array_equal(r.codes, codes.numpy())
            assert (side is None and r.side is None) or np.array_equal(r.side.view(np.int32), side.numpy().view(np.int32))
            want = codecs.decode(codec, codes, side)
            assert np.array_equal(y.view(np.int32), want.numpy().view(np.int32))
