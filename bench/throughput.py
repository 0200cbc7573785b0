"""Throughput, measured side by side in one run (these machines are shared and
noisy: compare the ratios, not the absolute numbers).

1. In-process encode speed of every scheme (first example of each) on real-sized
   input (N x 384 float32), in GB/s of float32 input, with distquant and faiss SQ4
   measured in the same run for scale.
2. Through HTTP: rows/s for concurrent /quantize requests that share a codec,
   with the batching worker (max_wait_ms=2) and without (max_wait_ms=0), base64 wire.

    make bench-throughput            # or: .venv/bin/python bench/throughput.py --quick
Writes docs/throughput.md.
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

# one representative setting per scheme (4 bits per dimension where that applies)
REPRESENTATIVE = {
    "absmax": {"bits": 4}, "affine": {"bits": 4}, "bitcodes": {"num_bits": 384, "iterations": 2},
    "blockwise": {"table": "nf4"}, "codebook": {"table": "nf4"}, "distributional": {"bits": 4},
    "hqq": {"bits": 4}, "lloyd": {"bits": 4}, "transform": {"bits": 4},
}


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def in_process(n: int) -> list[tuple[str, float]]:
    from embquant import codecs

    x = torch.randn(n, 384)
    gb = x.numel() * 4 / 1e9
    rows = []
    for name in codecs.all_schemes():
        params = dict(REPRESENTATIVE.get(name, {}))
        codec = codecs.fit(name, params, x[:2000])
        t = best_of(lambda: codecs.encode(codec, x))
        rows.append((f"embquant {name} {params}", gb / t))
    try:
        import distquant

        t = best_of(lambda: distquant.quantize(x, k=4, beta=1.0, packbits=True))
        rows.append(("distquant k=4 beta=1 (reference)", gb / t))
    except ImportError:
        pass
    try:
        import faiss

        sq = faiss.ScalarQuantizer(384, faiss.ScalarQuantizer.QT_4bit)
        xn = x.numpy()
        sq.train(xn[:2000])
        t = best_of(lambda: sq.compute_codes(xn))
        rows.append(("faiss SQ4 (reference)", gb / t))
    except ImportError:
        pass
    return rows


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
    n = 20_000 if a.quick else 100_000
    lines = ["# Throughput", "", f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`; torch threads: {torch.get_num_threads()}", ""]
    lines += ["| encode, in process | GB/s of float32 input |", "|---|---|"]
    lines += [f"| {name} | {v:.3f} |" for name, v in in_process(n)]
    small = http(200 if a.quick else 1000, 16, 32, "lloyd")
    big = http(40 if a.quick else 200, 1024, 8, "absmax")
    lines += ["", "| HTTP | rows/s |", "|---|---|"] + [f"| {name} | {v:,.0f} |" for name, v in small + big]
    docs = Path(__file__).resolve().parents[1] / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
