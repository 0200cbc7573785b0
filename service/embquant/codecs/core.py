"""The codec verbs every caller uses, with the checks around them:

- ``fit(scheme, params, x)`` -> Codec (learns from x where the scheme is data dependent)
- ``encode(codec, x)`` -> (codes int64 (N, W), side float32 (N, G) or None)
- ``decode(codec, codes, side)`` -> float32 (N, D)

Each verb runs the scheme's torch code (the reference) or, on the CPU with the
numba backend, a compiled kernel that gives the same bits (`codecs.kernels`):
fused (rotation, the scheme's work and packing in one pass) for the schemes that
have one; hqq, bitcodes and tcq above 4 bits have kernels of their own for the
scheme's work, called from their torch code, with compiled rotation and packing
around them.

A fit can be stopped from outside: run it under ``cancel_scope(should_stop)`` and
it raises the exception ``should_stop()`` returns at its next `checkpoint()`
(see `codecs._cancel`; every iterative loop of a fit calls one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import CodecMismatch
from . import kernels, packing, rotation
from ._cancel import cancel_scope, checkpoint  # noqa: F401  (cancel_scope: re-exported)
from .base import Codec, Scheme, SchemeParams, require_state
from .checks import RANGE_ERROR, all_finite, check_code_shapes, check_vectors, padding_error, symbol_error
from .registry import get_scheme, parse_params


def _cpu_ops():
    from .kernels import cpu_ops

    return cpu_ops


def _gpu_ops():
    from .kernels import gpu_ops

    return gpu_ops


def _rotated(params: SchemeParams) -> bool:
    return bool(getattr(params, "rotate", False))


# -- centring: every scalar scheme's ``center`` option -----------------------------------
#: The codec state array of a centred codec: the fitted sample's mean, float32 (dim,).
CENTER = "center"


def centred(params: SchemeParams) -> bool:
    return bool(getattr(params, "center", False))


def learns(scheme: Scheme, params: SchemeParams) -> bool:
    """True when a fit with these parameters depends on the sample: the scheme's own
    answer, or a centred codec (it learns the mean)."""
    return scheme.learns(params) or centred(params)


def state_bytes(scheme: Scheme, params: SchemeParams, dim: int) -> int | None:
    """The scheme's bound of the state a fit can learn, plus the mean of a centred codec."""
    bound = scheme.state_bytes(params, dim)
    extra = 4 * dim if centred(params) else 0
    return None if bound is None else bound + extra


def check_state(codec: Codec) -> None:
    """The state arrays this codec needs, by its scheme (``check_state``) and by
    centring; `codec_from_json` refuses whatever none of them names."""
    if centred(codec.params):
        require_state(codec, CENTER, (codec.dim,))
    check = getattr(codec.scheme, "check_state", None)
    if check is not None:
        check(codec)


