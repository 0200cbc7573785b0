"""The event loop's own cost per request, without sockets: the app's ASGI interface
driven in this process by N single-vector POST /quantize requests (one 384-float row,
`lloyd` 4-bit by name, JSON lists), 256 at a time, with the cycle collector's time
counted (gc.callbacks), in three modes side by side: nothing done to the collector;
the objects alive after start-up frozen (gc.freeze()); and frozen with the first
generation's threshold raised (`embquant.api.app.tune_collector`), what `embquant
serve` does once it is up.

    .venv/bin/python bench/event_loop.py [--requests 20000] [--rounds 2]

Each mode runs in a fresh process (so one cannot warm the other's collector), the
modes alternate for --rounds rounds. Measurement only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(n: int, mode: str) -> dict:
    freeze = mode != "not"
    sys.path.insert(0, str(ROOT / "service"))
    import numpy as np

    from embquant.api import create_app
    from embquant.settings import Settings

    row = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    body = json.dumps({"scheme": "lloyd", "params": {"bits": 4}, "vectors": [row.tolist()]}).encode()
    app = create_app(Settings(device="cpu", kernel_warm_up="blocking"))
    headers = [(b"host", b"x"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    spent = {"t": 0.0, "t0": 0.0, "n": [0, 0, 0]}

    def on_gc(phase, info):
        if phase == "start":
            spent["t0"] = time.perf_counter()
        else:
            spent["t"] += time.perf_counter() - spent["t0"]
            spent["n"][info["generation"]] += 1

    async def request():
        sent, done = [], False

        async def receive():
            nonlocal done
            if not done:
                done = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/quantize", "raw_path": b"/quantize", "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent

    async def main():
        async with app.router.lifespan_context(app):
            for _ in range(200):
                await request()
            if mode == "serve":  # what `embquant serve` and the Ray Serve replicas do
                from embquant.api.app import tune_collector

                tune_collector()
            elif freeze:
                gc.collect()
                gc.freeze()
            gc.callbacks.append(on_gc)
            t = time.perf_counter()
            left = n
            while left > 0:
                k = min(256, left)
                await asyncio.gather(*(request() for _ in range(k)))
                left -= k
            return time.perf_counter() - t

    seconds = asyncio.run(main())
    return {"mode": mode, "threshold": gc.get_threshold()[0], "requests": n, "seconds": seconds, "gc_seconds": spent["t"],
            "collections": spent["n"], "frozen": gc.get_freeze_count()}


MODES = ("not", "frozen", "serve")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one_run(a.requests, a.one)))
        return 0
    print(f"In-process ASGI load, {a.requests:,} single-vector /quantize requests, 256 at a time "
          f"(`python bench/event_loop.py --requests {a.requests} --rounds {a.rounds}`; {os.cpu_count()} cores)")
    print("| round | start-up objects | requests/s | us per request | time in collections | collections (gen 0/1/2) |")
    print("|---|---|---|---|---|---|")
    for r in range(1, a.rounds + 1):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--requests", str(a.requests), "--one", mode],
                                 capture_output=True, text=True, check=True, env={**os.environ, "EMBQUANT_LOG_LEVEL": "warning"})
            d = json.loads(out.stdout.strip().splitlines()[-1])
            label = "collected" if d["mode"] == "not" else f"frozen ({d['frozen']:,})"
            label += f", threshold {d['threshold']:,}"
            print(f"| {r} | {label} | {d['requests'] / d['seconds']:,.0f} | {d['seconds'] / d['requests'] * 1e6:.0f} | "
                  f"{d['gc_seconds']:.3f} s of {d['seconds']:.3f} s ({d['gc_seconds'] / d['seconds']:.0%}) | "
                  f"{'/'.join(map(str, d['collections']))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
