"""The Python AsyncClient's own HTTP pool against httpx's, side by side in one run:
N tasks on one AsyncClient sending single-vector /quantize requests (lloyd 4-bit by
codec id, 384 dimensions) to one local server, alternating the two transports.

    .venv/bin/python bench/client.py [--tasks 16,64,256] [--seconds 5] [--rounds 2]

Prints a markdown table (requests/s and p50/p99 per round).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import service as svc  # noqa: E402  (bench/service.py: the server helper)

from embquant_client import AsyncClient  # noqa: E402


async def load(url: str, tasks: int, seconds: float, use_httpx: bool) -> tuple[float, float, float]:
    x = np.random.default_rng(0).standard_normal((4096, 384)).astype(np.float32)
    http = httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(
        max_connections=256, max_keepalive_connections=256)) if use_httpx else None
    async with AsyncClient(url, timeout=60, http_client=http) as c:
        enc = await c.quantize(x[:1], "lloyd")
        lat: list[float] = []
        t_end = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            k = i
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                await c.quantize(x[k % 4096 : k % 4096 + 1], codec=enc)
                lat.append(time.perf_counter() - t0)
                k += tasks

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(tasks)))
        took = time.perf_counter() - t0
    if http is not None:
        await http.aclose()
    lat.sort()
    return len(lat) / took, lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", default="16,64,256")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    server = svc.Server("client", Path(tempfile.mkdtemp(prefix="embquant-client-"))).start()
    rows = []
    try:
        server.wait_ready()
        for r in range(a.rounds):
            for tasks in [int(t) for t in a.tasks.split(",")]:
                order = (False, True) if r % 2 == 0 else (True, False)  # alternate who goes first
                for use_httpx in order:
                    rps, p50, p99 = asyncio.run(load(server.url, tasks, a.seconds, use_httpx))
                    rows.append((r + 1, tasks, "httpx" if use_httpx else "own pool", rps, p50, p99))
                    print(rows[-1], flush=True)
    finally:
        server.stop()
    print(f"\n`.venv/bin/python bench/client.py {' '.join(sys.argv[1:])}`\n")
    print("| round | tasks | transport | requests/s | p50 ms | p99 ms |")
    print("|---:|---:|---|---:|---:|---:|")
    for r, t, name, rps, p50, p99 in sorted(rows, key=lambda x: (x[1], x[2], x[0])):
        print(f"| {r} | {t} | {name} | {rps:,.0f} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
