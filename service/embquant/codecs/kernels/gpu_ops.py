"""The Triton backend's entry points (`gpu`): torch tensors on a CUDA device in and out,
errors as the reference's.

`encode` / `decode` run the fused kernels for the codecs `has_fused` accepts and
return None for the rest, which then take the reference path. The tables a kernel
reads (the rotation's, the thresholds and levels) are built once per codec and
device (`Codec.derived`). Under TRITON_INTERPRET=1 the same calls run in Triton's
interpreter on CPU tensors (the tests, on a machine without a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import CodecMismatch
from .. import checks, rotation
from ..lloyd import UNIT_TOLERANCE, gaussian_tables
from . import gpu, triton_failed
from .status import BAD_PADDING, raise_encode_status

_WIDTHS = (1, 2, 4, 8)  # bits whose words hold a power of two of symbols


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def has_fused(codec) -> bool:
    """Whether this codec's encode and decode have Triton kernels."""
    return codec.scheme.name == "lloyd" and codec.params.bits in _WIDTHS and codec.dim <= gpu.MAX_DIM


def _shape(d: int) -> tuple[int, int, int]:
    """(DP, log2 DP, rows per program) for rows of d values."""
    dp = _pow2(d)
    return dp, dp.bit_length() - 1, max(1, gpu.LANES_PER_PROGRAM // dp)


def _rotation(params, d: int, device):
    """Padded (DP,) tables of both rounds, forward and inverse, on the device."""
    dp = _pow2(d)
    signs, perm, inv, blocks, scales = rotation.kernel_tables(params.rotation_seed, d)
    bsz = np.zeros(dp, np.int32)
    scale = np.ones(dp, np.float32)
    lo = 0
    for b, sc in zip(blocks, scales):
        bsz[lo:lo + b] = b
        if b > 1:  # a block of one is not scaled
            scale[lo:lo + b] = sc
        lo += b
    t = {"bsz": bsz, "scale": scale}
    for r in range(2):
        src = np.arange(dp, dtype=np.int32)
        src[:d] = perm[r]
        coef = np.zeros(dp, np.float32)
        coef[:d] = signs[r][perm[r]] * scale[:d]  # a sign times the scale: exact
        back = np.arange(dp, dtype=np.int32)
        back[:d] = inv[r]
        sg = np.zeros(dp, np.float32)
        sg[:d] = signs[r]
        t.update({f"src{r}": src, f"coef{r}": coef, f"inv{r}": back, f"sg{r}": sg})
    return {k: torch.from_numpy(v).to(device) for k, v in t.items()}


def _plan(codec, device):
    def make():
        p = codec.params
        if p.mode == "gaussian":
            th, lv, _ = gaussian_tables(p.bits)
        else:
            th, lv = codec.state["thresholds"], codec.state["levels"]
        th = np.ascontiguousarray(th, dtype=np.float32)
        lv = np.ascontiguousarray(lv, dtype=np.float32)
        plan = {
            "th": torch.from_numpy(th).to(device),
            "lv": torch.from_numpy(lv).to(device),
            "per_dim": th.ndim == 2,
            "tol": torch.tensor([UNIT_TOLERANCE], dtype=torch.float64, device=device),
        }
        # the rotation's tables (read only when p.rotate: the kernels compile the rotation out otherwise)
        plan.update(_rotation(p, codec.dim, device))
        return plan

    return codec.derived(("triton-lloyd", str(device)), make)


def encode(codec, x: torch.Tensor):
    """(codes (N, W) int64, gain (N, 1) float32 or None) of float32 rows x (N, D),
    C-contiguous, shape already checked; NaN/Inf and norm='unit' are checked here.
    None when the kernel could not compile or launch (logged once; the reference then
    runs for good)."""
    n, d = x.shape
    p = codec.params
    t = _plan(codec, x.device)
    lay = codec.layout
    unit = p.norm == "unit"
    codes = torch.empty((n, lay.words), dtype=torch.int64, device=x.device)
    gain = torch.empty((n, 1), dtype=torch.float32, device=x.device)
    status = torch.empty(n, dtype=torch.int8, device=x.device)
    dp, log_dp, rows = _shape(d)
    try:
        gpu.lloyd_encode[(-(-n // rows),)](
            x, n, d, t["src0"], t["coef0"], t["src1"], t["coef1"], t["bsz"], t["th"], t["lv"],
            codes, lay.words, gain, status, float(np.float32(math.sqrt(d))), float(np.float32(d)), t["tol"],
            R=rows, DP=dp, LOG_DP=log_dp, ROTATE=bool(p.rotate), UNIT=unit, PER_DIM=t["per_dim"], BITS=p.bits,
            V=64 // p.bits, enable_fp_fusion=False,
        )
    except Exception as e:  # noqa: BLE001 - it did not compile or launch: the reference answers
        triton_failed(e)
        return None
    raise_encode_status(codec, x, status)
    return codes, (None if unit else gain)


def decode(codec, codes: torch.Tensor, side: torch.Tensor | None):
    """(out (N, D) float32, status (N,) int8) of codes (N, W) int64 (shapes checked) and
    side values (N, 1) float32 (norm row); None as in `encode`."""
    n = codes.shape[0]
    d = codec.dim
    p = codec.params
    codes = codes.to(torch.int64).contiguous()  # as `packing.unpack` reads them, whatever their dtype
    t = _plan(codec, codes.device)
    lay = codec.layout
    unit = p.norm == "unit"
    out = torch.empty((n, d), dtype=torch.float32, device=codes.device)
    status = torch.empty(n, dtype=torch.int8, device=codes.device)
    side_arg = side.float().contiguous() if not unit else torch.zeros(1, dtype=torch.float32, device=codes.device)
    dp, log_dp, rows = _shape(d)
    try:
        gpu.lloyd_decode[(-(-n // rows),)](
            codes, n, d, lay.words, side_arg, t["inv0"], t["sg0"], t["inv1"], t["sg1"], t["scale"],
            t["bsz"], t["lv"], out, status, float(np.float32(1.0 / math.sqrt(d))),
            R=rows, DP=dp, LOG_DP=log_dp, NWP=_pow2(lay.words), ROTATE=bool(p.rotate), UNIT=unit,
            PER_DIM=t["per_dim"], BITS=p.bits, V=64 // p.bits, enable_fp_fusion=False,
        )
    except Exception as e:  # noqa: BLE001 - as in `encode`
        triton_failed(e)
        return None
    return out, status


def raise_decode_status(codec, status: torch.Tensor, row0: int = 0) -> None:
    """The reference's error for the first bad row (bad padding anywhere before a range
    error); ``row0``: the index of the codes' first row in the caller's array."""
    if not bool(status.any()):
        return
    st = status.cpu().numpy()
    pad = np.flatnonzero(st == BAD_PADDING)
    if pad.size:
        raise checks.padding_error(row0 + int(pad[0]))
    raise CodecMismatch(checks.RANGE_ERROR)
