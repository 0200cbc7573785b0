"""embquant-client quantize (a .npy to Parquet, through the command) against the client
library's own throughput on the same vectors, and the command's peak memory.

    python bench/cli.py [--rows 100000] [--chunk-rows 4096] [--concurrency 4] [--rounds 2]
                        [--child-python PATH]

Starts its own `embquant serve` (CPU) on a free port, fits lloyd 4-bit once, then per
round, one after the other on the same server: the library (``Client.quantize_bulk``
over the array in memory, and ``AsyncClient.quantize`` with the same concurrency, both
in this process, start-up not counted; and "library script": a process that loads the
.npy, encodes it with ``Client.quantize`` and writes Parquet, timed start to exit), and
the command as a process of its own (wall clock from its start to its exit: imports,
reading the .npy, writing and renaming the Parquet file). The command's peak RSS comes
from wait4 on its process, beside the peak of a process that only imports what it
imports. The vectors: all-MiniLM-L6-v2 embeddings of real sentences (tests/support/corpus.py),
repeated with a little noise (renormalised) up to --rows, since embedding 100,000
sentences on a 2-core machine takes longer than the benchmark.

``--child-python``: the interpreter of the processes timed from start to exit (the
command, the library script, the imports-only process), e.g. a virtual environment with
only the client installed as a user would (``pip install './client[cli]'``): the
project's own environment also holds packages that httpx imports when they are present
(click, rich, pygments: its command line), which the command's start-up then pays too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import embquant_client as ec  # noqa: E402
from bench.machine import cpu_model, nproc  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EMBQUANT_HOST": "127.0.0.1", "EMBQUANT_PORT": str(port), "EMBQUANT_DEVICE": "cpu",
           "EMBQUANT_KERNEL_WARM_UP": "blocking"}
    proc = subprocess.Popen([sys.executable, "-m", "embquant.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 300 s")


def vectors(rows: int) -> np.ndarray:
    from tests.support import corpus

    base = corpus.minilm(2000)
    rng = np.random.default_rng(0)
    x = np.tile(base, (-(-rows // len(base)), 1))[:rows]
    x = x + rng.standard_normal(x.shape).astype(np.float32) * 0.01
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


#: Run a module as __main__ and write the process's peak RSS (VmHWM, which exec
#: resets: wait4's ru_maxrss would carry this benchmark's own peak from the fork).
_PEAK = ("import atexit, os, runpy, sys\n"
         "def peak():\n"
         "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
         "    open(os.environ['PEAK_FILE'], 'w').write(hwm)\n"
         "atexit.register(peak)\n"
         "sys.argv = sys.argv[1:]\n"
         "if sys.argv[0] == '-c':\n"
         "    code = sys.argv.pop(1)\n"
         "    exec(compile(code, '<string>', 'exec'), {'__name__': '__main__'})\n"
         "else:\n"
         "    runpy.run_module(sys.argv[0], run_name='__main__')\n")


CHILD_PYTHON = sys.executable  # --child-python


def run_child(module_argv: list[str], work: Path) -> tuple[float, int]:
    """(seconds from start to exit, peak RSS in bytes) of ``python -m module args``
    (or ``python -c code``), with CHILD_PYTHON."""
    peak_file = work / "peak"
    t0 = time.perf_counter()
    p = subprocess.run([CHILD_PYTHON, "-c", _PEAK, *module_argv], capture_output=True, text=True,
                       env={**os.environ, "PEAK_FILE": str(peak_file)})
    seconds = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{module_argv[:2]} failed: {p.stderr}")
    return seconds, int(peak_file.read_text()) * 1024


#: The same job written with the library, as a user would without the command: a
#: process that loads the .npy whole, encodes it with Client.quantize and writes the
#: codes and side values to Parquet (the command's columns and metadata key).
_SCRIPT = """
import json, sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
import embquant_client as ec
src, codec_file, out, url, chunk, conc = sys.argv[1:7]
codec = ec.Codec.load(codec_file)
x = np.load(src)
with ec.Client(url, timeout=300) as c:
    enc = c.quantize(x, codec=codec, chunk_rows=int(chunk))
