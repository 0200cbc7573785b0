"""Service speed on 127.0.0.1: the real `embquant serve` driven by the real client and
by wrk, measured against issue 8's targets ("Measure" and "Where this must land").

    make bench-service            # the full run: docs/service.md and docs/service.png
    .venv/bin/python bench/service.py --quick     # < 2 minutes; writes /tmp/svcbench/

The full run takes about 15 to 20 minutes on 2 cores (most of it the JSON-lists form at
100,000 rows, 32 load windows of 10 s, 20,000 mixed requests and the 30-second fit).

What is measured, in one run, with a codec fitted once per server through
``Client.fit`` (scheme ``lloyd``, bits=4) on unit-normalised Gaussian rows (seed 0):

1. End to end: rows/s of ``Client.quantize(x, codec=fitted)`` for 10,000 x 384 and
   100,000 x 384 (quick: 10,000 only), for every wire form the installed client
   accepts (found by trying ``Client(wire=name)`` for each name in WIRE_CANDIDATES),
   with the sync Client and with the AsyncClient (its default chunk concurrency), next
   to the in-process ``embquant.codecs.encode`` of the same rows in the same run; the
   codes of every path are compared with the in-process ones. Beside them the TCP
   floor (bench/loopback.py): the same vectors sent to another process over TCP on
   127.0.0.1 and the codes' bytes sent back, nothing else done, which no path through
   a socket can beat.
2. Concurrent clients: 1, 16, 64 and 256 clients each sending single vectors, and
   16-row requests, with batching on (the server's defaults) and off (a second
   server with EMBQUANT_MAX_BATCH_ROWS=1: one job per device batch), measured two ways: wrk (a C
   load generator; bench/wrk/quantize.lua POSTs a body prepared here: JSON, the
   vectors as lists, the codec by ``codec_id`` where /fit answers one, else the full
   codec) and the Python AsyncClient (one client object, N tasks, each request timed).
   wrk runs with one thread fewer than the cores (at most 2; --wrk-threads): the
   server keeps a core. A third server, batching on with --processes server processes
   (EMBQUANT_WORKERS, default 2), takes the single-vector levels too.
2b. The load generator's floor: the same wrk command against bench/bare_asgi.py (an
   ASGI app that answers at once) on the same uvicorn, with 1 and 2 wrk threads.
3. 16-row encodes (from a few AsyncClient tasks) while a long ``bitcodes`` 2-bit fit
   (num_bits = 2 x 384) runs, sent through another client: p50/p99 and 504s, beside
   the same encodes with no fit running.
4. Mixed: 20,000 requests (quick: 600) at 192 concurrency through one AsyncClient
   (quantize 1, 16 and 256 rows, dequantize 16 rows): errors seen by the client, raw
   HTTP statuses and lost connections (counted by httpx event hooks, retries included),
   and mismatches against the in-process encode and decode of the same rows.

Client, wrk and servers share this machine's cores: the numbers are the whole
system's, and noisy on shared machines (compare within one run). What the server or
client does not offer yet (a binary wire form, codec ids) is skipped and said so in
the report; new wire forms drop in by name. Every server started here is stopped at
the end, whatever happens. Measurement only: nothing here asserts a speed; the
report states each target of issue 8 as met or not met from the measured values.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import inspect
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from loopback import tcp_floor  # bench/loopback.py
from machine import cpu_model, nproc  # bench/machine.py (bench/ is the script's directory)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LUA = ROOT / "bench" / "wrk" / "quantize.lua"
DIM = 384
SCHEME, PARAMS = "lloyd", {"bits": 4}
FIT_ROWS = 2_000
#: Wire forms tried on the client, binary ones first; any the client accepts is measured.
WIRE_CANDIDATES = ("msgpack", "arrow", "npy", "base64", "json")
TEXT_WIRES = ("base64", "json")  # JSON bodies; every other accepted form counts as binary
E2E_SIZES, QUICK_E2E_SIZES = (10_000, 100_000), (10_000,)
LEVELS = (1, 16, 64, 256)
#: The two servers every load level compares; a third, batching on with several server
#: processes (--processes, EMBQUANT_WORKERS), is named "on-xN" and sends single vectors only.
BATCHING_OFF_AND_ON = ("on", "off")
#: The load generator's floor (bench/bare_asgi.py): these clients, each wrk thread count.
FLOOR_CLIENTS = (16, 256)


def batching_label(name: str) -> str:
    """The report's words for a server: on, off, or "on, N processes"."""
    return f"on, {name[4:]} processes" if name.startswith("on-x") else name
REQUEST_ROWS = (1, 16)
MIXED_CONCURRENCY = 192
FIT_PROBE_TASKS = 4  # concurrent 16-row encoders while the fit runs
# issue 8, "Where this must land"
TARGET_BINARY_VS_INPROC = 0.5
TARGET_BINARY_VS_JSON = 5.0
TARGET_BATCHING_GAIN = 5.0
TARGET_P99_256_MS = 50.0
TARGET_P99_DURING_FIT_MS = 100.0


def log(msg: str) -> None:
    print(msg, flush=True)


# -- machine -----------------------------------------------------------------------


