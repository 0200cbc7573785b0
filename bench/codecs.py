"""Codec throughput: encode and decode speed of every embquant scheme, beside faiss,
distquant, a numpy baseline and a plain copy of the array, in one run on the same
arrays (issue 7, "Measure first").

    make bench-codecs            # or: .venv/bin/python bench/codecs.py [--quick]

Writes docs/throughput.md (machine, command and tables) and docs/throughput.png
(4-bit encode GB/s per scheme beside faiss SQ4 and the copy, log scale).

What is measured, per array shape (100,000 x 384 and 10,000 x 1536 float32, rows
Gaussian and unit-normalised, seed 0):
- every registered scheme at one setting per bit width it supports (1, 2, 4, 8), with
  the default kernel backend; lloyd 4-bit and absmax 4- and 8-bit also with the torch
  reference backend; fitted schemes fit on the first 2,000 rows;
- faiss ScalarQuantizer QT_4bit / QT_8bit, IndexRaBitQ and IndexEDEN (when the
  installed faiss has them), distquant, a numpy absmax int8 and ``x.copy()``;
- with a GPU (torch.cuda.is_available()): every embquant setting again with the array
  on the device (backend `triton` where the Triton kernels take it, lloyd at 1, 2, 4
  and 8 bits; `cuda` for the torch reference on the device, also run for lloyd 4- and
  8-bit beside them), lloyd 4-bit from pinned host memory, a device copy and the
  host-to-device copy.
``--quick`` (a minute or two on two idle cores): 20,000 x 384 and 2,000 x 1536, embquant
at 4 bits only (or the scheme's width nearest 4), a shorter per-call budget.
Every call is warmed up (numba compiles on its first call) and timed best of 3 with
perf_counter. A setting too slow to run on the whole array within the per-call budget
is timed on a prefix; the table gives the rows used. Peak memory is the RSS high-water
mark during the call (reset through /proc/self/clear_refs) minus the RSS before it;
on CUDA, torch.cuda.max_memory_allocated. Measurement only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import functools
import gc
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from machine import cpu_model, cpu_vectors, nproc  # bench/machine.py (bench/ is the script's directory)

DOCS = Path(__file__).resolve().parents[1] / "docs"
SHAPES = ((100_000, 384), (10_000, 1536))
QUICK_SHAPES = ((20_000, 384), (2_000, 1536))
FIT_ROWS = 2_000
PROBE_ROWS = 64  # fewest rows timed; the warm-up calls start there
REPEAT = 3
WIDTHS = (1, 2, 4, 8)


# -- environment ---------------------------------------------------------------


def kernel_api():
    """embquant's kernel-backend switch, or None where this checkout has none."""
    try:
        from embquant.codecs import kernels
    except ImportError:
        return None
    return kernels if hasattr(kernels, "active") and hasattr(kernels, "using") else None


def active_backend() -> str:
    k = kernel_api()
    return k.active() if k is not None else "torch"


def backend(name: str | None):
    """Context running embquant with kernel backend ``name`` (None: the default)."""
    k = kernel_api()
    return k.using(name) if (name and k is not None) else contextlib.nullcontext()


def versions() -> str:
    out = [f"torch {torch.__version__} ({torch.get_num_threads()} threads)"]
    try:
        import numba

        out.append(f"numba {numba.__version__} ({numba.get_num_threads()} threads)")
    except ImportError:
        pass
    try:
        import faiss

        out.append(f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads)")
    except ImportError:
        pass
    return ", ".join(out)


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


# -- memory and time -------------------------------------------------------------


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@functools.lru_cache(maxsize=None)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class RssProbe:
    """Peak resident memory of a call: reset the high-water mark, read VmHWM after."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.ok = True
        except OSError:
            self.ok = False

    sync = staticmethod(lambda: None)

    def start(self) -> int:
        gc.collect()
        _malloc_trim()  # so freed blocks are not silently reused below the mark
        if not self.ok:
            return 0
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS")

    def peak(self, before: int) -> float:
        return float(_status_kb("VmHWM") - before) if self.ok else math.nan


class CudaProbe:
    """Peak device memory of a call, from torch's caching allocator."""

    sync = staticmethod(lambda: torch.cuda.synchronize())

    def start(self) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak(self, before: int) -> float:
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)


