"""A minimal Prometheus text-format registry: counters, gauges and histograms with
labels. Updated from the event loop only (no locks needed)."""

from __future__ import annotations

import bisect
from collections import defaultdict

_BUCKETS = {
    "seconds": (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    "rows": (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576),
}

_HELP = {
    "embquant_requests_total": "HTTP requests by route and status",
    "embquant_request_seconds": "HTTP request latency",
    "embquant_rows_total": "vectors or code rows processed, by op",
    "embquant_batch_seconds": "device time per batch",
    "embquant_batch_rows": "rows per device batch",
    "embquant_queue_depth": "jobs waiting for the device",
    "embquant_rejected_total": "jobs refused or dropped, by reason",
    "embquant_errors_total": "error responses by error type",
}


def _key(labels: dict[str, str]) -> tuple:
    return tuple(sorted(labels.items()))


def _fmt(labels: tuple, extra: tuple = ()) -> str:
    items = list(labels) + list(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}"


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self.gauges: dict[str, dict[tuple, float]] = defaultdict(dict)
        self.hists: dict[str, dict[tuple, list]] = defaultdict(dict)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.counters[name][_key(labels)] += value

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        self.gauges[name][_key(labels)] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        buckets = _BUCKETS["seconds" if name.endswith("seconds") else "rows"]
        h = self.hists[name].get(_key(labels))
        if h is None:
            h = self.hists[name][_key(labels)] = [[0] * len(buckets), 0.0, 0, buckets]
        i = bisect.bisect_left(buckets, value)
        if i < len(buckets):
            h[0][i] += 1
        h[1] += value
        h[2] += 1

    def render(self) -> str:
        out: list[str] = []
        for kind, store in (("counter", self.counters), ("gauge", self.gauges)):
            for name, series in sorted(store.items()):
                out.append(f"# HELP {name} {_HELP.get(name, name)}")
                out.append(f"# TYPE {name} {kind}")
                for labels, v in sorted(series.items()):
                    out.append(f"{name}{_fmt(labels)} {v:g}")
        for name, series in sorted(self.hists.items()):
            out.append(f"# HELP {name} {_HELP.get(name, name)}")
            out.append(f"# TYPE {name} histogram")
            for labels, (counts, total, n, buckets) in sorted(series.items(), key=lambda kv: kv[0]):
                cum = 0
                for b, c in zip(buckets, counts):
                    cum += c
                    out.append(f"{name}_bucket{_fmt(labels, (('le', f'{b:g}'),))} {cum}")
                out.append(f"{name}_bucket{_fmt(labels, (('le', '+Inf'),))} {n}")
                out.append(f"{name}_sum{_fmt(labels)} {total:g}")
                out.append(f"{name}_count{_fmt(labels)} {n}")
        return "\n".join(out) + "\n"
