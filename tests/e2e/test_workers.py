"""EMBQUANT_WORKERS=2: two server processes on one socket. Both answer; a codec id
learned by one resolves in the other (the shared codec directory); answers equal the
codecs in-process; /metrics of either counts the requests of both; SIGTERM stops both
and the parent exits 0."""

from __future__ import annotations

import os
import time

import httpx
import numpy as np
import pytest
import torch

from embquant import codecs


@pytest.mark.slow
def test_two_processes_share_the_port_and_the_codec_ids(server_factory):
    s = server_factory(workers=2)
    pids: set[int] = set()
    deadline = time.monotonic() + 120  # the second process may still be warming up
    while len(pids) < 2 and time.monotonic() < deadline:
        with httpx.Client() as c:  # a new connection each time: the kernel picks the process
            r = c.get(s.url + "/readyz", timeout=5)
        if r.status_code == 200:
            pids.add(r.json()["pid"])
        else:
            time.sleep(0.2)
    assert len(pids) == 2, f"only {pids} answered"
    assert s.proc.pid not in pids  # the parent only supervises

    x = np.random.default_rng(3).standard_normal((64, 24)).astype(np.float32)
    fit = httpx.post(s.url + "/fit", json={"scheme": "lloyd", "params": {"mode": "fit_global", "bits": 3},
                                           "vectors": x.tolist()}, timeout=60).json()
    codec = codecs.codec_from_json(fit["codec"])
    ref_codes, ref_side = codecs.encode(codec, torch.from_numpy(x))
    seen = set()
    for i in range(24):  # new connections: both processes get some, none has seen the fit
        with httpx.Client() as c:
            r = c.post(s.url + "/quantize", json={"codec_id": fit["codec_id"], "vectors": x[i:i + 1].tolist()},
                       timeout=30)
            seen.add(c.get(s.url + "/readyz", timeout=5).json()["pid"])
        assert r.status_code == 200, r.text
        assert r.json()["codes"] == ref_codes[i:i + 1].tolist()
    assert len(seen) == 2

    # /metrics of either process counts both (prometheus_client's multiprocess mode)
    from prometheus_client.parser import text_string_to_metric_families

    scraped = set()
    for _ in range(12):
        with httpx.Client() as c:
            text = c.get(s.url + "/metrics", timeout=10).text
            scraped.add(c.get(s.url + "/readyz", timeout=5).json()["pid"])
        values = {(m.name, tuple(sorted(m.labels.items()))): m.value
                  for f in text_string_to_metric_families(text) for m in f.samples}
        assert values[("embquant_requests_total", (("route", "/quantize"), ("status", "200")))] == 24
        assert values[("embquant_requests_total", (("route", "/fit"), ("status", "200")))] == 1
        assert values[("embquant_rows_total", (("op", "quantize"),))] == 24
        assert values[("embquant_queue_depth", ())] == 0  # the live processes' gauges, summed
    assert len(scraped) == 2

    assert s.stop() == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_listeners_spread_connections_over_the_processes():
    """On Linux each server process gets its own SO_REUSEPORT socket on the one port, so
    the kernel spreads connections over them (with one shared socket, whichever process
    accepted first took every connection of a load run)."""
    import select
    import socket
    import sys

    from embquant.cli import _listeners

    socks = _listeners("127.0.0.1", 0, 2)
    if not sys.platform.startswith("linux"):
        assert socks is None
        return
    try:
        assert socks is not None and len(socks) == 2
        port = socks[0].getsockname()[1]
        assert port != 0 and socks[1].getsockname()[1] == port
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
        got = [0, 0]
        deadline = time.monotonic() + 10
        while sum(got) < 64 and time.monotonic() < deadline:
            ready, _, _ = select.select(socks, [], [], 1)
            for s in ready:
                conn, _ = s.accept()
                conn.close()
                got[socks.index(s)] += 1
        for c in clients:
            c.close()
        assert sum(got) == 64 and min(got) > 0, got
    finally:
        for s in socks or ():
            s.close()