def timed(fn: Callable[[], Any], probe, warm: bool) -> tuple[float, float, Any]:
    """(best seconds of REPEAT calls, largest peak memory in bytes, last result)."""
    out = fn() if warm else None
    probe.sync()
    best, peak = math.inf, 0.0
    for _ in range(REPEAT):
        out = None
        before = probe.start()
        t0 = time.perf_counter()
        out = fn()
        probe.sync()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, probe.peak(before))
    return best, peak, out


def pick_rows(encode: Callable[[Any], Any], x, budget_s: float, sync) -> int:
    """How many rows the timed calls take: all of them if one call fits in budget_s.

    Calls on growing prefixes (64, 256, 1024, ... rows, then all) warm the code up
    (numba compiles on the first) and stop at the first that takes longer than
    budget_s, unless its time grew less than half as fast as its rows: then the call
    is mostly a fixed cost (set-up, Python loops over bits or iterations), and fewer
    rows would understate the speed."""
    n = len(x)
    encode(x[: min(n, PROBE_ROWS)])  # compiles
    sync()
    rows, last = 0, math.inf
    for r in sorted({min(n, PROBE_ROWS * 4**i) for i in range(16)}):
        t0 = time.perf_counter()
        encode(x[:r])
        sync()
        t = time.perf_counter() - t0
        if rows and t > budget_s and t / last >= 0.5 * r / rows:
            break
        rows, last = r, t
        if t > 8 * budget_s:
            break
    return rows


# -- methods ---------------------------------------------------------------------


@dataclass
class Method:
    """One thing to time: fit once, then encode rows and decode the codes."""

    family: str
    setting: str
    width: int | None  # nominal bits per dimension (None: not a quantizer)
    kind: str = "numpy"  # input: numpy | torch | cuda | pinned (host, copied in the call)
    kernel: str | None = None  # embquant kernel backend; None: the default
    device: str = "cpu"
    all_rows: bool = False  # a yardstick: always timed on the whole array

    def fit(self, x) -> None:
        pass

    def encode(self, x) -> Any:
        raise NotImplementedError

    def decode(self, codes) -> Any:
        raise NotImplementedError

    def bits(self, d: int) -> float:
        return float(self.width or 32)

    def backend_label(self) -> str:
        return ""


@dataclass
class Embquant(Method):
    scheme: str = ""
    params: dict = field(default_factory=dict)

    def fit(self, x) -> None:
        from embquant import codecs as eq

        self.codec = eq.fit(self.scheme, self.params, x.to(self.device))

    def encode(self, x):
        from embquant import codecs as eq

        return eq.encode(self.codec, x.to(self.device, non_blocking=True))

    def decode(self, codes):
        from embquant import codecs as eq

        return eq.decode(self.codec, *codes)

    def bits(self, d: int) -> float:
        lay = self.codec.layout
        return (lay.bits * lay.symbols + 32 * lay.side_values) / d

    def backend_label(self) -> str:
        if self.device == "cpu":
            return active_backend()
        k = kernel_api()
        codec = getattr(self, "codec", None)  # known once fitted
        if codec is not None and k is not None and hasattr(k, "on_gpu") and k.on_gpu(torch.empty(0, device="cuda")):
            from embquant.codecs.kernels import gpu_ops

            if gpu_ops.has_fused(codec):
                return "triton"
        return "cuda"


@dataclass
class FaissSQ(Method):
    qtype: str = "QT_4bit"

    def fit(self, x) -> None:
        import faiss

        self.sq = faiss.ScalarQuantizer(x.shape[1], getattr(faiss.ScalarQuantizer, self.qtype))
        self.sq.train(x)

    def encode(self, x):
        return self.sq.compute_codes(x)

    def decode(self, codes):
        return self.sq.decode(codes)

    def bits(self, d: int) -> float:
        return self.sq.code_size * 8 / d


@dataclass
class FaissIndex(Method):
    """A faiss index's standalone codec: sa_encode / sa_decode."""

    make: Callable[[int], Any] | None = None

    def fit(self, x) -> None:
        self.index = self.make(x.shape[1])
        self.index.train(x)

    def encode(self, x):
        return self.index.sa_encode(x)

    def decode(self, codes):
        return self.index.sa_decode(codes)

    def bits(self, d: int) -> float:
        return self.index.sa_code_size() * 8 / d


