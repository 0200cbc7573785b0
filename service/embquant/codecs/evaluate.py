"""A codec advisor: fit each candidate (scheme, params) on one split of a sample and
measure it on another, as /evaluate answers.

Per candidate, on the measured split (N vectors) and the queries (Q):

- ``bits``: bits per dimension as stored, side values counted (``bits_per_vector / D``);
- ``relative_squared_error``: ``sum ||x - y||^2 / sum ||x||^2`` of the decoded vectors;
- ``recall``: recall@k of the decoded vectors (decode then score, `score_exact`)
  against exact float search of the originals; ``recall_scored``: the same for
  `/score`'s estimator (`score`, asymmetric where `score_path` says so);
- ``pool``: the smallest multiple r of k, from `POOL_LADDER`, whose first pass (the
  estimator's best r*k per query) holds a fraction >= `POOL_TARGET` of each query's
  true top k: rescoring that pool with the float vectors (`/score` with
  ``candidates=r*k`` and ``vectors``) then reaches recall@k >= 0.99. None when the
  largest rung does not; ``pool_recall`` lists the fraction at every rung;
- ``encode_rows_per_s``: encode throughput of the measured split, timed in this call;
- ``codec_bytes``: the codec's JSON text (what a client stores and sends).

Each candidate runs under its own time bound (``seconds`` per candidate, the
service's max_fit_seconds): a candidate still fitting or measuring past it is
stopped at its next checkpoint and answered as a row with ``error``; the other
candidates go on. The caller's own scope (deadline, shutdown) is asked first.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import EmbquantError
from . import _cancel
from .base import Codec, Scheme, SchemeParams
from .core import cancel_scope, checkpoint, decode, encode, fit, quality
from .score import score, score_exact, score_path

#: The rescoring pools tried, as multiples of k.
POOL_LADDER = (1, 2, 4, 8, 16)
#: The recall@k a rescoring pool must reach.
POOL_TARGET = 0.99
#: Encode is timed over repeats until this many seconds have passed (at most 10).
TIMING_SECONDS = 0.2


class _OverTime(Exception):
    """A candidate past its own time bound (the evaluation goes on)."""


def _bounded(seconds: float):
    """A cancel scope for one candidate: the enclosing scope's verdict first, then
    the candidate's own deadline."""
    outer = _cancel._state.should_stop
    deadline = time.monotonic() + seconds

    def should_stop() -> BaseException | None:
        if outer is not None:
            e = outer()
            if e is not None:
                return e
        if time.monotonic() > deadline:
            return _OverTime()
        return None

    return cancel_scope(should_stop)


def true_top_k(queries: torch.Tensor, base: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    """int64 (Q, k): exact float64 search of the originals."""
    q, x = queries.double(), base.double()
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-30)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    s = q @ x.T
    if metric == "l2":
        s = (q * q).sum(1, keepdim=True) - 2 * s + (x * x).sum(1)[None, :]
    return torch.sort(s, dim=1, descending=metric != "l2", stable=True).indices[:, :k]


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over queries of |found_q ∩ truth_q| / |truth_q|."""
    f, t = found.cpu().tolist(), truth.cpu().tolist()
    return sum(len(set(a) & set(b)) / len(b) for a, b in zip(f, t)) / max(len(t), 1)


def codec_bytes(codec: Codec) -> int:
    return len(json.dumps(codec.to_json(), separators=(",", ":")))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(scheme: Scheme, params: SchemeParams, fit_x: torch.Tensor, base: torch.Tensor, queries: torch.Tensor,
            truth: torch.Tensor, k: int, metric: str) -> dict[str, Any]:
    """One candidate's row (without ``pareto``); raises what its fit or encode raises."""
    t0 = time.perf_counter()
    codec = fit(scheme, params, fit_x)
    fit_s = time.perf_counter() - t0
    checkpoint()
    n, dev = base.shape[0], base.device
    encode(codec, base[:2])  # untimed: a kernel compiled on first use is not encode speed
    reps, spent = 0, 0.0
    while reps < 10 and (reps == 0 or spent < TIMING_SECONDS):
        _sync(dev)
        t0 = time.perf_counter()
        codes, side = encode(codec, base)
        _sync(dev)
        spent += time.perf_counter() - t0
        reps += 1
        checkpoint()
    y = decode(codec, codes, side)
    err = quality(base, y)["relative_squared_error"]
    del y
    checkpoint()
    deepest = min(POOL_LADDER[-1] * k, n)
    _, pool = score(codec, queries, codes, side, deepest, metric)
    checkpoint()
    path = score_path(codec, dev, metric)
    r_scored = recall(pool[:, :k], truth)
    if path == "exact":
        r_dec = r_scored  # score() is score_exact here: the same top k
    else:
        r_dec = recall(score_exact(codec, queries, codes, side, k, metric)[1], truth)
    ladder = []
    for r in POOL_LADDER:
        ladder.append([r, recall(pool[:, : min(r * k, n)], truth)])
    need = next((r for r, got in ladder if got >= POOL_TARGET), None)
    lay = codec.layout
    return {
        "bits": lay.bits_per_vector() / codec.dim,
        "bits_per_vector": lay.bits_per_vector(),
        "relative_squared_error": err,
        "recall": r_dec,
        "recall_scored": r_scored,
        "score_path": path,
        "pool": need,
        "pool_candidates": None if need is None else min(need * k, n),
        "pool_recall": ladder,
        "encode_rows_per_s": reps * n / max(spent, 1e-9),
        "codec_bytes": codec_bytes(codec),
        "fit_seconds": fit_s,
    }


