"""Soak: 100,000 mixed requests at 192 concurrency against one local server, with the
server's RSS sampled throughout (issue 13: 0 mismatches, 0 5xx, 0 transport errors seen
by the client, RSS flat within 10% after warm-up).

    .venv/bin/python bench/soak.py            # writes docs/soak.md
    .venv/bin/python bench/soak.py --requests 5000 --out /tmp/soak.md

The requests are bench/service.py's mix (quantize 1, 16 and 256 rows, dequantize 16 rows;
lloyd 4-bit codec fitted on the server), sent by the AsyncClient over msgpack; every
answer is compared with the codecs run in this process. RSS is VmRSS of the server
process every 0.5 s. Warm-up: the first 10% of the requests (by time); "flat" compares
the largest RSS after warm-up with the RSS at its end. Measurement only: nothing here
asserts, the table says what was met.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import tempfile
import threading
import time
from pathlib import Path

from machine import cpu_model, nproc  # bench/machine.py
from service import ROOT, Server, fit_on, git_state, make_data, mixed  # bench/service.py


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.done.is_set():
            try:
                self.samples.append((time.monotonic() - t0, rss_mib(self.pid)))
            except OSError:
                return
            self.done.wait(self.every)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=192)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "soak.md")
    a = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    server = Server("soak", scratch).start()
    try:
        ready_s = server.wait_ready()
        pool = make_data(20_000)
        fit = fit_on(server, pool[:2_000])
        idle = rss_mib(server.proc.pid)
        sampler = Sampler(server.proc.pid)
        sampler.start()
        t0 = time.monotonic()
        res = asyncio.run(mixed(server, fit, pool, a.requests, a.concurrency, None))
        took = time.monotonic() - t0
        sampler.done.set()
        sampler.join()
        gone = server.exited()
    finally:
        server.stop()

    s = sampler.samples
    warm_t = 0.1 * took
    after = [r for t, r in s if t >= warm_t]
    at_warm = after[0] if after else float("nan")
    peak_after = max(after) if after else float("nan")
    end = s[-1][1] if s else float("nan")
    growth = (peak_after - at_warm) / at_warm
    five_xx = sum(n for name, n in res.errors.items() if name[:1] == "5")
    mismatches = res.code_mismatches + res.side_mismatches + res.decode_mismatches
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    lines = [
        "# Soak: mixed requests against one server",
        "",
        f"Command: `.venv/bin/python bench/soak.py{'' if a.requests == 100_000 else f' --requests {a.requests}'}`"
        " (written by bench/soak.py).",
        "",
        f"- Machine: `nproc` {nproc()}, {cpu_model()}; shared, so other work may have run meanwhile.",
        f"- Code: {git_state()}; date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"- Server: `embquant serve` with default settings (ready in {ready_s:.1f} s); client: AsyncClient,"
        " msgpack, one pool of connections.",
        "- Mix: quantize 1 row (40%), 16 rows (30%), 256 rows (10%), dequantize 16 rows (20%); lloyd 4-bit"
        " fitted on the server; each answer compared with the codecs run in the benchmark's process.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| {res.requests:,} requests at {res.concurrency} concurrency, 0 mismatches | {res.ok:,} answered, "
        f"{mismatches} mismatches ({res.code_mismatches} codes, {res.side_mismatches} side, "
        f"{res.decode_mismatches} decoded) | {ok(mismatches == 0 and res.ok == res.requests)} |",
        f"| 0 5xx | {five_xx} | {ok(five_xx == 0)} |",
        f"| 0 transport errors seen by the client | {res.transport_errors} | {ok(res.transport_errors == 0)} |",
        f"| RSS flat within 10% after warm-up | {at_warm:.0f} MiB after warm-up, peak {peak_after:.0f} MiB after it "
        f"({100 * growth:+.1f}%), {end:.0f} MiB at the end (idle before the load: {idle:.0f} MiB) | {ok(growth <= 0.10)} |",
        "",
        f"Took {took:.0f} s ({res.requests / took:,.0f} requests/s); by kind: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(res.by_kind.items()))
        + (f"; errors: {dict(res.errors)}" if res.errors else "; no errors")
        + (f". The server {gone}." if gone else "."),
        "",
        "RSS of the server (MiB) every 5 s: "
        + ", ".join(f"{r:.0f}" for t, r in s[::10]),
        "",
    ]
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
