"""What one request, one upload burst or a crowd of idle connections costs a real
`embquant serve` (issue 13), measured on 127.0.0.1 and written to docs/reliability.md.

Peak RSS is the server process's VmHWM, reset before each case through
/proc/PID/clear_refs (Linux). Every loop is finite and the server is stopped at
the end, whatever happens.

    python bench/reliability.py [--body-mib 16] [--out docs/reliability.md]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def b64(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


async def upload(port: int, headers: bytes, body: bytes) -> bytes:
    """Send headers and as much body as the server takes; return the status line."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(headers)
        try:
            for i in range(0, len(body), 1 << 20):
                w.write(body[i:i + (1 << 20)])
                await asyncio.wait_for(w.drain(), 10)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        line = await asyncio.wait_for(r.readline(), 30)
        return line.split(b" ", 2)[1] if line else b"closed"
    except (ConnectionError, asyncio.TimeoutError):
        return b"reset"
    finally:
        w.close()


def burst(port: int, n: int, headers: bytes, body: bytes) -> dict:
    async def main():
        return await asyncio.gather(*(upload(port, headers, body) for _ in range(n)))

    out: dict = {}
    for s in asyncio.run(main()):
        out[s.decode()] = out.get(s.decode(), 0) + 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--body-mib", type=int, default=16, help="EMBQUANT_MAX_BODY_BYTES (and output limit), MiB")
    ap.add_argument("--idle", type=int, default=1000, help="idle connections held open in the last case")
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    args = ap.parse_args()
    limit = args.body_mib << 20
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EMBQUANT_HOST": "127.0.0.1", "EMBQUANT_PORT": str(port), "EMBQUANT_DEVICE": "cpu",
           "EMBQUANT_KERNEL_WARM_UP": "blocking",
           "EMBQUANT_MAX_BODY_BYTES": str(limit), "EMBQUANT_MAX_OUTPUT_BYTES": str(limit),
           "EMBQUANT_HEADER_TIMEOUT_S": "5", "EMBQUANT_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "embquant.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: list[tuple[str, str, float, float]] = []
    try:
        http = httpx.Client(base_url=url, timeout=300)
        for _ in range(600):
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        pid = proc.pid
        rng = np.random.default_rng(0)
        dim = 384
        fit = http.post("/fit", json={"vectors": b64(rng.standard_normal((256, dim)).astype(np.float32)),
                                      "scheme": "lloyd", "params": {"bits": 4}}).json()
        codec = fit["codec"]
        http.post("/quantize", json={"vectors": b64(rng.standard_normal((64, dim)).astype(np.float32)), "codec": codec})
        idle = rss_mib(pid, "VmRSS")

        def case(name: str, fn) -> None:
            reset_peak(pid)
            before = rss_mib(pid, "VmRSS")
            outcome = fn()
            rows.append((name, outcome, rss_mib(pid, "VmHWM") - before, rss_mib(pid, "VmRSS")))
            print(rows[-1], flush=True)

        # the largest /quantize body: base64 float32 rows filling 90% of the limit
        n = int(limit * 0.9 / (dim * 4 * 4 / 3))
        body_q = {"vectors": b64(rng.standard_normal((n, dim)).astype(np.float32)), "codec": codec}
        case(f"/quantize, {n} x {dim} float32 at the body limit",
             lambda: str(http.post("/quantize", json=body_q).status_code))
        del body_q
        # the largest /dequantize answer the output limit allows (4-bit lloyd: 6 words a row)
        n = limit // (dim * 4)
        body_d = {"codes": b64(np.zeros((n, dim // 16), np.int64)), "side": b64(np.ones((n, 1), np.float32)),
                  "codec": codec}
        case(f"/dequantize, {n} rows: an answer at the output limit",
             lambda: str(http.post("/dequantize", json=body_d).status_code))
        del body_d
        # the measured attack: a 33,554,432-dimension codec with a few rows of codes
        wide = {**codec, "dim": 33_554_432}
        body_w = {"codes": b64(np.zeros((4, 64), np.int64)), "side": b64(np.ones((4, 1), np.float32)),
                  "codec": wide}
        case("/dequantize with a 33,554,432-dim codec", lambda: str(http.post("/dequantize", json=body_w).status_code))
        del body_w
        payload = b"x" * (limit + (1 << 20))
        over = (f"POST /quantize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        case(f"48 concurrent over-limit uploads of {len(payload) >> 20} MiB",
             lambda: repr(burst(port, 48, over, payload)))
        small = b"x" * (limit // 2)
        plain = (f"POST /quantize HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                 f"Content-Length: {len(small)}\r\n\r\n").encode()
        case(f"48 concurrent text/plain uploads of {len(small) >> 20} MiB",
             lambda: repr(burst(port, 48, plain, small)))

        def idle_crowd() -> str:
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.idle)]
            try:
                lat = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    assert http.get("/healthz").status_code == 200
                    lat.append(time.perf_counter() - t0)
                time.sleep(7)  # past the 5 s header timeout
                closed = 0
                for s in socks:
                    s.settimeout(0.01)
                    try:
                        closed += s.recv(1) == b""
                    except (socket.timeout, OSError):
                        pass
                return f"healthz median {np.median(lat) * 1000:.1f} ms; {closed}/{len(socks)} closed after 7 s"
            finally:
                for s in socks:
                    s.close()

        case(f"{args.idle} idle connections (header timeout 5 s)", idle_crowd)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    lines = [
        "# Reliability: what a request costs the server",
        "",
        f"Written by `bench/reliability.py` on {time.strftime('%Y-%m-%d')} ({platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}): one `embquant serve` on 127.0.0.1 (CPU), "
        f"`EMBQUANT_MAX_BODY_BYTES` = `EMBQUANT_MAX_OUTPUT_BYTES` = {args.body_mib} MiB. Idle RSS after warm-up: "
        f"{idle:.0f} MiB. Peak is the rise of the process's peak RSS (VmHWM, reset before each case) over its RSS "
        "just before; the issue's bound for one request is 4x the body limit "
        f"({4 * args.body_mib} MiB).",
        "",
        "| case | outcome | peak RSS rise (MiB) | RSS after (MiB) |",
        "|---|---|---|---|",
        *(f"| {n} | {o} | {p:.0f} | {a:.0f} |" for n, o, p, a in rows),
        "",
        "Outcomes of the uploads are the status each raw-socket client read, or `reset` when the "
        "connection was reset before the answer could be read. The server refuses those uploads from their "
        "headers; it then reads each body to its end and drops it (never parses or keeps it; up to 4x the "
        "body limit and 10 s), so the client, still sending, reads the 413 or 415 instead of a reset.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