def naming(e: EmbquantError, index: int, label: str) -> EmbquantError:
    """The same error (class, status, type), its message prefixed by the candidate."""
    out = copy.copy(e)
    out.message = f"candidates[{index}] ({label}): {e.message}"
    out.args = (out.message,)
    return out


def evaluate(candidates: Sequence[tuple[Scheme, SchemeParams, dict[str, Any]]], fit_x: torch.Tensor,
             base: torch.Tensor, queries: torch.Tensor, k: int, metric: str, seconds: float,
             place: Callable[[Scheme, SchemeParams], torch.device] | None = None) -> list[dict[str, Any]]:
    """Rows sorted by bits (then error), each with ``pareto``: on the front of bits
    per dimension (lower is better) against ``recall_scored`` (higher is better).
    ``candidates``: (scheme, params, params as given) each; the row carries the
    scheme's name and the params as given. ``place``: the device each candidate is
    measured on, as the service would run it (the worker's placement); default: the
    tensors' own."""
    truth = true_top_k(queries, base, k, metric)
    on = {fit_x.device: (fit_x, base, queries, truth)}  # the tensors per device, moved once
    rows = []
    for i, (scheme, params, given) in enumerate(candidates):
        row: dict[str, Any] = {"scheme": scheme.name, "params": given}
        dev = fit_x.device if place is None else torch.device(place(scheme, params))
        try:
            with _bounded(seconds):
                if dev not in on:
                    on[dev] = tuple(t.to(dev) for t in on[fit_x.device])
                row.update(measure(scheme, params, *on[dev], k, metric))
        except _OverTime:
            row["error"] = f"stopped after {seconds:g} s (EMBQUANT_MAX_FIT_SECONDS per candidate)"
        except EmbquantError as e:
            if e.type in ("timeout", "unavailable"):
                raise  # the whole evaluation's deadline, or a shutdown
            raise naming(e, i, label(scheme.name, given)) from None
        rows.append(row)
    mark_pareto(rows)
    rows.sort(key=lambda r: (r.get("bits", float("inf")), r.get("relative_squared_error", float("inf"))))
    return rows


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """``pareto``: no other measured row has bits <= and recall_scored >= with one
    of them strictly better. Rows with an error are off the front."""
    ok = [r for r in rows if "error" not in r]
    for r in rows:
        r["pareto"] = "error" not in r and not any(
            o["bits"] <= r["bits"] and o["recall_scored"] >= r["recall_scored"]
            and (o["bits"] < r["bits"] or o["recall_scored"] > r["recall_scored"])
            for o in ok
        )


def label(name: str, params: dict[str, Any]) -> str:
    return name + "".join(f" {k}={v}" for k, v in params.items())


#: Queries held out of a sample sent without them: a tenth, at least 1, at most this many.
MAX_HELD_OUT_QUERIES = 1000


def split(n: int, seed: int, held_out_queries: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Row indices (fit, measured, queries) of an n-row sample: a permutation by
    ``numpy.random.default_rng(seed)``; with ``held_out_queries`` its first
    max(1, min(n // 10, 1000)) rows are the queries; the rest is halved, the first
    half fits each candidate (floor), the second is encoded and measured."""
    order = np.random.default_rng(seed).permutation(n)
    nq = max(1, min(n // 10, MAX_HELD_OUT_QUERIES)) if held_out_queries else 0
    q, rest = order[:nq], order[nq:]
    half = rest.shape[0] // 2
    return rest[:half], rest[half:], (q if held_out_queries else None)


def recommended(dim: int, budget: float, unit_norm: bool) -> list[tuple[str, dict[str, Any]]]:
    """The recommended settings (`codecs.recommended`, the list GET /schemes carries and
    docs/schemes.md explains: one data-oblivious and one fitted per budget of 1, 2, 3,
    4 and 8 bits per dimension) at or under ``budget`` bits per dimension of codes, side
    values not counted (a row's ``bits`` counts them). ``unit_norm``: the sample's
    vectors all have norm 1 (to 1e-3); otherwise `lloyd` and `tcq` store their gain
    (``norm="row"``). A setting that cannot take this width is left out."""
    from .recommended import for_budget
    from .registry import get_scheme
    from .transform import MAX_DIM as TRANSFORM_MAX_DIM

    out = []
    for name, params in for_budget(budget, unit_norm):
        if name == "transform" and dim > TRANSFORM_MAX_DIM:
            continue  # its fit refuses such widths (the D x D basis)
        scheme = get_scheme(name)
        try:
            scheme.layout(scheme.Params(**params), dim)
        except (EmbquantError, ValueError):
            continue  # not for this width (transform beyond its largest D, say)
        out.append((name, params))
    return out
