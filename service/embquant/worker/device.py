"""The device side: runs one group of jobs (same kind, same codec) as one batch on
one device, in the worker's device thread, and a fit in a fit thread. Pure
functions of numpy in, numpy out.

A batch that raises is retried job by job, so one poisoned job fails alone; a
CUDA out-of-memory error splits the batch in halves first.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .. import codecs
from ..codecs import kernels
from ..errors import EmbquantError

log = logging.getLogger("embquant.worker")


class DeviceUnavailable(RuntimeError):
    """EMBQUANT_DEVICE=cuda where CUDA cannot run: the service does not start."""


@functools.lru_cache(maxsize=1)
def cuda_problem() -> str | None:
    """Why CUDA cannot run in this process, in torch's own words where it has them
    (torch built without CUDA, no device visible, a driver too old for this torch's
    CUDA, a GPU this build has no kernels for); None when it can. Probed once."""
    built = f"torch {torch.__version__}"
    if torch.version.cuda is None:
        return f"{built} is built without CUDA (a CPU-only build)"
    built += f" (built for CUDA {torch.version.cuda})"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = "" if visible is None else f"; CUDA_VISIBLE_DEVICES={visible!r}"
    try:
        torch.cuda.init()  # raises with the driver's or the runtime's reason
        count = torch.cuda.device_count()
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError or AssertionError here
        return f"{built} cannot initialise CUDA: {' '.join(str(e).split())}{seen}"
    if count == 0:
        return f"{built} sees no CUDA device{seen}"
    try:
        (torch.ones(1, device="cuda") + 1).item()  # a GPU too old for this build fails here
    except Exception as e:  # noqa: BLE001
        major, minor = torch.cuda.get_device_capability(0)
        return (f"{built} cannot run on {torch.cuda.get_device_name(0)} (compute capability {major}.{minor}; "
                f"this build has kernels for {', '.join(torch.cuda.get_arch_list()) or 'none'}): "
                f"{' '.join(str(e).split())}")
    return None


def pick_device(name: str) -> torch.device:
    """``cpu``; ``cuda`` (DeviceUnavailable, saying why, where CUDA cannot run); or
    ``auto``: CUDA where it can run, else the CPU, logged with the reason."""
    if name == "cpu":
        return torch.device("cpu")
    why = cuda_problem()
    if why is None:
        return torch.device("cuda")
    if name == "cuda":
        fix = ("install a CUDA build of torch" if torch.version.cuda is None else
               "make a GPU visible to the process, and give it a driver for this CUDA line (or install the "
               "torch build for the CUDA line its driver supports)")
        raise DeviceUnavailable(f"EMBQUANT_DEVICE=cuda, but CUDA cannot run here: {why}. To use the GPU, {fix}; "
                                "to run on the CPU, set EMBQUANT_DEVICE=auto or cpu")
    (log.info if torch.version.cuda is None else log.warning)("EMBQUANT_DEVICE=auto: running on the CPU: %s", why)
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


#: Results of at least this many bytes come off a CUDA device into page-locked (pinned)
#: host memory: a copy into ordinary pageable memory ran at 1.4 GB/s on an H100
#: (docs/throughput-cuda.md), where a pinned destination takes the copy at the bus's
#: speed. torch's caching host allocator keeps freed pinned blocks for the next
#: batch, so a steady stream of batches pins no new memory; the pool keeps the
#: largest results' size pinned for the life of the process.
PINNED_BYTES = 1 << 16


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    t = t.detach()
    if t.device.type == "cuda" and t.numel() * t.element_size() >= PINNED_BYTES:
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        out.copy_(t)  # synchronous: the batch's kernels and the copy are done on return
        return out.numpy()  # a view: the pinned block is reused once every view of it is gone
    return t.cpu().numpy()


#: Schemes whose encode is a sequential loop per row (tcq's and transform trellis's
#: Viterbi pass over the coordinates, bitcodes' sweeps over the bits): eager torch on a
#: GPU runs them as thousands of small launches, and an H100 encoded 0.04 GB/s of
#: tcq, transform trellis and bitcodes (tcq decodes 0.18) where the compiled CPU kernels
#: do 0.2-1 (decode 2-3) on 2 cores (docs/throughput-cuda.md, docs/throughput.md).
#: On a CUDA device their encodes, decodes, scores and fits run on the host's compiled
#: kernels: the same codes on every device (tested), so only the speed changes.
HOST_SCHEMES = ("tcq", "bitcodes")


def host_bound(scheme: str, params: Any) -> bool:
    """Whether a (scheme, params) runs faster on the host's compiled kernels than in
    eager torch on a GPU: `HOST_SCHEMES`, and transform with trellis=true."""
    return scheme in HOST_SCHEMES or (scheme == "transform" and bool(getattr(params, "trellis", False)))


def placed(scheme: str, params: Any, device: torch.device) -> torch.device:
    """Where a job of this (scheme, params) runs: the CPU for a host-bound one on a CUDA
    device while the compiled CPU kernels are active, else ``device``."""
    if device.type == "cuda" and host_bound(scheme, params) and kernels.active() == "numba":
        return torch.device("cpu")
    return device


def _split(a: np.ndarray | None, sizes: Sequence[int]) -> list[np.ndarray | None]:
    """Each job's rows of a batch result, as views (np.split's, by slicing: np.split
    cost about 20 us a call, a tenth of a single-vector batch's time on the device thread)."""
    if a is None:
        return [None] * len(sizes)
    if len(sizes) == 1:
        return [a]
    out, lo = [], 0
    for n in sizes:
        out.append(a[lo:lo + n])
        lo += n
    return out


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
    codec = jobs[0].codec  # a group shares its codec
    device = placed(codec.scheme.name, codec.params, device)
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
                       None if job.vectors is None else _to_dev(job.vectors, device),
                       job.first_pass)
        return ScoreResult(_np(s), _np(i))
    s, i = codecs.score(job.codec, _to_dev(job.queries, device), _to_dev(job.codes, device),
                        None if job.side is None else _to_dev(job.side, device), job.k, job.metric)
    return ScoreResult(_np(s), _np(i))


