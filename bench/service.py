"""HTTP throughput of the service: rows/s for concurrent /quantize requests that share
a codec, with the batching worker (max_wait_ms=2) and without (max_wait_ms=0), base64
wire, client and server on this machine. (In-process codec speed: bench/codecs.py.)

    make bench-service            # or: .venv/bin/python bench/service.py --quick
Writes docs/service.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(max_wait_ms: float):
    port = free_port()
    env = {**os.environ, "EMBQUANT_PORT": str(port), "EMBQUANT_DEVICE": os.environ.get("EMBQUANT_DEVICE", "auto"),
           "EMBQUANT_MAX_WAIT_MS": str(max_wait_ms), "EMBQUANT_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "embquant.cli", "serve"], env=env)
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


async def load(url: str, codec, batches: list[np.ndarray], concurrency: int) -> float:
    from embquant_client import AsyncClient

    async with AsyncClient(url, timeout=120) as c:
        sem = asyncio.Semaphore(concurrency)

        async def one(x):
            async with sem:
                await c.quantize(x, codec=codec, include_codec=False)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(x) for x in batches))
        return time.perf_counter() - t0


def http(requests: int, rows: int, concurrency: int, scheme: str) -> list[tuple[str, float]]:
    from embquant_client import Client

    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((rows, 384)).astype(np.float32) for _ in range(requests)]
    out = []
    for wait in (0.0, 2.0):
        proc, url = serve(wait)
        try:
            with Client(url) as c:
                codec = c.fit(batches[0], scheme, bits=4).codec
            asyncio.run(load(url, codec, batches[:8], concurrency))  # warm
            t = asyncio.run(load(url, codec, batches, concurrency))
            out.append((f"HTTP /quantize {scheme} 4-bit, {rows} rows/request, {concurrency} concurrent, max_wait_ms={wait:g}", requests * rows / t))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    lines = ["# Service throughput", "", f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`; torch threads: {torch.get_num_threads()}", ""]
    small = http(200 if a.quick else 1000, 16, 32, "lloyd")
    big = http(40 if a.quick else 200, 1024, 8, "absmax")
    lines += ["| HTTP | rows/s |", "|---|---|"] + [f"| {name} | {v:,.0f} |" for name, v in small + big]
    docs = Path(__file__).resolve().parents[1] / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "service.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