def pkg_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "service", "client"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{head}{' with uncommitted changes in service/ or client/' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def wrk_version(wrk: str) -> str:
    try:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return wrk


def server_default(name: str) -> Any:
    """A setting's default, from the service's Settings class (None if it has none)."""
    try:
        from embquant.settings import Settings

        f = Settings.model_fields.get(name)
        return None if f is None else f.default
    except Exception:  # noqa: BLE001 - a report line, not a requirement
        return None


# -- servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rel(cmd: list[str]) -> list[str]:
    """A command with paths inside the repository written relative to it."""
    out = []
    for part in cmd:
        try:
            out.append(str(Path(part).relative_to(ROOT)) if part.startswith("/") else part)
        except ValueError:
            out.append(part)
    return out


def serve_command() -> list[str]:
    exe = Path(sys.executable).with_name("embquant")
    return [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "embquant.cli", "serve"]


class ServerGone(RuntimeError):
    """A server started here exited during the run (killed from outside, or crashed)."""


class Server:
    """One `embquant serve` on a free 127.0.0.1 port; stopped by stop(), always."""

    def __init__(self, name: str, scratch: Path, **settings: str):
        self.name, self.settings = name, settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / f"server-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBQUANT_")}
        # kernels warmed up before ready: no run starts on the reference path
        env.update({"EMBQUANT_HOST": "127.0.0.1", "EMBQUANT_PORT": str(self.port), "EMBQUANT_LOG_LEVEL": "warning",
                    "EMBQUANT_KERNEL_WARM_UP": "blocking"})
        env.update({f"EMBQUANT_{k.upper()}": v for k, v in self.settings.items()})
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(serve_command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT)
        return self

    def wait_ready(self, timeout: float = 1200) -> float:
        """Seconds until /readyz answers 200 (the first start after a kernel change
        compiles the CPU kernels: minutes on 2 busy cores)."""
        import httpx

        t0 = time.monotonic()
        t_end, t_say = t0 + timeout, t0 + 30
        while time.monotonic() < t_end:
            if time.monotonic() > t_say:
                log(f"  server {self.name}: not ready after {time.monotonic() - t0:.0f} s (compiling kernels?)")
                t_say += 60
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server {self.name} not ready after {timeout:g} s; see {self.log_path}")

    def exited(self) -> str | None:
        """Why the server is gone (its exit status), or None while it runs."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            return None
        how = f"killed by signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exited with status {rc}"
        return f"server '{self.name}' (batching {batching_label(self.name)}) {how}; see {self.log_path}"

    def cpu_s(self) -> float:
        """CPU seconds the server's processes have used so far (user + system, /proc):
        `embquant serve` and, with EMBQUANT_WORKERS > 1, the server processes it runs."""
        try:
            return sum(_proc_cpu_s(pid) for pid in _process_tree(self.proc.pid))
        except (OSError, AttributeError, IndexError, ValueError):
            return math.nan

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (/proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


# -- client capabilities ---------------------------------------------------------------


@dataclass
class Caps:
    wires: list[str]  # accepted by the client, in WIRE_CANDIDATES order
    refused: dict[str, str]  # wire -> why the client refused it
    default_wire: str | None
    fitted_codec_id: bool = False  # the client's Fitted carries codec_id
    fit_answer_codec_id: bool = False  # the raw /fit answer has codec_id
    pool: str = ""

    @property
    def binary(self) -> list[str]:
        return [w for w in self.wires if w not in TEXT_WIRES]


def client_caps() -> Caps:
    from embquant_client import Client

    wires, refused = [], {}
    try:  # the client's own list of wire forms, where it has one
        from embquant_client import _core

        declared = tuple(w for w in getattr(_core, "WIRES", ()) if isinstance(w, str))
    except ImportError:
        declared = ()
    for w in dict.fromkeys(WIRE_CANDIDATES + declared):
        try:
            Client("http://127.0.0.1:9", wire=w).close()
            wires.append(w)
        except Exception as e:  # noqa: BLE001 - a refusal is the answer
            refused[w] = f"{type(e).__name__}: {e}"
    p = inspect.signature(Client.__init__).parameters.get("wire")
    default = p.default if p is not None and p.default is not inspect.Parameter.empty else None
    pool = ""
    try:
        from embquant_client import _client

        lim = _client._pool()
        pool = (f"{lim.max_connections} connections, {lim.max_keepalive_connections} kept alive, "
                f"keep-alive expiry {lim.keepalive_expiry:g} s")
    except Exception:  # noqa: BLE001 - a report detail
        pass
    return Caps(wires, refused, default, pool=pool)


def wire_kw(wire: str | None) -> dict:
    return {} if wire is None else {"wire": wire}


class Counts:
    """Raw HTTP traffic of one httpx client, retries included, via its event hooks."""

    def __init__(self) -> None:
        self.sent = 0
        self.status: collections.Counter = collections.Counter()
        self.bytes_out = 0
        self.bytes_in = 0

    @property
    def answered(self) -> int:
        return sum(self.status.values())

    @property
    def lost(self) -> int:
        """Requests sent that got no answer (transport failures)."""
        return self.sent - self.answered

    def count_5xx(self) -> int:
        return sum(n for s, n in self.status.items() if s >= 500)

    def non_2xx(self) -> int:
        return sum(n for s, n in self.status.items() if not 200 <= s < 300)

    def on_request(self, request) -> None:
        self.sent += 1
        # the declared length: the client sends large bodies in pieces (no .content)
        length = request.headers.get("content-length")
        if length is not None:
            self.bytes_out += int(length)
            return
        try:
            self.bytes_out += len(request.content)
        except Exception:  # noqa: BLE001 - a streamed body of unknown length: not counted
            pass

    def on_response(self, response) -> None:
        self.status[response.status_code] += 1
        self.bytes_in += int(response.headers.get("content-length") or 0)

    def install(self, client) -> bool:
        """Hook the client's httpx client, if it has one (False: no raw counts)."""
        http = getattr(client, "_http", None)
        hooks = getattr(http, "event_hooks", None)
        if hooks is None:
            return False
        if inspect.iscoroutinefunction(getattr(http, "request", None)):
            async def req(r):
                self.on_request(r)

            async def resp(r):
                self.on_response(r)
        else:
            req, resp = self.on_request, self.on_response
        hooks = {k: list(v) for k, v in hooks.items()}
        hooks.setdefault("request", []).append(req)
        hooks.setdefault("response", []).append(resp)
        http.event_hooks = hooks
        return True


def error_name(e: BaseException) -> str:
    code = getattr(e, "status_code", None)
    return f"{code} {type(e).__name__}" if code else type(e).__name__


def is_transport_error(e: BaseException) -> bool:
    from embquant_client import APIConnectionError

    return isinstance(e, APIConnectionError)


# -- data and codecs ---------------------------------------------------------------------


