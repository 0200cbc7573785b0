"""Fast paths of the codec core, one op several backends, one reference.

The torch code in the scheme modules is the reference implementation (eager, any
device). A backend here implements some of the same operations faster for one
device and must give bit-identical codes, side values and decoded floats; the
tests run every backend against the reference for every scheme it covers.

Backends:

- ``torch``: no fast path; everything runs the reference code.
- ``numba``: compiled CPU kernels (`codecs.kernels.cpu`), one fused pass per row
  block, on all cores. Chosen by default when numba imports and its kernels
  compile; otherwise the reference runs and one log line says why.

On a CUDA device the reference runs, unless `set_gpu_backend("triton")` (the
setting EMBQUANT_GPU_KERNELS=triton) asks for the Triton kernels (`codecs.kernels.gpu`,
lloyd's encode and decode; triton ships with the CUDA builds of torch). They are
opt-in until they have run on a GPU: so far they have been checked against the
reference in Triton's interpreter and compiled for sm_90 with their rounding read
from the PTX (tests/codecs/test_triton.py). Where triton does not load, or a kernel
fails to compile or launch, the reference runs, with one log line.

``set_backend`` switches for the process (the worker calls it from settings; the
tests and benchmarks call it to compare).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

log = logging.getLogger("embquant.kernels")

BACKENDS = ("auto", "torch", "numba")
_state = {"requested": "auto", "active": None, "numba_ok": None, "triton_ok": None, "gpu": "torch", "deferred": False}
_lock = threading.Lock()
_local = threading.local()  # a thread's own backend (`in_this_thread`)


def _numba_ok() -> bool:
    """Whether the compiled kernels load; probed once per process (one log line if not)."""
    if _state["numba_ok"] is None:
        try:
            from . import cpu  # noqa: F401  (imports numba)
        except Exception as e:  # noqa: BLE001 - any failure to load means: use the reference
            log.warning("compiled CPU kernels unavailable (%s: %s); using the torch reference path", type(e).__name__, e)
            _state["numba_ok"] = False
        else:
            _state["numba_ok"] = True
    return _state["numba_ok"]


def _triton_ok() -> bool:
    """Whether the Triton kernels load; probed once per process (one log line if not)."""
    if _state["triton_ok"] is None:
        try:
            from . import gpu_ops  # noqa: F401  (imports triton)
        except Exception as e:  # noqa: BLE001 - any failure to load means: use the reference
            log.warning("Triton kernels unavailable (%s: %s); CUDA tensors take the torch reference path",
                        type(e).__name__, e)
            _state["triton_ok"] = False
        else:
            _state["triton_ok"] = True
    return _state["triton_ok"]


GPU_BACKENDS = ("torch", "triton")


def set_gpu_backend(name: str) -> str:
    """Select what runs on CUDA tensors: "torch" (the reference) or "triton" (the Triton
    kernels where a codec has them); returns the one in use."""
    if name not in GPU_BACKENDS:
        raise ValueError(f"GPU kernel backend must be one of {GPU_BACKENDS}, got {name!r}")
    _state["gpu"] = name
    return "triton" if name == "triton" and _triton_ok() else "torch"


def triton_failed(e: BaseException) -> None:
    """A Triton kernel failed to compile or launch: the reference runs from now on."""
    log.warning("a Triton kernel failed (%s: %s); CUDA tensors take the torch reference path from now on",
                type(e).__name__, e)
    _state["triton_ok"] = False


def on_gpu(t) -> bool:
    """Whether a tensor's work goes to the Triton kernels: a CUDA tensor, the Triton
    backend asked for (`set_gpu_backend`), triton loads, and this thread did not ask
    for the ``torch`` backend (nor the process, with `set_backend`)."""
    if t.device.type != "cuda" or _state["gpu"] != "triton":
        return False
    own = getattr(_local, "backend", None)
    if own == "torch" or (own is None and _state["requested"] == "torch"):
        return False
    return _triton_ok()


def set_backend(name: str) -> str:
    """Select the kernel backend ("auto", "torch" or "numba"); returns the active one."""
    if name not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {name!r}")
    with _lock:
        _state["requested"] = name
        _state["active"] = None
    return active()


def active() -> str:
    """The backend in use in this thread: "numba" or "torch" (`in_this_thread`, else
    the process-wide choice)."""
    own = getattr(_local, "backend", None)
    if own is not None:
        return own
    if _state["deferred"] and _state["requested"] == "auto":
        return "torch"
    a = _state["active"]
    if a is None:
        with _lock:
            a = _state["active"]
            if a is None:
                req = _state["requested"]
                if req == "torch":
                    a = "torch"
                elif _numba_ok():
                    a = "numba"
                elif req == "numba":
                    raise RuntimeError("kernel backend 'numba' was requested but numba cannot be loaded")
                else:
                    a = "torch"
                _state["active"] = a
    return a


def compiled(t) -> bool:
    """Whether a tensor's work goes to the compiled CPU kernels (on the CPU, numba active)."""
    return t.device.type == "cpu" and active() == "numba"


@contextlib.contextmanager
def using(name: str) -> Iterator[str]:
    """Run a block with another backend (tests and benchmarks)."""
    prev = _state["requested"]
    try:
        yield set_backend(name)
    finally:
        set_backend(prev)


def defer(on: bool) -> None:
    """While on, "auto" means the reference in every thread without a backend of its
    own (`in_this_thread`): the worker's device and fit threads answer on it while a
    compile thread loads or compiles the numba kernels. An explicit choice
    (`set_backend`, `using`) is not deferred."""
    _state["deferred"] = bool(on)


@contextlib.contextmanager
def in_this_thread(name: str) -> Iterator[str]:
    """Run a block of this thread on backend ``name`` ("numba" or "torch") whatever the
    process-wide choice, which other threads keep: the worker compiles the numba kernels
    in a thread of their own while its device thread answers on the reference."""
    if name not in ("numba", "torch"):
        raise ValueError(f"a thread's backend is 'numba' or 'torch', not {name!r}")
    if name == "numba" and not _numba_ok():
        raise RuntimeError("numba cannot be loaded")
    prev = getattr(_local, "backend", None)
    _local.backend = name
    try:
        yield name
    finally:
        _local.backend = prev
