"""Peak memory (and speed) of one large encode on the torch reference path (what runs on
a GPU, and on the CPU while the compiled kernels load) for hqq and bitcodes, whose
references are the heaviest, with the CPU's reference chunk
(`embquant.codecs.core.CPU_CHUNK_VALUES`) against the GPU's (`CHUNK_VALUES`).

    .venv/bin/python bench/reference_memory.py [--rows 100000]

Each (scheme, chunk) runs in a fresh process: fit on 500 rows, one warm-up call, then
one encode of --rows x 384 Gaussian float32 rows; peak RSS is the process's high-water
mark (getrusage) minus its RSS just before the call, as a multiple of the input's
float32 bytes. Measurement only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [("hqq", {"bits": 4}), ("bitcodes", {"num_bits": 384, "iterations": 1, "max_fit_rows": 500})]


def one(name: str, params: dict, rows: int, chunk: int) -> dict:
    sys.path.insert(0, str(ROOT / "service"))
    import numpy as np
    import torch

    from embquant import codecs
    from embquant.codecs import kernels

    kernels.set_backend("torch")
    codecs.core.CPU_CHUNK_VALUES = chunk
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((rows, 384)).astype(np.float32))
    c = codecs.fit(name, params, x[:500])
    codecs.encode(c, x[:64])
    before = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
    t = time.perf_counter()
    codecs.encode(c, x)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rows_s": rows / dt, "peak_x": (peak - before) / (x.numel() * 4), "seconds": dt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        name, params, chunk = json.loads(a.one)
        print(json.dumps(one(name, params, a.rows, chunk)))
        return 0
    sys.path.insert(0, str(ROOT / "service"))
    from embquant.codecs.core import CHUNK_VALUES, CPU_CHUNK_VALUES

    print(f"One encode of {a.rows:,} x 384 float32 on the torch reference path (`python bench/reference_memory.py "
          f"--rows {a.rows}`; {os.cpu_count()} cores)\n")
    print("| scheme | params | chunk (values) | rows/s | seconds | peak memory x input |")
    print("|---|---|---|---|---|---|")
    for name, params in CASES:
        for chunk in (CHUNK_VALUES, CPU_CHUNK_VALUES):
            out = subprocess.run([sys.executable, __file__, "--rows", str(a.rows), "--one",
                                  json.dumps([name, params, chunk])], capture_output=True, text=True, check=True)
            d = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {name} | {params} | {chunk:,} | {d['rows_s']:,.0f} | {d['seconds']:.1f} | {d['peak_x']:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
