"""The socket floor of an end-to-end request: the same bytes over TCP on 127.0.0.1 with
nothing else done to them, between two processes, as a request and its answer.

    .venv/bin/python bench/loopback.py                 # 100,000 x 384 float32 out, 4-bit codes back
    .venv/bin/python bench/loopback.py --out-mb 15.4 --in-mb 1.9 --repeat 5

A receiver process (a short ``python -c`` script, stdlib only) reads each request's
payload into a buffer of its size, as a server reads a body into memory, then sends back
an answer of the asked size, which the sender reads into its own buffer: no HTTP, no
parsing, no encoding. What `embquant serve` plus the client do on top of that (headers,
msgpack, copies, the encode itself, chunking) can only add time, so rows/s end to end
divided by rows/s of this floor says how much of the socket's own speed the service
keeps. bench/service.py measures it in the same run as its end-to-end rows.

Measurement only: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import math
import socket
import struct
import subprocess
import sys
import time

import numpy as np

# The receiver: one connection; per request a 16-byte header (payload bytes, answer
# bytes), the payload read by recv_into into one buffer kept between requests (no
# allocation timed: a floor), then the answer sent.
_RECEIVER = r"""
import socket, struct, sys
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
c, _ = srv.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

buf = bytearray(16)

def read(n):
    global buf
    if len(buf) < n:
        buf = bytearray(n)
    mv, got = memoryview(buf), 0
    while got < n:
        k = c.recv_into(mv[got:n], min(1 << 20, n - got))
        if not k:
            raise SystemExit(0)
        got += k
    return mv[:n]

answer = b""
while True:
    n_out, n_in = struct.unpack("<QQ", read(16))
    if n_out == 0 and n_in == 0:
        break
    read(n_out)
    if len(answer) != n_in:
        answer = bytes(n_in)
    c.sendall(answer)
c.close()
"""


def _read_into(sock: socket.socket, buf: memoryview) -> None:
    got, n = 0, len(buf)
    while got < n:
        k = sock.recv_into(buf[got:], min(1 << 20, n - got))
        if not k:
            raise ConnectionError("the loopback receiver closed the connection")
        got += k


def tcp_floor(payload: bytes | memoryview | np.ndarray, answer_bytes: int, repeat: int = 3,
              budget_s: float = 30.0) -> tuple[float, int]:
    """Best seconds (and runs timed) to send ``payload`` to another process over TCP on
    127.0.0.1 and read an ``answer_bytes`` answer back; up to ``repeat`` runs, fewer
    where the next would pass ``budget_s``."""
    view = memoryview(np.ascontiguousarray(payload) if isinstance(payload, np.ndarray) else payload).cast("B")
    proc = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = memoryview(bytearray(answer_bytes))
            best, runs, t_all, last = math.inf, 0, time.perf_counter(), 0.0
            while runs < repeat and (runs == 0 or time.perf_counter() - t_all + last <= budget_s):
                t0 = time.perf_counter()
                s.sendall(struct.pack("<QQ", len(view), answer_bytes))
                s.sendall(view)
                _read_into(s, back)
                last = time.perf_counter() - t0
                best, runs = min(best, last), runs + 1
            s.sendall(struct.pack("<QQ", 0, 0))
        proc.wait(10)
        return best, runs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-mb", type=float, default=100_000 * 384 * 4 / 1e6, help="request payload, MB")
    ap.add_argument("--in-mb", type=float, default=100_000 * (384 * 4 // 8 + 4) / 1e6, help="answer, MB")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    n_out, n_in = int(a.out_mb * 1e6), int(a.in_mb * 1e6)
    payload = np.random.default_rng(0).integers(0, 256, n_out, dtype=np.uint8)
    t, runs = tcp_floor(payload, n_in, a.repeat, budget_s=120)
    print(f"{n_out / 1e6:,.1f} MB out, {n_in / 1e6:,.1f} MB back over TCP on 127.0.0.1: best {t * 1e3:,.1f} ms "
          f"of {runs} runs, {(n_out + n_in) / t / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
