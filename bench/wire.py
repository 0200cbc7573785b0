"""What each wire form costs the server, in-process: parsing a /quantize body of
N x D float32 vectors into the numpy array the codec reads, and writing the answer's
codes (lloyd 4-bit: N x D/16 int64 words plus one float32 per row).

    .venv/bin/python bench/wire.py [--rows 10000] [--dim 384]

Prints a markdown table (best of several repeats, side by side in one run).
"""

from __future__ import annotations

import argparse
import base64
import io
import platform
import time

import msgpack
import numpy as np
import orjson

from embquant.api import bodies
from embquant.api.wire_arrays import from_wire, to_wire


def best(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.rows, a.dim)).astype(np.float32)
    codes = rng.integers(-2**63, 2**63 - 1, size=(a.rows, a.dim // 16), dtype=np.int64)
    side = rng.random((a.rows, 1), dtype=np.float32)
    arr_b64 = {"dtype": "float32", "shape": list(x.shape), "data": base64.b64encode(x.tobytes()).decode()}
    bodies_in = {
        "msgpack (bin)": (msgpack.packb({"vectors": {"dtype": "float32", "shape": list(x.shape), "data": x.tobytes()},
                                         "codec_id": "0" * 64}, use_bin_type=True), bodies.MSGPACK),
        "JSON, base64": (orjson.dumps({"vectors": arr_b64, "codec_id": "0" * 64}), bodies.JSON),
        "JSON, lists": (orjson.dumps({"vectors": x, "codec_id": "0" * 64}, option=orjson.OPT_SERIALIZE_NUMPY),
                        bodies.JSON),
    }
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    npy = buf.getvalue()
    rows = []
    for name, (body, ctype) in bodies_in.items():
        def parse():
            from_wire(bodies.loads(body, ctype)["vectors"], "vectors", "float")

        form = {"msgpack (bin)": "binary", "JSON, base64": "base64", "JSON, lists": "json"}[name]
        answer = "msgpack" if form == "binary" else "json"

        def write():
            bodies.respond({"codes": to_wire(codes, form), "side": to_wire(side, form)}, answer).body

        rows.append((name, len(body), best(parse, a.repeats), best(write, a.repeats)))
    rows.append((".npy (one array, no other fields)", len(npy),
                 best(lambda: np.load(io.BytesIO(npy), allow_pickle=False).copy(), a.repeats), float("nan")))
    mb = x.nbytes / 1e6
    print(f"{a.rows} x {a.dim} float32 ({mb:.1f} MB) on {platform.machine()}, {platform.python_version()}; "
          f"best of {a.repeats}\n")
    print("| form | body bytes | parse ms | parse GB/s | write answer ms |")
    print("|---|---:|---:|---:|---:|")
    for name, n, tp, tw in rows:
        print(f"| {name} | {n:,} | {tp * 1e3:.2f} | {mb / 1e3 / tp:.2f} | {tw * 1e3:.2f} |")


if __name__ == "__main__":
    main()