w = enc.codes.shape[1]
codes = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8 * w), len(enc), [None, pa.py_buffer(enc.codes)])
side = pa.FixedSizeListArray.from_arrays(pa.array(enc.side.ravel()), enc.side.shape[1])
t = pa.table({"codes": codes, "side": side}).replace_schema_metadata({"embquant.codec_id": codec.codec_id})
pq.write_table(t, out)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child-python", default=sys.executable,
                    help="interpreter of the command, the library script and the imports-only process")
    args = ap.parse_args()
    global CHILD_PYTHON
    CHILD_PYTHON = args.child_python

    x = vectors(args.rows)
    work = Path(tempfile.mkdtemp(prefix="embquant-bench-cli-"))
    src, out, codec_file = work / "x.npy", work / "codes.parquet", work / "codec.json"
    np.save(src, x)
    server, url = start_server()
    rows = {"library quantize_bulk": [], "library AsyncClient.quantize": [], "library script": [],
            "command": []}
    try:
        with ec.Client(url, timeout=300) as c:
            codec = c.fit(x[:5000], "lloyd", bits=4)
            codec.save(codec_file)
            list(c.quantize_bulk(x[:20000], codec, chunk_rows=args.chunk_rows))  # warm both sides
            # a process that imports what the command imports, and exits
            imports = [run_child(["-c", "import embquant_client._cli, pyarrow.parquet"], work)
                       for _ in range(args.rounds)]
            cli = ["embquant_client._cli", "quantize", str(src), "--codec", str(codec_file),
                   "-o", str(out), "--server", url, "--chunk-rows", str(args.chunk_rows), "--concurrency",
                   str(args.concurrency)]
            peaks, seconds_cmd = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                n = sum(len(e) for e in c.quantize_bulk(x, codec, chunk_rows=args.chunk_rows,
                                                        concurrency=args.concurrency))
                rows["library quantize_bulk"].append(n / (time.perf_counter() - t0))

                async def once() -> int:
                    async with ec.AsyncClient(url, timeout=300) as ac:
                        enc = await ac.quantize(x, codec=codec, chunk_rows=args.chunk_rows,
                                                concurrency=args.concurrency)
                        return len(enc)

                t0 = time.perf_counter()
                n = asyncio.run(once())
                rows["library AsyncClient.quantize"].append(n / (time.perf_counter() - t0))

                seconds, _ = run_child(["-c", _SCRIPT, str(src), str(codec_file), str(work / "script.parquet"),
                                        url, str(args.chunk_rows), str(args.concurrency)], work)
                rows["library script"].append(args.rows / seconds)

                out.unlink(missing_ok=True)
                seconds, peak = run_child(cli, work)
                rows["command"].append(args.rows / seconds)
                seconds_cmd.append(seconds)
                peaks.append(peak)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    chunk_bytes = min(args.chunk_rows, args.rows) * x.shape[1] * 4
    best_lib = max(max(rows["library quantize_bulk"]), max(rows["library AsyncClient.quantize"]))
    import_s = min(t for t, _ in imports)
    base_rss = max(r for _, r in imports)
    # the command less its start-up (the imports-only process's time): its streaming rate
    rows["command without start-up"] = [args.rows / max(t - import_s, 1e-9) for t in seconds_cmd]
    report = {
        "machine": f"{cpu_model()}, {nproc()} cores (shared)",
        "child_python": args.child_python,
        "rows": args.rows, "dim": int(x.shape[1]), "chunk_rows": args.chunk_rows, "concurrency": args.concurrency,
        "rows_per_s": {k: [round(v) for v in vs] for k, vs in rows.items()},
        "command_vs_best_library": round(max(rows["command"]) / best_lib, 3),
        "command_vs_library_script": round(max(rows["command"]) / max(rows["library script"]), 3),
        "command_without_start_up_vs_best_library": round(max(rows["command without start-up"]) / best_lib, 3),
        "start_up_s": round(import_s, 3),
        "command_peak_rss_mib": [round(p / 2**20, 1) for p in peaks],
        "import_only_peak_rss_mib": round(base_rss / 2**20, 1),
        "one_chunk_mib": round(chunk_bytes / 2**20, 1),
        "command_above_imports_in_chunks": [round((p - base_rss) / chunk_bytes, 2) for p in peaks],
    }
    print(json.dumps(report, indent=2))
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    (ROOT / "bench" / "out" / "cli.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
