"""Status codes a kernel reports per row (every backend's), and the reference's error
for the first bad row an encode reported."""

OK = 0
BAD_PADDING = 1  # unused bits of a word are not zero
BAD_SYMBOL = 2  # a symbol at or above the codec's level count
NOT_FINITE = 3  # the input row, or the decoded row, is not finite
NOT_UNIT = 4  # norm='unit' and the row's norm is off by more than the tolerance
EXTRA_BITS = 5  # transform: a row carries bits past the ones the codec's allocation uses


def raise_encode_status(codec, x, status) -> None:
    """Raise the reference's error for the first row an encode kernel marked (NaN/Inf, or
    norm='unit' with the row's norm off); nothing when every row is OK. ``x``: the rows
    the kernel was given, ``status``: its codes per row (numpy arrays or tensors on any
    device; a tensor's status comes to the host, n bytes)."""
    import numpy as np
    import torch

    from ...errors import InvalidInput
    from .. import rotation
    from .._scalar import fixed_sum
    from ..lloyd import unit_norm_error

    st = status.cpu().numpy() if isinstance(status, torch.Tensor) else status
    bad = np.flatnonzero(st)
    if not bad.size:
        return
    i = int(bad[0])
    if st[i] == NOT_FINITE:
        raise InvalidInput("vectors hold NaN or Inf")
    if st[i] == NOT_UNIT:
        row = torch.as_tensor(x[i : i + 1]).float().cpu()
        if getattr(codec.params, "rotate", False):
            row = rotation.forward(row, codec.params.rotation_seed)
        # the norm as the reference's check takes it (`lloyd._check_unit`)
        raise unit_norm_error(i, float(fixed_sum(row.double().square(), dim=1).sqrt()))
    raise RuntimeError(f"encode kernel reported status {int(st[i])} for row {i}")