def run_fit(job: Any, device: torch.device) -> Any:
    """A FitJob: the codec, or with ``job.encode`` the EncodeResult of its own rows."""
    device = placed(job.scheme.name, job.params, device)
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


def run_evaluate(job: Any, device: torch.device) -> list[dict[str, Any]]:
    """An EvaluateJob: its table's rows (`codecs.evaluate`)."""
    from ..codecs.evaluate import evaluate

    host = torch.device("cpu")
    with torch.inference_mode():  # each candidate on the device it would run on (`placed`)
        return evaluate(job.candidates, _to_dev(job.fit_x, host), _to_dev(job.base, host),
                        _to_dev(job.queries, host), job.k, job.metric, job.seconds,
                        place=lambda scheme, params: placed(scheme.name, params, device))


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


def select_kernels(name: str, gpu: str = "torch") -> None:
    """Pick the CPU codec kernels (settings.kernels) and the CUDA ones (settings.gpu_kernels),
    and say which run."""
    active = kernels.set_backend(name)
    log.info("CPU codec kernels: %s (asked for %s)", active, name)
    on_cuda = kernels.set_gpu_backend(gpu)
    if gpu != "torch" or torch.cuda.is_available():
        log.info("CUDA codec kernels: %s (asked for %s)", on_cuda, gpu)


def warm_up(device: torch.device) -> None:
    """Touch the device and the hot code paths once, so the first request is not slow.

    With the compiled CPU kernels this loads them from numba's on-disk cache, or
    compiles them on the first start after an install (100 s or so on
    2 cores; the Docker images do it at build time). The worker runs it in a thread of
    its own by default, answering on the reference meanwhile (settings.kernel_warm_up)."""
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).to(device)
    x = x / x.norm(dim=1, keepdim=True)
    for name, params in (("lloyd", {}), ("lloyd", {"norm": "unit"}), ("absmax", {}), ("absmax", {"rotate": True}),
                         ("distributional", {}), ("transform", {}), ("affine", {}), ("blockwise", {}),
                         # tcq: its kernels (its levels are constants)
                         ("tcq", {}), ("tcq", {"norm": "unit"}), ("transform", {"trellis": True}),
                         ("hqq", {}), ("bitcodes", {"num_bits": 8, "iterations": 1})):  # their optimiser and encoder kernels
        c = codecs.fit(name, params, x)
        codes, side = codecs.encode(c, x)
        codecs.decode(c, codes, side)
    # /score's kernels: tables (one query), bound (1 bit, several), levels (many), every
    # score (k=None), the row norms of l2, tcq's walk, the Hamming first pass
    from ..codecs.score import rescore

    q = x.repeat(4, 1)
    for name, params in (("binary", {}), ("lloyd", {"bits": 4}), ("tcq", {})):
        c = codecs.fit(name, params, x)
        codes, side = codecs.encode(c, x)
        for nq, k, metric in ((1, 2, "dot"), (2, 2, "dot"), (16, 2, "l2"), (2, None, "dot")):
            codecs.score(c, q[:nq], codes, side, k, metric)
        if name == "binary":
            rescore(c, q[:2], codes, side, 2, "dot", 3, first_pass="hamming")