@dataclass
class Distquant(Method):
    def encode(self, x):
        import distquant

        return distquant.quantize(x, k=self.width, beta=1.0)

    def decode(self, codes):
        import distquant

        q, info = codes
        return distquant.dequantize(q, **info)


@dataclass
class NumpyAbsmax8(Method):
    def encode(self, x):
        scale = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
        safe = np.where(scale > 0, scale, np.float32(1))
        return np.rint(x / safe).astype(np.int8), scale

    def decode(self, codes):
        q, scale = codes
        return q.astype(np.float32) * scale

    def bits(self, d: int) -> float:
        return 8 + 32 / d


@dataclass
class Copy(Method):
    """The memory roofline: read and write every byte once (decode: the same again)."""

    def encode(self, x):
        return x.copy() if isinstance(x, np.ndarray) else x.clone()

    def decode(self, codes):
        return self.encode(codes)


@dataclass
class HostToDevice(Method):
    """Pinned host memory to the GPU (decode: back to a new pageable host tensor, as the
    worker's answers go: `.to("cpu")`)."""

    def encode(self, x):
        return x.to("cuda", non_blocking=True)

    def decode(self, codes):
        return codes.to("cpu", non_blocking=False)


def embquant_settings(scheme: str, dim: int, quick: bool = False) -> list[tuple[int, dict]]:
    """(nominal width, params) for each width in WIDTHS the scheme supports."""
    # bitcodes: one code bit per dimension, fitted briefly (its fit runs its encoder,
    # a Python loop over the bits; the encode speed does not depend on the fit)
    bitcodes_fit = {"iterations": 0, "max_fit_rows": 256} if quick else {"iterations": 1, "max_fit_rows": 500}
    per_width = {
        "absmax": {b: {"bits": b} for b in (2, 4, 8)},
        "affine": {b: {"bits": b} for b in (2, 4, 8)},  # 1 bit is refused (see affine.AffineParams)
        "binary": {1: {}},
        "bitcodes": {1: {"num_bits": dim, **bitcodes_fit}},
        "blockwise": {2: {"table": "linear", "bits": 2}, 4: {"table": "nf4"}, 8: {"table": "dynamic"}},
        "codebook": {2: {"table": "linear", "bits": 2}, 4: {"table": "nf4"}, 8: {"table": "dynamic"}},
        "distributional": {b: {"bits": b} for b in WIDTHS},
        "hqq": {b: {"bits": b} for b in WIDTHS},
        "int8": {8: {}},
        "lloyd": {b: {"bits": b} for b in WIDTHS},
        "tcq": {b: {"bits": b} for b in WIDTHS},
        "transform": {b: {"bits": b} for b in WIDTHS},
    }
    if scheme in per_width:
        return sorted(per_width[scheme].items())
    from embquant import codecs as eq  # a scheme added since: its examples at our widths

    ex = [e for e in eq.get_scheme(scheme).examples if e.get("bits") in WIDTHS] or list(eq.get_scheme(scheme).examples[:1])
    return [(e.get("bits", 0), e) for e in ex]


def embquant_methods(dim: int, widths=WIDTHS, device: str = "cpu", quick: bool = False) -> list[Method]:
    """Every scheme at each of ``widths`` it supports (at its width nearest 4 bits if none)."""
    from embquant import codecs as eq

    kind = "torch" if device == "cpu" else "cuda"
    out: list[Method] = []
    for scheme in eq.all_schemes():
        settings = embquant_settings(scheme, dim, quick)
        chosen = [s for s in settings if s[0] in widths] or [min(settings, key=lambda s: abs(s[0] - 4))]
        for width, params in chosen:
            out.append(Embquant("embquant", f"{scheme} {params}", width, kind, device=device, scheme=scheme, params=params))
            if scheme in ("lloyd", "tcq") and width == 4:
                unit = {**params, "norm": "unit"}
                out.append(Embquant("embquant", f"{scheme} {unit}", width, kind, device=device, scheme=scheme, params=unit))
            if scheme == "transform" and width == 4:
                tr = {**params, "trellis": True}
                out.append(Embquant("embquant", f"{scheme} {tr}", width, kind, device=device, scheme=scheme, params=tr))
    reference = {("lloyd", 4), ("absmax", 4), ("absmax", 8)}
    if device == "cpu" and kernel_api() is not None and active_backend() != "torch":
        extra = [m for m in out if (m.scheme, m.width) in reference and "norm" not in m.params]
        out += [dataclasses.replace(m, kernel="torch") for m in extra]
    return out


