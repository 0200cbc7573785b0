"""The device side: runs one group of jobs (same kind, same codec) as one batch on
one device, in the worker's device thread, and a fit in a fit thread. Pure
functions of numpy in, numpy out.

A batch that raises is retried job by job, so one poisoned job fails alone; a
CUDA out-of-memory error splits the batch in halves first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .. import codecs
from ..codecs import kernels
from ..errors import EmbquantError

log = logging.getLogger("embquant.worker")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("EMBQUANT_DEVICE=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class EncodeResult:
    codes: np.ndarray
    side: np.ndarray | None
    codec: codecs.Codec
    quality: dict[str, float] | None = None


def _to_dev(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device, non_blocking=False) if device.type != "cpu" else t


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def _split(a: np.ndarray | None, sizes: Sequence[int]) -> list[np.ndarray | None]:
    if a is None:
        return [None] * len(sizes)
    return np.split(a, np.cumsum(sizes)[:-1])


def run_group(op: str, jobs: Sequence[Any], device: torch.device) -> list[Any]:
    """Results (or exceptions) per job, in order."""
    try:
        return _run(op, jobs, device)
    except Exception as e:  # noqa: BLE001 - confined below, never swallowed
        if len(jobs) == 1:
            if not isinstance(e, EmbquantError):
                log.exception("%s failed on %s", op, device)
            return [e]
        if isinstance(e, torch.OutOfMemoryError):
            log.warning("out of memory on a batch of %d jobs; splitting", len(jobs))
            torch.cuda.empty_cache()
            half = len(jobs) // 2
            return run_group(op, jobs[:half], device) + run_group(op, jobs[half:], device)
        return [r for j in jobs for r in run_group(op, [j], device)]


def _run(op: str, jobs: Sequence[Any], device: torch.device) -> list[Any]:
    with torch.inference_mode():
        if op == "encode":
            return _encode(jobs, device)
        if op == "decode":
            return _decode(jobs, device)
        if op == "score":
            return [_score(j, device) for j in jobs]
    raise ValueError(f"unknown op {op!r}")


@dataclass
class ScoreResult:
    scores: np.ndarray
    indices: np.ndarray | None


def _score(job: Any, device: torch.device) -> ScoreResult:
    if getattr(job, "candidates", None) is not None:
        from ..codecs.score import rescore

        s, i = rescore(job.codec, _to_dev(job.queries, device), _to_dev(job.codes, device),
                       None if job.side is None else _to_dev(job.side, device), job.k, job.metric, job.candidates,
                       None if job.vectors is None else _to_dev(job.vectors, device))
        return ScoreResult(_np(s), _np(i))
    s, i = codecs.score(job.codec, _to_dev(job.queries, device), _to_dev(job.codes, device),
                        None if job.side is None else _to_dev(job.side, device), job.k, job.metric)
    return ScoreResult(_np(s), _np(i))


def run_fit(job: Any, device: torch.device) -> Any:
    """A FitJob: the codec, or with ``job.encode`` the EncodeResult of its own rows."""
    try:
        with torch.inference_mode():
            codec = codecs.fit(job.scheme, job.params, _to_dev(job.x, device))
            if not job.encode:
                return codec
            job.codec = codec
            return _encode([job], device)[0]
    except Exception as e:
        if not isinstance(e, EmbquantError):
            log.exception("fit of %s failed on %s", job.scheme.name, device)
        raise


def _encode(jobs: Sequence[Any], device: torch.device) -> list[EncodeResult]:
    codec = jobs[0].codec
    x = _to_dev(np.concatenate([j.x for j in jobs]) if len(jobs) > 1 else jobs[0].x, device)
    codes, side = codecs.encode(codec, x)
    per_job_quality = None
    if any(j.quality for j in jobs):
        y = codecs.decode(codec, codes, side)
        sizes = [j.rows for j in jobs]
        xs, ys = torch.split(x, sizes), torch.split(y, sizes)
        per_job_quality = [codecs.quality(a, b) if j.quality else None for j, a, b in zip(jobs, xs, ys)]
    sizes = [j.rows for j in jobs]
    cs, ss = _split(_np(codes), sizes), _split(_np(side), sizes)
    return [
        EncodeResult(c, s, codec, per_job_quality[i] if per_job_quality else None)
        for i, (c, s) in enumerate(zip(cs, ss))
    ]


def _decode(jobs: Sequence[Any], device: torch.device) -> list[np.ndarray]:
    codec = jobs[0].codec
    cat = (lambda xs: np.concatenate(xs)) if len(jobs) > 1 else (lambda xs: xs[0])
    codes = _to_dev(cat([j.codes for j in jobs]), device)
    side = None if jobs[0].side is None else _to_dev(cat([j.side for j in jobs]), device)
    y = codecs.decode(codec, codes, side)
    return _split(_np(y), [j.rows for j in jobs])


def select_kernels(name: str) -> None:
    """Pick the CPU codec kernels (settings.kernels) and say which run."""
    active = kernels.set_backend(name)
    log.info("CPU codec kernels: %s (asked for %s)", active, name)


def warm_up(device: torch.device) -> None:
    """Touch the device and the hot code paths once, so the first request is not slow.

    With the compiled CPU kernels this loads them from numba's on-disk cache, or
    compiles them on the first start after an install (about a minute on 2 cores;
    the Docker images do it at build time)."""
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).to(device)
    x = x / x.norm(dim=1, keepdim=True)
    for name, params in (("lloyd", {}), ("lloyd", {"norm": "unit"}), ("absmax", {}), ("absmax", {"rotate": True}),
                         ("distributional", {})):
        c = codecs.fit(name, params, x)
        codes, side = codecs.encode(c, x)
        codecs.decode(c, codes, side)
