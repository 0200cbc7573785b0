"""EMBQUANT_WORKERS: one server process against several on the same port, under wrk.

    .venv/bin/python bench/workers.py                 # writes docs/workers.md
    .venv/bin/python bench/workers.py --workers 1,2,4 --duration 5 --out /tmp/workers.md

Each setting starts `embquant serve` (bench/service.py's Server) and runs Debian's `wrk`
with bench/wrk/quantize.lua for `--duration` seconds at 16 and at 256 connections: one
row of 384 floats per request, `lloyd` 4-bit by name, JSON, the codec left out of the
answer. The settings alternate for `--rounds` rounds (shared machines drift); wrk runs
on the same cores as the server. Measurement only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import numpy as np

from machine import cpu_model, nproc  # bench/machine.py
from service import LUA, ROOT, WRK_THREADS, Server, git_state, parse_wrk  # bench/service.py


def server_histogram(url: str) -> dict[float, float]:
    """/quantize's embquant_request_seconds buckets: upper bound -> cumulative count."""
    out = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("embquant_request_seconds_bucket{") and 'route="/quantize"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_p99(before: dict[float, float], after: dict[float, float]) -> float:
    """The smallest bucket bound holding 99% of the requests answered between the scrapes."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta.get(float("inf"), 0.0)
    return next((le for le, n in delta.items() if total and n >= 0.99 * total), float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="EMBQUANT_WORKERS values, comma-separated")
    ap.add_argument("--connections", default="16,256")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--wrk-threads", type=int, default=WRK_THREADS,
                    help=f"wrk's threads (default, as bench/service.py: one fewer than the cores, at most 2: "
                         f"{WRK_THREADS} here)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "workers.md")
    a = ap.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench/workers.py needs Debian's wrk (apt-get install wrk)")
    workers = [int(v) for v in a.workers.split(",")]
    conns = [int(v) for v in a.connections.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="workers-"))
    body = scratch / "body.json"
    x = np.random.default_rng(0).standard_normal((1, 384)).astype(np.float32)
    body.write_text(json.dumps({"scheme": "lloyd", "params": {"bits": 4}, "vectors": x.tolist(),
                                "include_codec": False}))
    rows = []
    for rnd in range(1, a.rounds + 1):
        for w in workers:
            s = Server(f"w{w}", scratch, workers=str(w), log_level="warning").start()
            try:
                s.wait_ready()
                subprocess.run([wrk, f"-t{a.wrk_threads}", "-c16", "-d2s", "-s", str(LUA), s.url + "/quantize", "--", str(body),
                                "application/json"], capture_output=True, timeout=60)  # warm every process
                for c in conns:
                    before = server_histogram(s.url) if w == 1 else None
                    p = subprocess.run([wrk, f"-t{a.wrk_threads}", f"-c{c}", f"-d{max(1, round(a.duration))}s", "--latency",
                                        "--timeout", "30s", "-s", str(LUA), s.url + "/quantize", "--", str(body),
                                        "application/json"], capture_output=True, text=True, timeout=a.duration + 120)
                    r = parse_wrk(p.stdout)
                    if before is not None:
                        r["server_p99_s"] = bucket_p99(before, server_histogram(s.url))
                    rows.append((rnd, w, c, r))
                    print(f"round {rnd} workers {w} connections {c}: {r.get('rps', float('nan')):,.0f} requests/s, "
                          f"p50 {r.get('p50_ms', float('nan')):.1f} ms, p99 {r.get('p99_ms', float('nan')):.1f} ms, "
                          f"non-2xx {r['non2xx']}, socket errors {r['socket_errors'] or 0}", flush=True)
            finally:
                s.stop()
    lines = [
        "# One server process or several (EMBQUANT_WORKERS)",
        "",
        "Command: `.venv/bin/python bench/workers.py` (written by bench/workers.py).",
        "",
        f"- Machine: `nproc` {nproc()}, {cpu_model()}; wrk runs on the same cores; shared, so other work may"
        " have run meanwhile.",
        f"- Code: {git_state()}; date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"- Load: wrk `-t{a.wrk_threads}` (on 2 cores, -t2's own tail hid the server's: docs/service.md's"
        f" floor section), {a.duration:g} s per row, POST /quantize of one 384-float row, `lloyd` 4-bit by name,"
        " JSON; the settings alternate round by round.",
        "",
        "- `server p99 <=`: with one process, the server's own `embquant_request_seconds` histogram (from the"
        " request's first byte read to its answer written), read from /metrics before and after the wrk run:"
        " the upper bound of the bucket that holds its 99th percentile.",
        "",
        "| round | EMBQUANT_WORKERS | connections | requests/s | p50 ms | p99 ms | server p99 <= | non-2xx | socket errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rnd, w, c, r in rows:
        sp = r.get("server_p99_s")
        lines.append(f"| {rnd} | {w} | {c} | {r.get('rps', float('nan')):,.0f} | {r.get('p50_ms', float('nan')):.1f} | "
                     f"{r.get('p99_ms', float('nan')):.1f} | {'-' if sp is None else f'{sp:g} s'} | {r['non2xx']} | "
                     f"{r['socket_errors'] or 0} |")
    lines.append("")
    a.out.write_text("\n".join(lines))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