def reference_methods() -> list[Method]:
    out: list[Method] = []
    with contextlib.suppress(ImportError):
        import faiss

        out += [
            FaissSQ("faiss", "ScalarQuantizer QT_4bit", 4, all_rows=True),
            FaissSQ("faiss", "ScalarQuantizer QT_8bit", 8, all_rows=True, qtype="QT_8bit"),
        ]
        for name in ("IndexRaBitQ", "IndexEDEN"):
            if hasattr(faiss, name):
                cls = getattr(faiss, name)
                out += [
                    FaissIndex("faiss", f"{name} {b}-bit", b, make=lambda d, c=cls, b=b: c(d, faiss.METRIC_L2, b))
                    for b in (1, 4)
                ]
    with contextlib.suppress(ImportError):
        import distquant  # noqa: F401

        out.append(Distquant("distquant", "quantize k=4 beta=1", 4, "torch"))
    out.append(NumpyAbsmax8("numpy", "absmax int8 (rint, per-row scale)", 8, all_rows=True))
    out.append(Copy("numpy", "x.copy() (memory roofline)", None, all_rows=True))
    return out


def cuda_methods(dim: int, widths, quick: bool) -> list[Method]:
    out = embquant_methods(dim, widths, "cuda", quick)
    # the torch reference on the device beside the Triton kernels (lloyd's)
    out += [dataclasses.replace(m, kernel="torch") for m in list(out)
            if m.scheme == "lloyd" and m.width in (4, 8) and "norm" not in m.params]
    out.append(
        Embquant("embquant", "lloyd {'bits': 4}, from pinned host memory", 4, "pinned", device="cuda",
                 scheme="lloyd", params={"bits": 4})
    )
    out.append(Copy("torch", "x.clone() on the device (memory roofline)", None, "cuda", device="cuda", all_rows=True))
    out.append(HostToDevice("torch", "pinned host -> device copy (decode: device -> host)", None, "pinned", device="cuda", all_rows=True))
    return out


# -- running ---------------------------------------------------------------------


@dataclass
class Result:
    shape: tuple[int, int]
    method: Method
    backend: str
    op: str  # encode | decode
    rows: int = 0
    seconds: float = math.nan
    peak: float = math.nan
    bits: float = math.nan
    error: str = ""

    @property
    def gbps(self) -> float:
        return self.rows * self.shape[1] * 4 / 1e9 / self.seconds

    @property
    def vps(self) -> float:
        return self.rows / self.seconds

    @property
    def peak_x(self) -> float:
        return self.peak / (self.rows * self.shape[1] * 4)


