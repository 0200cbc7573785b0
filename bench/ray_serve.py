"""Requests through embquant.ray_serve with 1 and 2 replicas on a local Ray cluster.

    .venv/bin/python bench/ray_serve.py [--seconds 20] [--threads 16] [--rounds 2]

Each round runs every replica count in turn (1, 2, 1, 2 with --rounds 2, so a drift in
the machine's load shows): `--threads` client threads each send /quantize requests of
2,000 x 384 float32 rows with one absmax 4-bit codec, for `--seconds`; printed: rows/s and
requests/s. Needs the `ray` extra. CPU replicas (one CPU each to Ray)."""

from __future__ import annotations

import argparse
import socket
import threading
import time

import httpx
import numpy as np
import ray
import torch
from ray import serve

from embquant import codecs
from embquant.ray_serve import build_app
from embquant_client import Client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, n: int) -> None:
    while True:
        dep = serve.status().applications["embquant"].deployments["embquant"]
        if dep.replica_states.get("RUNNING", 0) == n and len(dep.replica_states) == 1:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    x = np.random.default_rng(0).standard_normal((2000, 384)).astype(np.float32)
    codec = codecs.fit("absmax", {"bits": 4}, torch.from_numpy(x)).to_json()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"EMBQUANT_DEVICE": "cpu"}})
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        print("| replicas | rows/s | requests/s |\n|---|---|---|")
        for n in [1, 2] * a.rounds:
            serve.run(build_app({"replicas": str(n), "device": "cpu"}), name="embquant", route_prefix="/", blocking=False)
            _wait(url, n)
            rows = [0]
            lock = threading.Lock()
            stop = time.monotonic() + a.seconds

            def load():
                with Client(url) as c:
                    c.quantize(x[:10], codec=codec)
                    while time.monotonic() < stop:
                        c.quantize(x, codec=codec)
                        with lock:
                            rows[0] += len(x)

            threads = [threading.Thread(target=load) for _ in range(a.threads)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            el = time.monotonic() - t0
            print(f"| {n} | {rows[0] / el:,.0f} | {rows[0] / len(x) / el:.1f} |", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