def _sample_mean(x: torch.Tensor) -> np.ndarray:
    """The rows' mean, float32: float64 sums of row chunks in order (numpy's reduction
    over rows, one thread), so the same sample gives the same bits on any machine."""
    total = np.zeros(x.shape[1], np.float64)
    step = max(1, CHUNK_VALUES // max(x.shape[1], 1))
    for lo in range(0, x.shape[0], step):
        checkpoint()
        total += np.add.reduce(x[lo:lo + step].detach().cpu().double().numpy(), axis=0)
    return (total / max(x.shape[0], 1)).astype(np.float32)


def _mean_of(codec: Codec, device) -> torch.Tensor:
    return codec.tensors(device)[CENTER]


def _uncentre(codec: Codec, y: torch.Tensor) -> torch.Tensor:
    return y + _mean_of(codec, y.device) if centred(codec.params) else y


def _forward(params: SchemeParams, x: torch.Tensor) -> torch.Tensor:
    if not _rotated(params):
        return x
    if kernels.compiled(x) and x.dtype == torch.float32:
        return torch.from_numpy(_cpu_ops().rotate(x.numpy(), params.rotation_seed))
    return rotation.forward(x, params.rotation_seed)


def _inverse(params: SchemeParams, y: torch.Tensor) -> torch.Tensor:
    if not _rotated(params):
        return y
    if kernels.compiled(y) and y.dtype == torch.float32:
        return torch.from_numpy(_cpu_ops().rotate(y.numpy(), params.rotation_seed, inverse=True))
    return rotation.inverse(y, params.rotation_seed)


def _pack(sym: torch.Tensor, bits: int) -> torch.Tensor:
    if kernels.compiled(sym):
        return torch.from_numpy(_cpu_ops().pack(sym.numpy(), bits))
    return packing.pack(sym, bits)


def fit(scheme: str | Scheme, params: dict[str, Any] | SchemeParams, x: torch.Tensor) -> Codec:
    s = get_scheme(scheme) if isinstance(scheme, str) else scheme
    p = parse_params(s, params)
    check_vectors(x)
    checkpoint()  # a fit whose caller already gave up does not start
    x = x.float()
    mean = None
    if centred(p):
        mean = _sample_mean(x)
        x = x - torch.from_numpy(mean).to(x.device)
    xf = _forward(p, x)
    checkpoint()
    resolved, state = s.fit(p, xf)
    if mean is not None:
        state = {**state, CENTER: mean}
    codec = Codec(s, resolved, int(x.shape[1]), state)
    check_state(codec)
    return codec


#: Values (inputs or symbols) one pass of a scheme's reference path handles: larger
#: batches go in row chunks, which bounds memory whatever the batch, and changes no
#: result (encoding and decoding are pure functions of each row). On a GPU, large
#: chunks keep the device busy; on the CPU the reference's temporaries are the cost
#: (hqq's encode holds some 35 times its chunk), so its chunks are smaller there.
CHUNK_VALUES = 1 << 24
CPU_CHUNK_VALUES = 1 << 20


def _row_spans(rows: int, per_row: int, device=None) -> list[tuple[int, int]]:
    per_chunk = CPU_CHUNK_VALUES if device is None or torch.device(device).type == "cpu" else CHUNK_VALUES
    step = max(1, per_chunk // max(per_row, 1))
    return [(lo, min(rows, lo + step)) for lo in range(0, rows, step)]


def encode(codec: Codec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if centred(codec.params):
        # the shape first; NaN/Inf (and an overflow of the subtraction) are found in the
        # centred rows by the checks below, as in any other input
        check_vectors(x, codec.dim, finite=False)
        # float32 elementwise: the same bits on every path and device
        x = x.float() - _mean_of(codec, x.device)
    if kernels.compiled(x) and _cpu_ops().has_fused(codec):
        check_vectors(x, codec.dim, finite=False)  # the kernel checks NaN/Inf in its pass
        codes, side = _cpu_ops().encode(codec, x.detach().float().contiguous().numpy())
        _check_side_out(side)
        return torch.from_numpy(codes), (None if side is None else torch.from_numpy(side))
    if kernels.on_gpu(x) and _gpu_ops().has_fused(codec):
        check_vectors(x, codec.dim, finite=False)  # the kernel checks NaN/Inf in its pass
        got = _gpu_ops().encode(codec, x.detach().float().contiguous())
        if got is not None:  # None: the kernel could not run (logged); the reference below
            _check_side_out(got[1])
            return got
    check_vectors(x, codec.dim)
    spans = _row_spans(x.shape[0], max(codec.dim, codec.layout.symbols), x.device)
    if len(spans) == 1:
        return _encode(codec, x)
    parts = [_encode(codec, x[lo:hi]) for lo, hi in spans]
    codes = torch.cat([c for c, _ in parts])
    return codes, (None if parts[0][1] is None else torch.cat([s for _, s in parts]))


def _encode(codec: Codec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    lay = codec.layout
    sym, side = codec.scheme.encode(codec, _forward(codec.params, x.float()))
    if sym.shape != (x.shape[0], lay.symbols):
        raise RuntimeError(f"{codec.scheme.name}: encode gave symbols {tuple(sym.shape)}, layout says {lay}")
    if side is not None:
        side = side.float()
        _check_side_out(side)
    return _pack(sym, lay.bits), side


def _check_side_out(side: torch.Tensor | np.ndarray | None) -> None:
    """Side values an encoder made (a tensor on any device, or a kernel's array) must be finite."""
    if side is None:
        return
    if not all_finite(side):
        raise CodecMismatch("encoding gave non-finite side values: the codec's state is out of range (corrupted codec?)")


def check_codes(codec: Codec, codes: torch.Tensor, side: torch.Tensor | None, row0: int = 0) -> torch.Tensor:
    """Validate codes and side values against the codec; return the unpacked symbols.

    Order: shapes and side values, then every word's unused bits, then symbols
    against the codec's level count (the first bad row is named; ``row0``: the index
    of ``codes``' first row in the caller's array, when it checks a chunk)."""
    check_code_shapes(codec, codes, side)
    lay = codec.layout
    if kernels.compiled(codes):
        sym_np, status = _cpu_ops().unpack(codes.numpy(), lay.bits, lay.symbols)
        if status.any():
            raise padding_error(row0 + int(np.flatnonzero(status)[0]))
        sym = torch.from_numpy(sym_np)
    else:
        sym = packing.unpack(codes, lay.bits, lay.symbols)
        bad = ~packing.padding_is_clean(codes, lay.bits, lay.symbols)
        if bool(bad.any()):
            raise padding_error(row0 + int(bad.nonzero()[0, 0]))
    if lay.levels is not None and lay.levels < (1 << lay.bits):
        over = sym >= lay.levels
        if bool(over.any()):
            r, c = (int(v) for v in over.nonzero()[0])
            raise symbol_error(row0 + r, c, int(sym[r, c]), lay.levels)
    return sym


def decode(codec: Codec, codes: torch.Tensor, side: torch.Tensor | None, row0: int = 0) -> torch.Tensor:
    """``row0``: the index of ``codes``' first row in the caller's array (a caller that
    decodes in chunks), so an error names the row the caller knows."""
    if kernels.compiled(codes) and _cpu_ops().has_fused(codec):
        check_code_shapes(codec, codes, side)
        ops = _cpu_ops()
        out, status = ops.decode(codec, codes.numpy(), None if side is None else side.float().numpy())
        if status.any():
            ops.raise_decode_status(codec, codes.numpy(), status, row0)
        y = torch.from_numpy(out)
        # the kernel's status covers its own range checks: only adding a mean can overflow
        return _finite(_uncentre(codec, y)) if centred(codec.params) else y
    if kernels.on_gpu(codes) and _gpu_ops().has_fused(codec):
        check_code_shapes(codec, codes, side)
        ops = _gpu_ops()
        got = ops.decode(codec, codes, None if side is None else side.float())
        if got is not None:  # None: the kernel could not run (logged); the reference below
            y, status = got
            ops.raise_decode_status(codec, status, row0)
            return _finite(_uncentre(codec, y)) if centred(codec.params) else y
    spans = _row_spans(codes.shape[0] if codes.dim() == 2 else 0, max(codec.dim, codec.layout.symbols), codes.device)
    if len(spans) <= 1:
        return _decode(codec, codes, side, row0)
    return torch.cat([_decode(codec, codes[lo:hi], None if side is None else side[lo:hi], row0 + lo)
                      for lo, hi in spans])


def _decode(codec: Codec, codes: torch.Tensor, side: torch.Tensor | None, row0: int = 0) -> torch.Tensor:
    sym = check_codes(codec, codes, side, row0)
    lay = codec.layout
    out = codec.scheme.decode(codec, sym, side.float() if (side is not None and lay.side_values) else None)
    return _finite(_uncentre(codec, _inverse(codec.params, out.float())))


def _finite(out: torch.Tensor) -> torch.Tensor:
    if not all_finite(out):
        raise CodecMismatch(RANGE_ERROR)
    return out


def quality(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Relative squared error and mean cosine similarity of originals x and reconstructions y."""
    x = x.double()
    y = y.double()
    err = ((x - y) ** 2).sum()
    ref = (x**2).sum().clamp_min(1e-300)
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-12)
    return {"relative_squared_error": float(err / ref), "mean_cosine": float(cos.mean())}