class Inputs:
    """The one array of a shape, in each form a method takes (made once)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.cache: dict[str, Any] = {"numpy": x, "torch": torch.from_numpy(x)}

    def get(self, kind: str):
        if kind not in self.cache:
            t = torch.from_numpy(self.x)
            self.cache[kind] = t.to("cuda") if kind == "cuda" else t.pin_memory()
        return self.cache[kind]


def make_data(n: int, d: int) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def run_method(m: Method, inputs: Inputs, budget_s: float) -> list[Result]:
    x = inputs.get(m.kind)
    shape = tuple(inputs.x.shape)
    probe = CudaProbe() if m.device == "cuda" else RssProbe()
    with backend(m.kernel):
        label = m.backend_label()

        def one(op: str, fn: Callable[[], Any], warm: bool) -> tuple[Result, Any]:
            t, peak, out = timed(fn, probe, warm)
            return Result(shape, m, label, op, rows, t, peak, m.bits(shape[1])), out

        try:
            m.fit(x[:FIT_ROWS])
            label = m.backend_label()  # the fitted codec decides (Triton kernels on CUDA)
            rows = len(x) if m.all_rows else pick_rows(m.encode, x, budget_s, probe.sync)  # warms encode up
            enc, codes = one("encode", lambda: m.encode(x[:rows]), warm=m.all_rows)
            dec, _ = one("decode", lambda: m.decode(codes), warm=True)
            return [enc, dec]
        except Exception as e:  # noqa: BLE001 - a broken setting is reported, not fatal
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            return [Result(shape, m, label, op, error=msg) for op in ("encode", "decode")]


def run_shape(methods: list[Method], inputs: Inputs, budget_s: float) -> list[Result]:
    out = []
    for m in methods:
        t0 = time.perf_counter()
        res = run_method(m, inputs, budget_s)
        out += res
        enc = res[0]
        speed = enc.error or f"{enc.rows} rows, encode {enc.gbps:.3g} GB/s, decode {res[1].gbps:.3g} GB/s"
        print(f"  {m.family} {m.setting} [{enc.backend}]: {speed} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return out


# -- report ----------------------------------------------------------------------


def _ref(results: list[Result], op: str, cls: type, setting_prefix: str = "") -> float | None:
    for r in results:
        if type(r.method) is cls and r.op == op and r.method.setting.startswith(setting_prefix) and not r.error:
            return r.gbps
    return None


def _ratio(v: float, ref: float | None) -> str:
    return f"{v / ref:.3g}" if ref else "n/a"


def _order(r: Result):
    families = {"embquant": 0, "faiss": 1, "distquant": 2, "numpy": 3, "torch": 3}
    return (r.method.width or 99, families.get(r.method.family, 9), r.method.setting, r.method.kernel or "")


def table(results: list[Result], op: str) -> list[str]:
    """One markdown table: the rows of one operation on one shape."""
    sq4 = _ref(results, op, FaissSQ, "ScalarQuantizer QT_4bit")
    copy = _ref(results, op, Copy)
    lines = [
        "| width | method | setting | backend | bits/dim stored | rows | GB/s | M vectors/s | x faiss SQ4 | x copy | peak memory x |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for r in results if r.op == op), key=_order):
        m = r.method
        head = f"| {m.width or '-'} | {m.family} | {m.setting} | {r.backend or '-'} |"
        if r.error:
            lines.append(f"{head} | | failed: {r.error} | | | | |")
            continue
        lines.append(
            f"{head} {r.bits:.2f} | {r.rows:,} | {r.gbps:.3g} | {r.vps / 1e6:.3g} | {_ratio(r.gbps, sq4)} | "
            f"{_ratio(r.gbps, copy)} | {r.peak_x:.2f} |"
        )
    return lines


def header(argv: list[str], budget_s: float, shapes, chart_too: bool = True) -> list[str]:
    """The report's head; ``chart_too``: the CPU rows ran, so the chart exists."""
    gpu = gpu_name()
    cmd = " ".join([".venv/bin/python", "bench/codecs.py", *argv])
    return [
        "# Codec throughput",
        "",
        f"Command: `{cmd}` (`make bench-codecs` runs it without `--quick`); written by bench/codecs.py.",
        "",
        f"- Machine: `nproc` {nproc()}, {cpu_model()} ({cpu_vectors() or platform.machine()}); "
        f"GPU: {gpu or 'none present (torch.cuda.is_available() is False): no CUDA figures'}.",
        f"- Software: Python {platform.python_version()}, {versions()}; embquant kernel backend: {active_backend()}.",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        f"Data: {', '.join(f'{n:,} x {d}' for n, d in shapes)} float32, Gaussian rows normalised to unit "
        f"length (seed 0); fitted schemes and faiss fit on the first {FIT_ROWS:,} rows. Each call is warmed "
        f"up (numba compiles on its first call), then timed best of {REPEAT} with perf_counter. A setting whose "
        f"call on the whole array takes more than {budget_s:g} s is timed on a prefix of {PROBE_ROWS} x 4^k rows "
        "(more where a call is mostly a fixed cost): `rows` says how many; faiss SQ, the numpy int8 and the copy "
        "always take the whole array. "
        "GB/s counts the float32 of those rows (encode's input, decode's output); `x faiss SQ4` and `x copy` divide "
        "by faiss ScalarQuantizer QT_4bit's and by `x.copy()`'s GB/s on the same array, encode by encode and decode "
        "by decode. `bits/dim stored` counts codes and per-vector side values. `peak memory x`: RSS high-water mark "
        "during the call minus RSS before it, over the float32 size of the rows (on CUDA: "
        "torch.cuda.max_memory_allocated). distquant's quantize also decodes once (to report its error), so its "
        "encode includes a decode. Shared machines are noisy: compare ratios within one run.",
    ] + (["", "![encode GB/s at 4 bits](throughput.png)"] if chart_too else [])


