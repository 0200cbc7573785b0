"""Which max_wait_ms: the batcher's wait swept under wrk load, single-vector and 16-row
/quantize requests (lloyd 4-bit by codec id, 384 dimensions), 16/64/256 connections.

    .venv/bin/python bench/batching.py [--waits 0,0.5,2,5] [--duration 6]

Writes docs/batching.md (requests/s and p50/p99 per wait, from one run: compare
within it). Uses bench/service.py's server and wrk helpers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service as svc  # noqa: E402  (bench/service.py)

ROOT = Path(__file__).resolve().parents[1]


def body_for(url: str, rows: int, scratch: Path) -> Path:
    x = np.random.default_rng(rows).standard_normal((rows, 384)).astype(np.float32)
    r = httpx.post(url + "/quantize", json={"vectors": x.tolist(), "scheme": "lloyd", "include_codec": False}, timeout=60)
    r.raise_for_status()
    body = {"vectors": x.tolist(), "codec_id": r.json()["codec_id"], "include_codec": False}
    path = scratch / f"body-{rows}.json"
    path.write_text(json.dumps(body, separators=(",", ":")))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--waits", default="0,0.5,2,5")
    ap.add_argument("--clients", default="16,64,256")
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "batching.md"))
    a = ap.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    scratch = Path(tempfile.mkdtemp(prefix="embquant-batching-"))
    results = []
    for wait in [float(w) for w in a.waits.split(",")]:
        server = svc.Server(f"wait{wait:g}", scratch, max_wait_ms=str(wait)).start()
        try:
            server.wait_ready()
            for rows in [int(r) for r in a.rows.split(",")]:
                body = body_for(server.url, rows, scratch)
                svc.run_wrk(wrk, server.url + "/quantize", body, 64, 2)  # warm-up
                for clients in [int(c) for c in a.clients.split(",")]:
                    w, cmd = svc.run_wrk(wrk, server.url + "/quantize", body, clients, a.duration)
                    bad = w["non2xx"] + sum(w["socket_errors"].values())
                    results.append((wait, rows, clients, w.get("rps", float("nan")), w.get("p50_ms", float("nan")),
                                    w.get("p99_ms", float("nan")), bad))
                    print(results[-1], flush=True)
        finally:
            server.stop()
    lines = [
        "# Batching: which max_wait_ms",
        "",
        f"`{' '.join(['.venv/bin/python', 'bench/batching.py'] + sys.argv[1:])}` on "
        f"{datetime.date.today()}, {os.cpu_count()} cores ({platform.machine()}), wrk on the same machine "
        f"(`-t{svc.WRK_THREADS}`, {a.duration:g} s per cell, `--timeout 30s`). One `embquant serve` per wait; lloyd 4-bit, 384 "
        "dimensions, codec by id, JSON lists. Numbers from one run: compare within it.",
        "",
        "| max_wait_ms | rows/request | connections | requests/s | rows/s | p50 ms | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for wait, rows, clients, rps, p50, p99, bad in results:
        lines.append(f"| {wait:g} | {rows} | {clients} | {rps:,.0f} | {rps * rows:,.0f} | {p50:.1f} | {p99:.1f} | {bad} |")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
