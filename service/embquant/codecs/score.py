"""Scores of float queries against codes: the top k per query, or every score, for
``dot``, ``cosine`` or ``l2`` (squared Euclidean distance, smallest first).

This is the exact path, decode then score, done in row chunks so the decoded N x D
matrix never exists whole: each chunk of codes is decoded (by the same `decode` the
service answers with), scored against every query with one matrix product, and merged
into a running top k. Ties keep the lower index first, so the answer does not depend
on the chunking. Asymmetric scoring on the packed codes (lookup tables, popcount) is
to come, and will be checked against this.
"""

from __future__ import annotations

import torch

from ..errors import CodecMismatch, InvalidInput
from .base import Codec
from .core import decode

METRICS = ("dot", "cosine", "l2")
#: Decoded values per chunk (float32): bounds the scoring's memory whatever N is.
SCORE_CHUNK_VALUES = 1 << 22


def score(codec: Codec, queries: torch.Tensor, codes: torch.Tensor, side: torch.Tensor | None,
          k: int | None, metric: str = "dot") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scores, indices): with ``k``, float32 (Q, min(k, N)) and int64 (Q, min(k, N)),
    best first; with ``k=None``, every score, float32 (Q, N), and None."""
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
        y = decode(codec, codes[lo:hi], None if side is None else side[lo:hi]).to(q.device, torch.float64)
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