def section(title: str, results: list[Result]) -> list[str]:
    out = []
    for op in ("encode", "decode"):
        out += ["", f"## {title}: {op}", ""] + table(results, op)
    return out


def chart(results: list[Result], shape, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches  # noqa: F401
    import matplotlib.pyplot as plt

    pick = [
        r for r in results
        if r.op == "encode" and not r.error and r.shape == shape and (r.method.width == 4 or isinstance(r.method, Copy))
    ]
    pick.sort(key=lambda r: r.gbps)
    labels = [f"{r.method.family} {r.method.setting}" + (f" [{r.backend}]" if r.backend else "") for r in pick]
    colours = {"embquant": "#1f77b4", "faiss SQ4": "#d62728", "copy": "#000000", "other reference": "#7f7f7f"}
    group = ["copy" if isinstance(r.method, Copy) else "faiss SQ4" if isinstance(r.method, FaissSQ)
             else "embquant" if r.method.family == "embquant" else "other reference" for r in pick]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(pick) + 1.4))
    ax.barh(range(len(pick)), [r.gbps for r in pick], color=[colours[g] for g in group])
    ax.legend(handles=[matplotlib.patches.Patch(color=c, label=g) for g, c in colours.items()], fontsize=7, loc="lower right")
    ax.set_yticks(range(len(pick)), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("encode GB/s of float32 input (log scale)")
    ax.set_title(f"4-bit encode, {shape[0]:,} x {shape[1]} float32, nproc {nproc()}, {cpu_model()[:40]}", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true",
        help="smaller arrays, a shorter per-call budget, embquant at 4 bits only (a minute or two)",
    )
    ap.add_argument("--budget", type=float, default=None, help="seconds one timed call may take (default 0.2; quick 0.1)")
    ap.add_argument("--out", type=Path, default=DOCS, help="folder for throughput.md and throughput.png (default docs/)")
    ap.add_argument(
        "--devices", default="cpu,cuda",
        help="cpu, cuda or both (default); cuda rows need torch.cuda.is_available() (bench/gpu_check.sh: cuda)",
    )
    a = ap.parse_args()
    budget_s = a.budget if a.budget is not None else (0.1 if a.quick else 0.2)
    shapes = QUICK_SHAPES if a.quick else SHAPES
    widths = (4,) if a.quick else WIDTHS
    t_start = time.perf_counter()
    devices = {d.strip() for d in a.devices.split(",") if d.strip()}
    if not devices <= {"cpu", "cuda"}:
        ap.error(f"--devices takes cpu, cuda or both, not {a.devices!r}")
    lines = header(sys.argv[1:], budget_s, shapes, chart_too="cpu" in devices)
    a.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every section, so a run stopped by a time limit keeps what it measured
        (a.out / "throughput.md").write_text("\n".join(lines) + "\n")

    cpu_results: list[Result] = []
    for n, d in shapes:
        print(f"{n:,} x {d} float32", flush=True)
        inputs = Inputs(make_data(n, d))
        if "cpu" in devices:
            res = run_shape(embquant_methods(d, widths, quick=a.quick) + reference_methods(), inputs, budget_s)
            cpu_results += res
            lines += section(f"{n:,} x {d}, CPU", res)
            write()
        if "cuda" in devices and torch.cuda.is_available():
            k = kernel_api()
            if k is not None and hasattr(k, "set_gpu_backend"):
                k.set_gpu_backend("triton")  # opt-in in the service (EMBQUANT_GPU_KERNELS): measured here
            gpu = run_shape(cuda_methods(d, widths, a.quick), inputs, budget_s)
            lines += section(f"{n:,} x {d}, CUDA ({gpu_name()})", gpu)
            write()
    if "cuda" in devices and not torch.cuda.is_available():
        print("no GPU present (torch.cuda.is_available() is False): CUDA rows skipped")
    lines += ["", f"Whole run: {time.perf_counter() - t_start:.0f} s."]
    write()
    if cpu_results:
        chart(cpu_results, shapes[0], a.out / "throughput.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
