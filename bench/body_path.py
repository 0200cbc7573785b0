"""Where a large /quantize request's time goes beyond the socket, and what the client's
chunking changes: the measurements behind the README's paragraph on the body path.

    .venv/bin/python bench/body_path.py          # about a minute; writes docs/body-path.md

Starts its own `embquant serve` (CPU) on a free port. Data: Gaussian rows normalised to
unit length (seed 0), float32 x 384; the codec: `lloyd` bits=4 by name (data-oblivious).

1. One request at a time, per size (1,024 to 16,384 rows): a prebuilt msgpack
   /quantize request written to one kept-alive socket and its answer read whole, no
   HTTP library on the client side (median and best of the timed requests); beside the
   in-process encode of the same rows (`embquant.codecs.encode`) and the TCP floor of the
   same bytes (`bench/loopback.py`: the body to another process, the answer's size back).
   What is left after the encode and the floor is the server's own path: HTTP parsing,
   the body's copies, the msgpack walk, the answer.
2. `Client.quantize` of 100,000 rows with each ``chunk_rows`` and ``concurrency``:
   best and median rows/s of the timed calls, after one warm-up call each.

Client and server share this machine's cores: compare within one run. Measurement
only: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import embquant_client as ec  # noqa: E402
from bench.cli import start_server  # noqa: E402
from bench.loopback import tcp_floor  # noqa: E402
from bench.machine import cpu_model, nproc  # noqa: E402

DIM = 384
SIZES = (1024, 4096, 8192, 16384)
CHUNKS = (2048, 4096, 8192, 16384)
CONCURRENCY = (2, 4, 8)


def rows(n: int) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class RawClient:
    """POST prebuilt requests over one kept-alive socket; answers read whole."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(64 << 20)

    def post(self, path: str, body: bytes) -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/msgpack\r\n"
                f"Accept: application/msgpack\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.sock.sendall(head)
        self.sock.sendall(body)
        view, got = memoryview(self.buf), 0
        while True:
            k = self.sock.recv_into(view[got:], 1 << 20)
            if not k:
                raise ConnectionError("the server closed the connection")
            got += k
            end_head = self.buf.find(b"\r\n\r\n", 0, got)
            if end_head >= 0:
                break
        head = bytes(self.buf[:end_head]).lower()
        if not head.startswith(b"http/1.1 200"):
            raise RuntimeError(f"answer: {head[:80]!r}")
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        end = end_head + 4 + length
        while got < end:
            got += self.sock.recv_into(view[got:], 1 << 20)
        return bytes(self.buf[end_head + 4:end])


def one_at_a_time(url: str, n: int, repeat: int) -> dict:
    from embquant import codecs

    x = rows(n)
    body = msgpack.packb({"scheme": "lloyd", "params": {"bits": 4},
                          "vectors": {"dtype": "float32", "shape": [n, DIM], "data": x.tobytes()}}, use_bin_type=True)
    client = RawClient(url)
    answer = client.post("/quantize", body)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        client.post("/quantize", body)
        times.append(time.perf_counter() - t0)
    client.sock.close()
    codec = codecs.fit("lloyd", {"bits": 4}, torch.from_numpy(x[:16]))
    t = torch.from_numpy(x)
    codecs.encode(codec, t)
    enc = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        codecs.encode(codec, t)
        enc.append(time.perf_counter() - t0)
    floor, _ = tcp_floor(body, len(answer), repeat=repeat)
    return {"rows": n, "mb": len(body) / 1e6, "median_ms": statistics.median(times) * 1e3, "best_ms": min(times) * 1e3,
            "encode_ms": statistics.median(enc) * 1e3, "floor_ms": floor * 1e3}


def sweep(url: str, repeat: int) -> list[dict]:
    x = rows(100_000)
    out = []
    with ec.Client(url, timeout=300) as c:
        codec = c.fit(x[:2000], "lloyd", bits=4)
        for chunk in CHUNKS:
            for conc in CONCURRENCY:
                c.quantize(x, codec=codec, chunk_rows=chunk, concurrency=conc)
                ts = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    c.quantize(x, codec=codec, chunk_rows=chunk, concurrency=conc)
                    ts.append(time.perf_counter() - t0)
                out.append({"chunk_rows": chunk, "concurrency": conc, "best": len(x) / min(ts),
                            "median": len(x) / statistics.median(ts)})
                print(f"  chunk_rows {chunk:>6} concurrency {conc}: best {out[-1]['best']:,.0f} rows/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="timed requests per size (the sweep: a quarter)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "body-path.md"))
    a = ap.parse_args()
    t_start = time.perf_counter()
    server, url = start_server()
    try:
        single = []
        for n in SIZES:
            single.append(one_at_a_time(url, n, a.repeat))
            s = single[-1]
            print(f"  {n:>6} rows: {s['median_ms']:.1f} ms a request, encode {s['encode_ms']:.1f} ms, "
                  f"floor {s['floor_ms']:.1f} ms", flush=True)
        swept = sweep(url, max(2, a.repeat // 4))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    lines = [
        "# The body path: one request at a time, and the client's chunking",
        "",
        f"Written by `python bench/body_path.py` ({time.perf_counter() - t_start:.0f} s, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}) on {cpu_model()}, {nproc()} cores (shared by client "
        "and server). See the script's docstring for what is measured.",
        "",
        "## One request at a time (raw socket client, msgpack, `lloyd` 4-bit by name)",
        "",
        "| rows | body MB | a request, median ms | best ms | in-process encode ms | TCP floor ms | left to the server's path, ms (median - encode - floor) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in single:
        rest = s["median_ms"] - s["encode_ms"] - s["floor_ms"]
        lines.append(f"| {s['rows']:,} | {s['mb']:.1f} | {s['median_ms']:.1f} | {s['best_ms']:.1f} | "
                     f"{s['encode_ms']:.1f} | {s['floor_ms']:.1f} | {rest:.1f} |")
    lines += ["", "## `Client.quantize`, 100,000 x 384, by chunk size and concurrency", "",
              "| chunk_rows | concurrency | best rows/s | median rows/s |", "|---|---|---|---|"]
    for r in swept:
        lines.append(f"| {r['chunk_rows']:,} | {r['concurrency']} | {r['best']:,.0f} | {r['median']:,.0f} |")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