def make_data(n: int, d: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@dataclass
class Fit:
    """A codec fitted on one server: the client's Fitted and the raw /fit answer."""

    fitted: Any
    raw: dict
    codec: Any  # embquant.codecs.Codec, parsed here from fitted.codec

    @property
    def codec_id(self) -> str | None:
        return self.raw.get("codec_id") or getattr(self.fitted, "codec_id", None)


def fit_on(server: Server, sample: np.ndarray) -> Fit:
    import httpx
    from embquant import codecs as eq
    from embquant_client import Client

    with Client(server.url, timeout=120) as c:
        fitted = c.fit(sample, SCHEME, **PARAMS)
    body = {"scheme": SCHEME, "params": PARAMS, "vectors": sample[:64].tolist()}
    r = httpx.post(server.url + "/fit", json=body, timeout=120)
    r.raise_for_status()
    return Fit(fitted, r.json(), eq.codec_from_json(fitted.codec))


def inproc_encode(codec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    import torch
    from embquant import codecs as eq

    codes, side = eq.encode(codec, torch.from_numpy(x))
    return codes.numpy(), None if side is None else side.numpy()


def inproc_decode(codec, codes: np.ndarray, side: np.ndarray | None) -> np.ndarray:
    import torch
    from embquant import codecs as eq

    y = eq.decode(codec, torch.from_numpy(codes), None if side is None else torch.from_numpy(side))
    return y.numpy()


# -- 1. end to end -------------------------------------------------------------------------


@dataclass
class E2E:
    rows: int
    path: str  # "in-process" | "tcp-floor" | "Client" | "AsyncClient"
    wire: str = ""
    seconds: float = math.nan
    runs: int = 0
    equal: bool | None = None  # codes equal to in-process
    mb_out: float = math.nan  # request bytes per run, MB
    mb_in: float = math.nan
    error: str = ""

    @property
    def rows_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.nan

    @property
    def label(self) -> str:
        if self.path in BASELINES:
            return BASELINES[self.path]
        return f"{self.path}, wire={self.wire}"


#: Rows of the end-to-end table that are yardsticks, not the service.
BASELINES = {"in-process": "in-process encode",
             "tcp-floor": "TCP floor: the same bytes to another process and back (bench/loopback.py)"}


def another_run(runs: int, repeat: int, spent: float, last: float, budget_s: float) -> bool:
    """Time one more call? Up to ``repeat``, while one more fits in ``budget_s``."""
    return runs < repeat and (runs == 0 or spent + last <= budget_s)


def best_of(fn: Callable[[], Any], repeat: int, budget_s: float) -> tuple[float, int, Any]:
    """Best seconds over up to ``repeat`` calls, fewer where the next would overrun ``budget_s``."""
    best, runs, out, last, t_all = math.inf, 0, None, 0.0, time.perf_counter()
    while another_run(runs, repeat, time.perf_counter() - t_all, last, budget_s):
        t0 = time.perf_counter()
        out = fn()
        last = time.perf_counter() - t0
        best = min(best, last)
        runs += 1
    return best, runs, out


def end_to_end(server: Server, fit: Fit, data: np.ndarray, sizes, caps: Caps, repeat: int,
               budget_s: float) -> list[E2E]:
    from embquant_client import AsyncClient, Client

    out: list[E2E] = []
    for n in sizes:
        x = data[:n]
        inproc_encode(fit.codec, x[:1000])  # warm (numba loads its kernels)
        t, runs, (ref_codes, ref_side) = best_of(lambda: inproc_encode(fit.codec, x), repeat, budget_s)
        inproc = E2E(n, "in-process", seconds=t, runs=runs, equal=True)
        out.append(inproc)
        log(f"  {n:,} x {DIM} in-process encode: {n / t:,.0f} rows/s")
        # the socket's own speed: the vectors out and the codes and side values back over
        # TCP on 127.0.0.1 with nothing else done (no HTTP, no parsing, no encode)
        back = ref_codes.nbytes + (0 if ref_side is None else ref_side.nbytes)
        t, runs = tcp_floor(x, back, repeat, budget_s)
        floor = E2E(n, "tcp-floor", seconds=t, runs=runs, mb_out=x.nbytes / 1e6, mb_in=back / 1e6)
        out.append(floor)
        log(f"  {n:,} x {DIM} TCP floor: {n / t:,.0f} rows/s")
        for wire in caps.wires:
            for path in ("Client", "AsyncClient"):
                r = E2E(n, path, wire)
                counts = Counts()
                try:
                    if path == "Client":
                        with Client(server.url, timeout=300, wire=wire) as c:
                            c.quantize(x[:256], codec=fit.fitted)  # warm: limits asked, connection open
                            hooked = counts.install(c)
                            t, runs, enc = best_of(lambda: c.quantize(x, codec=fit.fitted), repeat, budget_s)
                    else:
                        async def go():
                            async with AsyncClient(server.url, timeout=300, wire=wire) as c:
                                await c.quantize(x[:256], codec=fit.fitted)
                                hooked = counts.install(c)
                                best, runs, enc, last, t_all = math.inf, 0, None, 0.0, time.perf_counter()
                                while another_run(runs, repeat, time.perf_counter() - t_all, last, budget_s):
                                    t0 = time.perf_counter()
                                    enc = await c.quantize(x, codec=fit.fitted)
                                    last = time.perf_counter() - t0
                                    best = min(best, last)
                                    runs += 1
                                return best, runs, enc, hooked

                        t, runs, enc, hooked = asyncio.run(go())
                    r.seconds, r.runs = t, runs
                    r.equal = bool(np.array_equal(enc.codes, ref_codes)) and (
                        ref_side is None or (enc.side is not None and np.array_equal(enc.side, ref_side)))
                    if hooked and runs:
                        r.mb_out, r.mb_in = counts.bytes_out / runs / 1e6, counts.bytes_in / runs / 1e6
                    log(f"  {n:,} x {DIM} {r.label}: {r.rows_s:,.0f} rows/s ({runs} runs, codes equal: {r.equal})")
                except Exception as e:  # noqa: BLE001 - a failing form is reported, not fatal
                    r.error = f"{error_name(e)}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    log(f"  {n:,} x {DIM} {r.label}: failed: {r.error}")
                out.append(r)
        # timed again after the wire forms, best of both: one burst of noise on these
        # shared cores does not set the yardstick
        t, runs, _ = best_of(lambda: inproc_encode(fit.codec, x), repeat, budget_s)
        inproc.seconds, inproc.runs = min(inproc.seconds, t), inproc.runs + runs
        log(f"  {n:,} x {DIM} in-process encode, again: {n / t:,.0f} rows/s (best {inproc.rows_s:,.0f})")
    return out


# -- 2. concurrent clients ---------------------------------------------------------------------


@dataclass
class Load:
    tool: str  # wrk | AsyncClient
    batching: str  # on | off
    clients: int
    rows: int  # per request
    requests: int = 0  # answered 2xx in the window
    seconds: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    non2xx: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    note: str = ""
    server_cpu_s: float = math.nan  # server process CPU seconds during the run
    gen_cpu_s: float = math.nan  # load generator's CPU seconds (wrk, or this process)
    retransmits: int | None = None  # TCP segments retransmitted during a wrk run (`tcp_retransmits`)

    @property
    def server_ms_per_req(self) -> float:
        return 1e3 * self.server_cpu_s / self.requests if self.requests else math.nan

    @property
    def gen_ms_per_req(self) -> float:
        return 1e3 * self.gen_cpu_s / self.requests if self.requests else math.nan

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan

    @property
    def rows_s(self) -> float:
        return self.rps * self.rows


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else math.nan


def parse_wrk(text: str) -> dict:
    """The figures of wrk's --latency report (and quantize.lua's statuses line)."""
    out: dict[str, Any] = {"non2xx": 0, "socket_errors": {}, "statuses": {}}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", text, re.M):
        out[f"p{pct}_ms"] = _ms(value)
    if m := re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M):
        out["requests"], out["seconds"] = int(m.group(1)), _ms(m.group(2) + m.group(3)) / 1e3
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M):
        out["rps"] = float(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        out["non2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        out["socket_errors"] = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups()) if int(v)}
    if m := re.search(r"^statuses:(.*)$", text, re.M):
        out["statuses"] = {int(k): int(v) for k, v in re.findall(r"(\d+)=(\d+)", m.group(1))}
    return out


def wrk_body(server: Server, fit: Fit, x: np.ndarray, scratch: Path, tag: str) -> tuple[Path | None, str]:
    """A /quantize body for wrk: vectors as JSON lists, the codec by id where /fit
    answers one. Checked with one request first; (None, why) if none is accepted."""
    import httpx

    variants = []
    if fit.codec_id:
        variants.append(("codec_id", {"vectors": x.tolist(), "codec_id": fit.codec_id, "include_codec": False}))
    variants.append(("full codec", {"vectors": x.tolist(), "codec": fit.fitted.codec, "include_codec": False}))
    variants.append(("full codec", {"vectors": x.tolist(), "codec": fit.fitted.codec}))
    why = []
    for how, body in variants:
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            r = httpx.post(server.url + "/quantize", content=data, headers={"content-type": "application/json"},
                           timeout=60)
        except httpx.HTTPError as e:
            why.append(f"{how}: {type(e).__name__}")
            continue
        if r.status_code == 200:
            path = scratch / f"body-{tag}.json"
            path.write_bytes(data)
            return path, how
        why.append(f"{how}: HTTP {r.status_code} {r.text[:120]}")
    return None, "; ".join(why)


#: wrk's threads (--wrk-threads): by default one fewer than the cores, at most 2, so
#: that the server keeps a core. On 2 cores, -t2 put a p99 of 0.8 s on a bare ASGI app
#: that answers at once, against 35 ms with -t1 (the floor section of the report).
WRK_THREADS = max(1, min(2, nproc() - 1))


#: Seconds between one wrk run and the next (`run_wrk`). Back to back, a run started
#: as the last one's 256 connections were torn down (their requests still in flight)
#: saw, every second run, one TCP retransmission per connection and a p99 of 2 to 5 s,
#: while the server's own request histogram had nothing over 0.25 s; 3 s apart, six
#: runs in a row saw neither (2026-11-28, wrk -c256 against one server). The pause
#: keeps that teardown out of the next run's latencies; `tcp_retransmits` shows it.
SETTLE_S = 3.0


def tcp_retransmits() -> int | None:
    """The kernel's count of retransmitted TCP segments (Linux /proc/net/snmp), or None."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Tcp:")]
        return int(rows[1][rows[0].index("RetransSegs")])
    except (OSError, ValueError, IndexError):
        return None


def run_wrk(wrk: str, url: str, body: Path, clients: int, duration: float,
            threads: int | None = None) -> tuple[dict, str]:
    """wrk's figures, with ``retransmits``: TCP segments the kernel retransmitted during
    the run (all of this machine's connections; None where unknown)."""
    threads = max(1, min(threads or WRK_THREADS, clients))
    cmd = [wrk, f"-t{threads}", f"-c{clients}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "30s",
           "-s", str(LUA), url, "--", str(body), "application/json"]
    time.sleep(SETTLE_S)
    r0 = tcp_retransmits()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    r1 = tcp_retransmits()
    if p.returncode != 0:
        raise RuntimeError(f"wrk exited {p.returncode}: {(p.stderr or p.stdout)[-300:]}")
    out = parse_wrk(p.stdout)
    out["retransmits"] = None if r0 is None or r1 is None else r1 - r0
    return out, " ".join(cmd)


def wrk_load(wrk: str, server: Server, batching: str, body: Path, clients: int, rows: int, duration: float) -> Load:
    r = Load("wrk", batching, clients, rows)
    try:
        cpu0, ru0 = server.cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
        w, _ = run_wrk(wrk, server.url + "/quantize", body, clients, duration)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r.server_cpu_s = server.cpu_s() - cpu0
        r.gen_cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        r.seconds = w.get("seconds", math.nan)
        r.non2xx = w["non2xx"]
        r.requests = w.get("requests", 0) - r.non2xx
        r.p50_ms, r.p99_ms = w.get("p50_ms", math.nan), w.get("p99_ms", math.nan)
        r.retransmits = w.get("retransmits")
        r.errors.update({f"socket {k}": v for k, v in w["socket_errors"].items()})
        r.errors.update({f"HTTP {s}": n for s, n in w["statuses"].items() if not 200 <= s < 300})
    except Exception as e:  # noqa: BLE001
        r.note = f"failed: {type(e).__name__}: {str(e)[:200]}"
    return r


@dataclass
class Floor:
    threads: int
    clients: int
    requests: int = 0
    seconds: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    note: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan


def wrk_floor(wrk: str, body: Path, scratch: Path, clients_list, threads_list, duration: float) -> list[Floor]:
    """wrk against bench/bare_asgi.py (answers at once) on the same uvicorn as the
    service: the latencies the load generator and the HTTP server alone give here."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bare_asgi:app", "--app-dir", str(ROOT / "bench"), "--host", "127.0.0.1",
           "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]
    out: list[Floor] = []
    with open(scratch / "server-bare.log", "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        import httpx

        t_end = time.monotonic() + 60
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/quantize", content=b"{}", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > t_end or proc.poll() is not None:
                    return [Floor(0, 0, note=f"the bare ASGI server did not start; see {scratch / 'server-bare.log'}")]
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/quantize"
        run_wrk(wrk, url, body, 16, 1)  # warm
        for clients in clients_list:
            for threads in threads_list:
                f = Floor(threads, clients)
                try:
                    w, _ = run_wrk(wrk, url, body, clients, duration, threads=threads)
                    f.requests, f.seconds = w.get("requests", 0) - w["non2xx"], w.get("seconds", math.nan)
                    f.p50_ms, f.p99_ms = w.get("p50_ms", math.nan), w.get("p99_ms", math.nan)
                except Exception as e:  # noqa: BLE001
                    f.note = f"failed: {type(e).__name__}: {str(e)[:200]}"
                log(f"  floor: wrk -t{threads} -c{clients}: {f.rps:9,.0f} req/s, p50 {f.p50_ms:6.1f} ms, "
                    f"p99 {f.p99_ms:7.1f} ms {f.note}")
                out.append(f)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


async def client_load(server: Server, fit: Fit, batching: str, pool: np.ndarray, clients: int, rows: int,
                      duration: float, warm_s: float, wire: str | None) -> Load:
    """N tasks on one AsyncClient, each sending ``rows``-row requests back to back for
    warm_s + duration seconds, then cancelled (as wrk stops). As wrk counts: the
    requests answered within the last ``duration`` seconds, each timed from its start."""
    from embquant_client import AsyncClient

    r = Load("AsyncClient", batching, clients, rows)
    lat: list[float] = []
    counts = Counts()
    async with AsyncClient(server.url, timeout=60, **wire_kw(wire)) as c:
        await c.quantize(pool[:rows], codec=fit.fitted)  # limits asked once
        counts.install(c)
        t_rec = time.perf_counter() + warm_s
        t_stop = t_rec + duration

        async def task(i: int) -> None:
            k = i * rows
            while True:
                lo = k % (len(pool) - rows)
                k += 7919 * rows
                t0 = time.perf_counter()
                try:
                    await c.quantize(pool[lo:lo + rows] if rows > 1 else pool[lo], codec=fit.fitted)
                    err = None
                except Exception as e:  # noqa: BLE001 - counted
                    err = error_name(e)
                t1 = time.perf_counter()
                if t_rec <= t1 <= t_stop:
                    if err is None:
                        lat.append(t1 - t0)
                    else:
                        r.errors[err] += 1

        tasks = [asyncio.ensure_future(task(i)) for i in range(clients)]
        await asyncio.sleep(max(0.0, t_rec - time.perf_counter()))
        cpu0, gen0 = server.cpu_s(), time.process_time()
        await asyncio.sleep(max(0.0, t_stop - time.perf_counter()))
        r.server_cpu_s, r.gen_cpu_s = server.cpu_s() - cpu0, time.process_time() - gen0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    r.requests = len(lat)
    r.seconds = duration
    if lat:
        r.p50_ms, r.p99_ms = (float(v) * 1e3 for v in np.percentile(lat, [50, 99]))
    r.non2xx = counts.non_2xx()  # whole run, warm-up and retries included
    return r


def concurrency(wrk: str | None, servers: dict[str, Server], fits: dict[str, Fit], pool: np.ndarray,
                levels, rows_list, duration: float, warm_s: float, wire: str | None, scratch: Path,
                notes: list[str]) -> list[Load]:
    out: list[Load] = []
    bodies: dict[tuple[str, int], Path] = {}
    if wrk:
        for name, srv in servers.items():
            for rows in rows_list if name in BATCHING_OFF_AND_ON else (1,):
                path, how = wrk_body(srv, fits[name], pool[:rows], scratch, f"{name}-{rows}")
                if path is None:
                    notes.append(f"wrk, batching {name}, {rows}-row body: no body accepted ({how}); skipped")
                else:
                    bodies[(name, rows)] = path
                    msg = f"wrk bodies: vectors as JSON lists, the codec given by {how}"
                    if msg not in notes:
                        notes.append(msg)
            if (name, 1) in bodies:  # warm the server and its connections
                try:
                    run_wrk(wrk, srv.url + "/quantize", bodies[(name, 1)], 16, 1)
                except Exception as e:  # noqa: BLE001
                    notes.append(f"wrk warm-up on batching {name} failed: {e}")
    for rows in rows_list:
        for clients in levels:
            for name, srv in servers.items():  # on and off interleaved: the same background noise
                if name not in BATCHING_OFF_AND_ON and rows != 1:  # several processes: single vectors only
                    continue
                if wrk and (name, rows) in bodies:
                    r = wrk_load(wrk, srv, name, bodies[(name, rows)], clients, rows, duration)
                    out.append(r)
                    log(f"  wrk          {rows:>2} rows x {clients:>3} clients, batching {name:>3}: "
                        f"{r.rps:8,.0f} req/s, p50 {r.p50_ms:7.1f} ms, p99 {r.p99_ms:7.1f} ms, non-2xx {r.non2xx} {r.note}")
                try:
                    r = asyncio.run(client_load(srv, fits[name], name, pool, clients, rows, duration, warm_s, wire))
                except Exception as e:  # noqa: BLE001
                    r = Load("AsyncClient", name, clients, rows, note=f"failed: {error_name(e)}: {str(e)[:200]}")
                out.append(r)
                errs = sum(r.errors.values())
                log(f"  AsyncClient  {rows:>2} rows x {clients:>3} clients, batching {name:>3}: "
                    f"{r.rps:8,.0f} req/s, p50 {r.p50_ms:7.1f} ms, p99 {r.p99_ms:7.1f} ms, errors {errs} {r.note}")
    return out


# -- 3. encodes while a fit runs ------------------------------------------------------------------


@dataclass
class DuringFit:
    phase: str  # "no fit" | "fit running"
    latencies: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = math.nan
    fit_outcome: str = ""
    fit_seconds: float = math.nan

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else math.nan

    @property
    def count_504(self) -> int:
        return sum(n for k, n in self.errors.items() if k.startswith("504"))


def fit_params(fit_seconds: float, quick: bool) -> dict:
    # bitcodes at 2 bits/dim (the guide's num_bits = 2 x D), far more iterations than
    # fit in max_seconds: the fit runs for max_seconds (plus its final encode pass)
    return {"num_bits": 2 * DIM, "iterations": 1000, "max_seconds": fit_seconds,
            "max_fit_rows": 2_000 if quick else 20_000}


async def encodes_during_fit(server: Server, fit: Fit, pool: np.ndarray, fit_x: np.ndarray, params: dict,
                             baseline_s: float, wire: str | None) -> list[DuringFit]:
    from embquant_client import AsyncClient

    async def probe(c, res: DuringFit, until: Callable[[], bool]) -> None:
        async def task(i: int) -> None:
            k = i * 16
            while not until():
                lo = k % (len(pool) - 16)
                k += 7919
                t0 = time.perf_counter()
                try:
                    await c.quantize(pool[lo:lo + 16], codec=fit.fitted)
                    res.latencies.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - counted
                    res.errors[error_name(e)] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(FIT_PROBE_TASKS)))
        res.seconds = time.perf_counter() - t0

    # no retries: every 504 or error is seen and counted once
    async with AsyncClient(server.url, timeout=120, max_retries=0, **wire_kw(wire)) as c, \
            AsyncClient(server.url, timeout=max(120.0, 4 * params["max_seconds"] + 60), **wire_kw(wire)) as fitter:
        await c.quantize(pool[:16], codec=fit.fitted)
        base = DuringFit("no fit running")
        t_end = time.perf_counter() + baseline_s
        await probe(c, base, lambda: time.perf_counter() >= t_end)

        during = DuringFit("fit running")
        t_fit = time.perf_counter()
        fit_task = asyncio.ensure_future(fitter.fit(fit_x, "bitcodes", **params))
        await asyncio.sleep(0.5)  # the fit's upload is under way and the fit queued
        await probe(c, during, fit_task.done)
        try:
            await fit_task
            during.fit_outcome = "fitted"
        except Exception as e:  # noqa: BLE001 - the fit's own outcome is reported
            during.fit_outcome = f"failed: {error_name(e)}"
        during.fit_seconds = time.perf_counter() - t_fit
    return [base, during]


# -- 4. mixed requests -----------------------------------------------------------------------------


@dataclass
class Mixed:
    requests: int
    concurrency: int
    seconds: float = math.nan
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    ok: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)
    transport_errors: int = 0  # raised to the caller as APIConnectionError
    code_mismatches: int = 0
    side_mismatches: int = 0
    decode_mismatches: int = 0
    decode_max_abs: float = 0.0
    raw: Counts | None = None
    hooked: bool = False


MIX = (("quantize 1 row", 1, 0.4), ("quantize 16 rows", 16, 0.3), ("quantize 256 rows", 256, 0.1),
       ("dequantize 16 rows", 16, 0.2))


async def mixed(server: Server, fit: Fit, pool: np.ndarray, n_requests: int, conc: int,
                wire: str | None) -> Mixed:
    from embquant_client import AsyncClient

    ref_codes, ref_side = inproc_encode(fit.codec, pool)
    ref_dec = inproc_decode(fit.codec, ref_codes, ref_side)
    rng = np.random.default_rng(1)
    kinds = rng.choice(len(MIX), size=n_requests, p=[m[2] for m in MIX])
    res = Mixed(n_requests, conc, raw=Counts())
    queue = iter(enumerate(kinds))

    async with AsyncClient(server.url, timeout=120, **wire_kw(wire)) as c:
        await c.limits()
        res.hooked = res.raw.install(c)

        async def worker() -> None:
            for i, k in queue:
                name, rows, _ = MIX[k]
                idx = np.random.default_rng(1000 + i).choice(len(pool), size=rows, replace=False)
                res.by_kind[name] += 1
                try:
                    if name.startswith("quantize"):
                        enc = await c.quantize(pool[idx], codec=fit.fitted)
                        if not np.array_equal(enc.codes, ref_codes[idx]):
                            res.code_mismatches += 1
                        elif ref_side is not None and not np.array_equal(enc.side, ref_side[idx]):
                            res.side_mismatches += 1
                    else:
                        y = await c.dequantize(ref_codes[idx], None if ref_side is None else ref_side[idx],
                                               codec=fit.fitted)
                        diff = float(np.abs(y - ref_dec[idx]).max())
                        res.decode_max_abs = max(res.decode_max_abs, diff)
                        if not np.array_equal(y, ref_dec[idx]):
                            res.decode_mismatches += 1
                    res.ok += 1
                except Exception as e:  # noqa: BLE001 - counted
                    res.errors[error_name(e)] += 1
                    if is_transport_error(e):
                        res.transport_errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        res.seconds = time.perf_counter() - t0
    return res


# -- report -------------------------------------------------------------------------------------------


def f0(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:,.0f}"


def f1(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else (f"{v:,.1f}" if v < 1000 else f"{v:,.0f}")


def f2(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


def fr(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3g}"


def counter_text(c: collections.Counter | dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))) or "none"


def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def e2e_section(e2e: list[E2E]) -> list[str]:
    lines = []
    for n in sorted({r.rows for r in e2e}):
        rs = [r for r in e2e if r.rows == n]
        inproc = next((r.rows_s for r in rs if r.path == "in-process"), math.nan)
        floor = next((r.rows_s for r in rs if r.path == "tcp-floor"), math.nan)
        lines += ["", f"### {n:,} x {DIM}", "",
                  "| path | rows/s | x in-process | x TCP floor | x json-lists (same path) | MB sent / received per run | timed runs (best taken) | codes equal in-process |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rs:
            if r.error:
                lines.append(f"| {r.label} | failed: {r.error} | | | | | | |")
                continue
            js = next((q.rows_s for q in rs if q.path == r.path and q.wire == "json" and not q.error), math.nan)
            mb = f"{r.mb_out:,.1f} / {r.mb_in:,.1f}" if math.isfinite(r.mb_out) else ""
            equal = "" if r.path == "tcp-floor" else "yes" if r.equal else "NO"
            lines.append(f"| {r.label} | {f0(r.rows_s)} | {fr(ratio(r.rows_s, inproc))} | "
                         f"{'' if r.path == 'in-process' else fr(ratio(r.rows_s, floor))} | "
                         f"{'' if r.path in BASELINES else fr(ratio(r.rows_s, js))} | {mb} | {r.runs} | {equal} |")
    return lines


def load_section(loads: list[Load]) -> list[str]:
    lines = []
    for rows in sorted({r.rows for r in loads}):
        lines += ["", f"### {rows} {'vector' if rows == 1 else 'rows'} per request", "",
                  "| clients | tool | batching | requests/s | rows/s | p50 ms | p99 ms | requests timed | non-2xx | errors "
                  "| server CPU ms/request | load generator CPU ms/request | TCP retransmits |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted((r for r in loads if r.rows == rows),
                        key=lambda r: (r.clients, r.tool != "wrk", r.batching != "on", r.batching)):
            if r.note:
                lines.append(f"| {r.clients} | {r.tool} | {batching_label(r.batching)} | {r.note} | | | | | | | | | |")
                continue
            lines.append(f"| {r.clients} | {r.tool} | {batching_label(r.batching)} | {f0(r.rps)} | {f0(r.rows_s)} | {f1(r.p50_ms)} | "
                         f"{f1(r.p99_ms)} | {r.requests:,} | {r.non2xx} | {counter_text(r.errors)} | "
                         f"{f2(r.server_ms_per_req)} | {f2(r.gen_ms_per_req)} | "
                         f"{'' if r.retransmits is None else f'{r.retransmits:,}'} |")
        lines += ["", "Batching on / off, same tool and clients (requests/s; one server process each):", "",
                  "| clients | " + " | ".join(sorted({r.tool for r in loads}, key=lambda t: t != "wrk")) + " |",
                  "|---|" + "---|" * len({r.tool for r in loads})]
        for clients in sorted({r.clients for r in loads}):
            cells = []
            for tool in sorted({r.tool for r in loads}, key=lambda t: t != "wrk"):
                on = find_load(loads, tool, "on", clients, rows)
                off = find_load(loads, tool, "off", clients, rows)
                cells.append(fr(ratio(on.rps, off.rps)) if on and off else "n/a")
            lines.append(f"| {clients} | " + " | ".join(cells) + " |")
    return lines


def find_load(loads: list[Load], tool: str, batching: str, clients: int, rows: int) -> Load | None:
    return next((r for r in loads if (r.tool, r.batching, r.clients, r.rows) == (tool, batching, clients, rows)
                 and not r.note), None)


def targets(e2e: list[E2E], loads: list[Load], during: list[DuringFit], mix: Mixed | None, caps: Caps) -> list[str]:
    rows = ["| target (issue 8) | measured | verdict |", "|---|---|---|"]
    sizes = sorted({r.rows for r in e2e})
    # binary vs in-process and vs JSON lists (sync Client)
    if not caps.binary:
        rows.append(f"| binary form end to end >= {TARGET_BINARY_VS_INPROC:.0%} of in-process encode | no binary wire "
                    f"form in the client (tried {', '.join(w for w in WIRE_CANDIDATES if w not in TEXT_WIRES)}) | **not met** |")
        rows.append(f"| binary form >= {TARGET_BINARY_VS_JSON:g}x the JSON-lists form | no binary wire form | **not met** |")
    for wire in caps.binary:
        a, b = [], []
        for n in sizes:
            inproc = next((r.rows_s for r in e2e if r.rows == n and r.path == "in-process"), math.nan)
            bin_ = next((r for r in e2e if r.rows == n and r.path == "Client" and r.wire == wire), None)
            js = next((r for r in e2e if r.rows == n and r.path == "Client" and r.wire == "json"), None)
            bv = bin_.rows_s if bin_ and not bin_.error else math.nan
            a.append((n, ratio(bv, inproc)))
            b.append((n, ratio(bv, js.rows_s if js and not js.error else math.nan)))
        ok_a = all(math.isfinite(v) and v >= TARGET_BINARY_VS_INPROC for _, v in a) if a else None
        ok_b = all(math.isfinite(v) and v >= TARGET_BINARY_VS_JSON for _, v in b) if b else None
        rows.append(f"| wire={wire} (Client) end to end >= {TARGET_BINARY_VS_INPROC:.0%} of in-process encode | "
                    + "; ".join(f"{n:,} rows: {fr(v)}x" for n, v in a) + f" | {verdict(ok_a)} |")
        rows.append(f"| wire={wire} (Client) >= {TARGET_BINARY_VS_JSON:g}x wire=json | "
                    + "; ".join(f"{n:,} rows: {fr(v)}x" for n, v in b) + f" | {verdict(ok_b)} |")
    floors = [(n, ratio(next((r.rows_s for r in e2e if r.rows == n and r.path == "tcp-floor"), math.nan),
                        next((r.rows_s for r in e2e if r.rows == n and r.path == "in-process"), math.nan)))
              for n in sizes]
    if any(math.isfinite(v) for _, v in floors):
        rows.append("| (context) the TCP floor: the same bytes over the socket alone, as a multiple of the "
                    "in-process encode's rows/s; no form end to end can beat it | "
                    + "; ".join(f"{n:,} rows: {fr(v)}x" for n, v in floors) + " | context |")
    # 256 single-vector clients
    for tool in sorted({r.tool for r in loads}, key=lambda t: t != "wrk"):
        on, off = find_load(loads, tool, "on", 256, 1), find_load(loads, tool, "off", 256, 1)
        if on is None or off is None:
            rows.append(f"| 256 single-vector clients ({tool}): batching on >= {TARGET_BATCHING_GAIN:g}x off | "
                        "not measured | not measured |")
            continue
        g = ratio(on.rps, off.rps)
        rows.append(f"| 256 single-vector clients ({tool}): batching on >= {TARGET_BATCHING_GAIN:g}x the throughput of off | "
                    f"{f0(on.rps)} / {f0(off.rps)} req/s = {fr(g)}x | {verdict(math.isfinite(g) and g >= TARGET_BATCHING_GAIN)} |")
        clean = on.non2xx == 0 and not on.errors
        rows.append(f"| 256 single-vector clients ({tool}), batching on: p99 < {TARGET_P99_256_MS:g} ms | "
                    f"p99 {f1(on.p99_ms)} ms ({on.non2xx} non-2xx, errors: {counter_text(on.errors)}) | "
                    f"{verdict(math.isfinite(on.p99_ms) and on.p99_ms < TARGET_P99_256_MS and clean)} |")
        for many in sorted({r.batching for r in loads if r.batching.startswith("on-x")}):
            m = find_load(loads, tool, many, 256, 1)
            if m is None:
                continue
            clean = m.non2xx == 0 and not m.errors
            rows.append(f"| same, batching {batching_label(many)} (EMBQUANT_WORKERS={many[4:]}) | "
                        f"p99 {f1(m.p99_ms)} ms at {f0(m.rps)} req/s ({m.non2xx} non-2xx, errors: "
                        f"{counter_text(m.errors)}) | "
                        f"{verdict(math.isfinite(m.p99_ms) and m.p99_ms < TARGET_P99_256_MS and clean)} |")
    # during a fit
    d = next((r for r in during if r.phase == "fit running"), None)
    if d is None:
        rows.append(f"| 16-row encodes while a fit runs: p99 < {TARGET_P99_DURING_FIT_MS:g} ms, zero 504s | not measured | not measured |")
    else:
        ok = math.isfinite(d.pct(99)) and d.pct(99) < TARGET_P99_DURING_FIT_MS and d.count_504 == 0 and not d.errors
        rows.append(f"| 16-row encodes while a fit runs: p99 < {TARGET_P99_DURING_FIT_MS:g} ms, zero 504s | "
                    f"p99 {f1(d.pct(99))} ms over {len(d.latencies)} answered; 504s: {d.count_504}; "
                    f"errors: {counter_text(d.errors)} | {verdict(ok)} |")
    # mixed
    if mix is None:
        rows.append("| mixed requests: zero transport errors, zero mismatches, zero 5xx | not measured | not measured |")
    else:
        fivexx = mix.raw.count_5xx() if mix.hooked else sum(n for k, n in mix.errors.items() if k[:1] == "5")
        mism = mix.code_mismatches + mix.side_mismatches
        rows.append(f"| {mix.requests:,} mixed requests at {mix.concurrency} concurrency: zero transport errors seen "
                    f"by the client | {mix.transport_errors} | {verdict(mix.transport_errors == 0)} |")
        rows.append(f"| same: zero mismatches against in-process encoding | {mix.code_mismatches} code, "
                    f"{mix.side_mismatches} side-value mismatches | {verdict(mism == 0)} |")
        rows.append(f"| same: zero 5xx | {fivexx} {'(raw answers, retries included)' if mix.hooked else '(seen by the client)'}"
                    f" | {verdict(fivexx == 0)} |")
    return rows


def chart(e2e: list[E2E], loads: list[Load], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    ax = axes[0][0]
    good = [r for r in e2e if not r.error]
    labels = [f"{r.rows // 1000}k: {r.label}" for r in good]
    colours = ["#000000" if r.path == "in-process" else "#7f7f7f" if r.path == "tcp-floor" else "#1f77b4" if r.wire not in TEXT_WIRES else
               "#ff7f0e" if r.wire == "base64" else "#d62728" for r in good]
    ax.barh(range(len(good)), [r.rows_s for r in good], color=colours)
    ax.set_yticks(range(len(good)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("rows/s (log)")
    ax.set_title(f"end to end, x {DIM} float32, {SCHEME} {PARAMS['bits']}-bit", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)

    styles = {("wrk", "on"): ("#1f77b4", "-"), ("wrk", "off"): ("#1f77b4", "--"),
              ("AsyncClient", "on"): ("#d62728", "-"), ("AsyncClient", "off"): ("#d62728", "--")}
    for many in sorted({r.batching for r in loads if r.batching.startswith("on-x")}):
        styles[("wrk", many)] = ("#1f77b4", ":")
        styles[("AsyncClient", many)] = ("#d62728", ":")
    panels = [(axes[0][1], 1, "rps", "requests/s", "single vectors: throughput"),
              (axes[1][0], 1, "p99_ms", "p99 latency, ms", "single vectors: p99 latency"),
              (axes[1][1], 16, "rps", "requests/s", "16-row requests: throughput")]
    for ax, rows, attr, ylabel, title in panels:
        for (tool, batching), (colour, ls) in styles.items():
            pts = sorted((r.clients, getattr(r, attr)) for r in loads
                         if (r.tool, r.batching, r.rows) == (tool, batching, rows) and not r.note)
            pts = [p for p in pts if math.isfinite(p[1]) and p[1] > 0]
            if pts:
                ax.plot(*zip(*pts), color=colour, ls=ls, marker="o" if batching == "on" else "s",
                        mfc=colour if batching == "on" else "white", label=f"{tool}, batching {batching_label(batching)}")
        if attr == "p99_ms":
            ax.axhline(TARGET_P99_256_MS, color="#7f7f7f", lw=0.8, ls=":", label=f"target {TARGET_P99_256_MS:g} ms")
        ax.set_xscale("log", base=2)
        levels = sorted({r.clients for r in loads})
        if levels:
            ax.set_xticks(levels, [str(v) for v in levels])
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, handlelength=4)
    fig.suptitle(f"embquant service on 127.0.0.1, nproc {nproc()}, {cpu_model()[:50]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------------


def main() -> None:
    global WRK_THREADS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a short run (< 2 minutes): 10,000 rows end to end, 1 s per load level, a short fit, "
                         "600 mixed requests; writes to --out (default /tmp/svcbench, not docs/)")
    ap.add_argument("--out", type=Path, default=None, help="folder for service.md and service.png "
                    "(default docs/; with --quick, /tmp/svcbench)")
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "svcbench",
                    help="server logs and wrk bodies (default /tmp/svcbench)")
    ap.add_argument("--wrk", default=shutil.which("wrk"), help="wrk binary (default: wrk on PATH); '' to skip wrk")
    ap.add_argument("--duration", type=float, default=None, help="seconds per load level and tool (default 10; quick 1)")
    ap.add_argument("--levels", type=lambda s: tuple(int(v) for v in s.split(",")), default=LEVELS,
                    help="concurrent clients, comma-separated (default 1,16,64,256)")
    ap.add_argument("--mixed", type=int, default=None, help="mixed requests (default 20000; quick 600)")
    ap.add_argument("--wrk-threads", type=int, default=WRK_THREADS,
                    help=f"wrk's threads (default: one fewer than the cores, at most 2: {WRK_THREADS} here)")
    ap.add_argument("--processes", type=int, default=2 if nproc() > 1 else 0,
                    help="a third server, batching on with this many server processes (EMBQUANT_WORKERS), "
                         "for single vectors; 0 or 1 to skip (default 2 on a multi-core machine)")
    ap.add_argument("--fit-seconds", type=float, default=None,
                    help="max_seconds of the background bitcodes fit (default 30; quick 3)")
    a = ap.parse_args()
    WRK_THREADS = max(1, a.wrk_threads)
    q = a.quick
    out_dir = a.out or (a.scratch if q else DOCS)
    duration = a.duration if a.duration is not None else (1.0 if q else 10.0)
    warm_s = 0.3 if q else 1.0
    n_mixed = a.mixed if a.mixed is not None else (600 if q else 20_000)
    fit_seconds = a.fit_seconds if a.fit_seconds is not None else (3.0 if q else 30.0)
    sizes = QUICK_E2E_SIZES if q else E2E_SIZES
    repeat, budget = (2, 3.0) if q else (3, 60.0)
    wrk = a.wrk or None
    if wrk and not LUA.exists():
        wrk = None
    a.scratch.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    started = datetime.datetime.now().astimezone()
    code = git_state()  # at the start: the servers run the code as it was then
    load_before = os.getloadavg()
    caps = client_caps()
    notes: list[str] = []
    if not caps.binary:
        notes.append("no binary wire form: the client refused "
                     + "; ".join(f"wire={w} ({caps.refused[w]})" for w in WIRE_CANDIDATES if w in caps.refused)
                     + ". Binary rows and their targets are skipped.")
    if not wrk:
        notes.append("wrk not found (or --wrk ''): the wrk rows are skipped")
    default_wait = server_default("max_wait_ms")
    log(f"client wire forms: {', '.join(caps.wires)} (default {caps.default_wire}); binary: "
        f"{', '.join(caps.binary) or 'none'}; server default max_wait_ms: {default_wait}")

    data = make_data(max(sizes))
    pool = data[:8192]
    # Batching off: every job its own device batch. (max_wait_ms=0 no longer turns it
    # off: jobs that queue while the device is busy still go together.)
    servers = {"on": Server("on", a.scratch), "off": Server("off", a.scratch, max_batch_rows="1")}
    if a.processes > 1:
        servers[f"on-x{a.processes}"] = Server(f"on-x{a.processes}", a.scratch, workers=str(a.processes))

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    e2e: list[E2E] = []
    loads: list[Load] = []
    during: list[DuringFit] = []
    floor: list[Floor] = []
    mix: Mixed | None = None
    fit_p = fit_params(fit_seconds, q)
    baseline_s = 1.0 if q else 5.0
    phases: dict[str, float] = {}
    startup: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = time.perf_counter()
        log(name)
        for srv in servers.values():
            if (why := srv.exited()) is not None:
                raise ServerGone(f"{why}, before '{name}'")
    try:
        # one after the other: the first compiles the CPU kernels where numba's cache is
        # stale, the second loads them from it
        for s in servers.values():
            startup[s.name] = s.start().wait_ready()
        log(f"servers ready after {', '.join(f'{v:.1f} s' for v in startup.values())}: batching on "
            f"{servers['on'].url}, off {servers['off'].url}")
        fits = {name: fit_on(s, data[:FIT_ROWS]) for name, s in servers.items()}
        caps.fitted_codec_id = getattr(fits["on"].fitted, "codec_id", None) is not None
        caps.fit_answer_codec_id = "codec_id" in fits["on"].raw
        if not caps.fit_answer_codec_id:
            notes.append("/fit answers no codec_id: requests carry the full codec")

        phase("1. end to end")
        e2e = end_to_end(servers["on"], fits["on"], data, sizes, caps, repeat, budget)
        phase("2. concurrent clients")
        loads = concurrency(wrk, servers, fits, pool, a.levels, REQUEST_ROWS, duration, warm_s, caps.default_wire,
                            a.scratch, notes)
        for name in list(servers):
            if name != "on":
                if (why := servers[name].exited()) is not None:
                    raise ServerGone(why)
                servers[name].stop()
        body = a.scratch / "body-on-1.json"
        if wrk and body.exists():
            phase("2b. the load generator's floor")
            floor = wrk_floor(wrk, body, a.scratch, FLOOR_CLIENTS, sorted({1, 2, WRK_THREADS}), duration)
        phase(f"3. mixed: {n_mixed:,} requests at {MIXED_CONCURRENCY} concurrency")
        mix = asyncio.run(mixed(servers["on"], fits["on"], pool, n_mixed, MIXED_CONCURRENCY, caps.default_wire))
        log(f"   {mix.ok:,} answered in {mix.seconds:.1f} s; errors: {counter_text(mix.errors)}; code mismatches "
            f"{mix.code_mismatches}; raw statuses {counter_text(mix.raw.status)}, lost {mix.raw.lost}")
        phase(f"4. 16-row encodes while a bitcodes fit ({fit_p}) runs")
        fit_x = make_data(fit_p["max_fit_rows"], seed=2)
        during = asyncio.run(encodes_during_fit(servers["on"], fits["on"], pool, fit_x, fit_p,
                                                baseline_s, caps.default_wire))
        for d in during:
            log(f"   {d.phase}: {len(d.latencies)} answered, p50 {f1(d.pct(50))} ms, p99 {f1(d.pct(99))} ms, "
                f"errors {counter_text(d.errors)} {d.fit_outcome}")
        phase("end")
    except ServerGone as e:
        notes.append(f"RUN INCOMPLETE: {e}. The phases after it were not run; rows measured while it was "
                     "down are failures of the run, not of the service.")
        log(f"run incomplete: {e}")
    finally:
        for s in servers.values():
            s.stop()
    load_after = os.getloadavg()
    names = list(phases)
    took = ", ".join(f"{n.split(':')[0].split(' (')[0]} {phases[m] - phases[n]:.0f} s" for n, m in zip(names, names[1:]))

    # -- the report
    cmd = " ".join([".venv/bin/python", "bench/service.py", *sys.argv[1:]])
    uv = ", ".join(f"{p} {pkg_version(p)}" for p in ("uvicorn", "uvloop", "httptools", "httpx", "msgpack") if pkg_version(p))
    lines = ["# Service throughput and latency (issue 8)", ""]
    lines += [f"**{n}**" for n in notes if n.startswith("RUN INCOMPLETE")] + [""] * any(
        n.startswith("RUN INCOMPLETE") for n in notes)
    if q:
        lines += ["**Quick run (`--quick`): short windows and small sizes, for checking the script. Not the "
                  "figures of record: `make bench-service` runs the full measurement.**", ""]
    lines += [
        f"Command: `{cmd}` (`make bench-service` runs it without `--quick`); written by bench/service.py.",
        "",
        f"- Machine: `nproc` {nproc()}, {cpu_model()}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after. Client, wrk and servers share these cores.",
        f"- Software: Python {platform.python_version()}, torch {pkg_version('torch')}, {uv}; "
        f"{wrk_version(wrk) if wrk else 'wrk: not used'}.",
        f"- Code: git {code} (at the start). Date: {started.strftime('%Y-%m-%d %H:%M %Z')}. Whole run: "
        f"{time.perf_counter() - t_start:.0f} s ({took}).",
        f"- Servers: `{' '.join(rel(serve_command()))}` "
        f"on 127.0.0.1 with the default settings (batching on: EMBQUANT_MAX_WAIT_MS default "
        f"{default_wait}) and a second one with EMBQUANT_MAX_BATCH_ROWS=1 (batching off: one job per device "
        f"batch)"
        + (f", and a third with EMBQUANT_WORKERS={a.processes} (batching on, {a.processes} server processes "
           "sharing the port; single vectors only)" if a.processes > 1 else "")
        + "; ready after "
        f"{', '.join(f'{v:.0f} s' for v in startup.values()) or 'n/a'}.",
        f"- Client: wire forms it accepts: {', '.join(caps.wires)} (default: {caps.default_wire}); binary forms: "
        f"{', '.join(caps.binary) or 'none'}; its Fitted carries a codec_id: {'yes' if caps.fitted_codec_id else 'no'}; "
        f"/fit answers a codec_id: {'yes' if caps.fit_answer_codec_id else 'no'}; "
        f"connection pool: {caps.pool or 'unknown'}.",
        f"- Codec: `{SCHEME}` {PARAMS}, fitted once per server with `Client.fit` on {FIT_ROWS:,} rows; data: "
        f"Gaussian rows normalised to unit length (seed 0), float32 x {DIM}.",
    ]
    if notes:
        lines += ["", "Notes (what was skipped or substituted, and why):", ""] + [f"- {n}" for n in notes]
    lines += ["", "![service speed](service.png)", "", "## Targets of issue 8", ""]
    lines += targets(e2e, loads, during, mix, caps)
    lines += [
        "", "## End to end", "",
        f"`Client.quantize(x, codec=fitted)` and `AsyncClient.quantize` (each with its default chunk size and "
        f"concurrency; `Client` sends its chunks on threads), against the batching-on server, beside "
        f"`embquant.codecs.encode(codec, torch.from_numpy(x))` in this process on the same rows, codec parsed by "
        f"`codec_from_json(fitted.codec)` (timed before and after the wire forms, best of both). Best of up to {repeat} timed runs each, fewer where one more would pass {budget:g} s; "
        "one warm-up call before. `x json-lists`: over wire=json on the same path. MB: request bodies and "
        "answer Content-Length per run (httpx event hooks).",
    ]
    lines += e2e_section(e2e)
    lines += [
        "", "## Concurrent clients", "",
        f"Each level runs {duration:g} s per tool and server, batching on and off interleaved. wrk: "
        f"`wrk -t{WRK_THREADS} -c<clients> -d{max(1, round(duration))}s --latency --timeout 30s -s bench/wrk/quantize.lua URL/quantize -- body.json` "
        f"({WRK_THREADS} thread{'s' * (WRK_THREADS > 1)}: see the floor below), one prepared JSON body repeated; its latency percentiles, its requests "
        "less non-2xx over its duration; errors: wrk's socket errors and non-2xx statuses from the script. AsyncClient: one "
        f"client object (wire {caps.default_wire}, default retries), N tasks sending back to back after a {warm_s:g} s "
        "warm-up, then cancelled (as wrk stops); as wrk, the requests answered within the window count, each timed "
        "from its own start (a request slower than the window is not in its percentiles), requests/s is their number "
        "over the window; errors: exceptions raised to the caller in the window; non-2xx: raw answers of the whole "
        "run (retries included). CPU ms/request: the server process's CPU time (/proc) and the load generator's "
        "(wrk's, from getrusage of children; the AsyncClient's, this process's) during the window, over the "
        "requests counted: which side runs out of CPU first on shared cores. Each wrk run starts "
        f"{SETTLE_S:g} s after the one before (`SETTLE_S`: a run started while the last one's connections were "
        "torn down saw a retransmission per connection and seconds of p99 that the server never saw); TCP "
        "retransmits: segments the kernel retransmitted during the run (/proc/net/snmp, the whole machine).",
    ]
    lines += load_section(loads)
    if floor:
        lines += [
            "", "### The load generator's floor", "",
            f"The same wrk command and body against `bench/bare_asgi.py`, an ASGI app that reads the body and "
            f"answers a fixed 200 at once, on the same uvicorn (uvloop, httptools), {duration:g} s per row, with "
            "each thread count: what wrk and the HTTP server alone give on these cores, a latency no service "
            "here can beat. Where `-t2` shows a tail that `-t1` does not, the tail is the load generator's "
            f"(two wrk threads and the server on {nproc()} cores), and the rows above use -t{WRK_THREADS}.", "",
            "| wrk threads | connections | requests/s | p50 ms | p99 ms |", "|---|---|---|---|---|",
        ]
        for f in floor:
            lines.append(f"| {f.threads} | {f.clients} | {f.note or f0(f.rps)} | {f1(f.p50_ms)} | {f1(f.p99_ms)} |")
    lines += ["", "## 16-row encodes while a fit runs", ""]
    if during:
        lines += [
            f"{FIT_PROBE_TASKS} AsyncClient tasks (wire {caps.default_wire}, no retries, so each 504 is seen once) send "
            f"16-row encodes back to back: first {baseline_s:g} s with nothing else running, then while another "
            f"client's fit runs (`bitcodes` {fit_p} on {fit_p['max_fit_rows']:,} x {DIM}, the server's default deadline), "
            "until that fit answers; requests in flight then are finished and counted.", "",
            "| phase | encodes answered | p50 ms | p99 ms | max ms | 504s | other errors | window s | the fit |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for d in during:
            other = collections.Counter({k: v for k, v in d.errors.items() if not k.startswith("504")})
            fit_cell = f"{d.fit_outcome} after {d.fit_seconds:.1f} s" if d.fit_outcome else ""
            lines.append(f"| {d.phase} | {len(d.latencies):,} | {f1(d.pct(50))} | {f1(d.pct(99))} | "
                         f"{f1(max(d.latencies) * 1e3 if d.latencies else math.nan)} | {d.count_504} | "
                         f"{counter_text(other)} | {d.seconds:.1f} | {fit_cell} |")
    lines += ["", "## Mixed requests", ""]
    if mix:
        share = ", ".join(f"{name} {p:.0%}" for name, _, p in MIX)
        lines += [
            f"{mix.requests:,} requests ({share}; rows drawn from a pool of {len(pool):,}) from {mix.concurrency} tasks on "
            f"one AsyncClient (wire {caps.default_wire}, default retries), batching-on server. Each answer is checked against "
            "the in-process encode (codes and side values exactly) or decode of the same rows.", "",
            "| measure | value |", "|---|---|",
            f"| requests by kind | {counter_text(mix.by_kind)} |",
            f"| answered | {mix.ok:,} in {mix.seconds:.1f} s ({f0(mix.ok / mix.seconds if mix.seconds else math.nan)} requests/s) |",
            f"| errors raised to the caller | {counter_text(mix.errors)} |",
            f"| of them transport errors (APIConnectionError) | {mix.transport_errors} |",
            f"| raw HTTP answers (retries included) | {counter_text(mix.raw.status) if mix.hooked else 'not counted'} |",
            f"| requests sent without an answer (lost connections, retries included) | {mix.raw.lost if mix.hooked else 'not counted'} |",
            f"| code / side-value mismatches | {mix.code_mismatches} / {mix.side_mismatches} |",
            f"| dequantize answers differing from in-process decode | {mix.decode_mismatches} (largest difference {mix.decode_max_abs:.3g}) |",
        ]
    (out_dir / "service.md").write_text("\n".join(lines) + "\n")
    chart(e2e, loads, out_dir / "service.png")
    log("\n".join(lines))
    log(f"wrote {out_dir / 'service.md'} and {out_dir / 'service.png'}")


if __name__ == "__main__":
    main()
