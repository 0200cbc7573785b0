"""The service's Prometheus metrics, kept and rendered by `prometheus_client`.

Each `Metrics` has its own `CollectorRegistry` (never the process-global one), so
several apps in one process (tests) do not clash. The hot path (every request, every
batch) goes through the methods below, which keep each label set's child in a dict:
one dict lookup and the child's own locked add, never a registry lookup. The queue
gauges are read from the worker when scraped (`watch`), not set per job.

Names (all prefixed ``embquant_``): ``requests_total{route,status}``,
``request_seconds{route}``, ``errors_total{type}``, ``rejected_total{reason}``,
``rows_total{op}``, ``batch_seconds{op}``, ``batch_rows{op}``, ``fit_seconds{scheme}``,
``queue_depth``, ``queue_expected_wait_seconds``, ``fits_pending``.

Several server processes (EMBQUANT_WORKERS > 1): `embquant serve` gives them one
``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's multiprocess mode. Each process then
keeps its values in files there, and a scrape of any process renders them all
together (`MultiProcessCollector`): counters and histograms summed over the processes
(those of a process that died included, so counters never go back), the gauges summed
over the live ones. A gauge cannot be read from the worker when scraped then (the
scrape may reach another process), so each process writes its own every
`GAUGE_INTERVAL_S` (`tick`).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

#: Seconds between a process's writes of its gauges in multiprocess mode.
GAUGE_INTERVAL_S = 1.0


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess directory, when this process runs in that mode
    (the variable is read when prometheus_client is first imported)."""
    from prometheus_client import values

    d = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return d if d and values.ValueClass is not values.MutexValue else None


#: Request latency: 1 ms to the longest deadline a request may ask for (300 s).
REQUEST_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Device time per batch: a single vector (about 50 us) to a long one.
BATCH_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Rows per batch, powers of 4 up to 2^30 (a /score batch counts (query, code) pairs).
BATCH_ROWS = tuple(float(4**i) for i in range(16))
#: Fit time: up to EMBQUANT_MAX_FIT_SECONDS' range (and a fit's deadline).
FIT_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self._requests = Counter("embquant_requests_total", "HTTP requests by route and status",
                                 ["route", "status"], registry=r)
        self._request_seconds = Histogram("embquant_request_seconds", "HTTP request latency in seconds, from its first byte read to its answer",
                                          ["route"], buckets=REQUEST_SECONDS, registry=r)
        self._errors = Counter("embquant_errors_total", "error responses by error type (every layer)",
                               ["type"], registry=r)
        self._rejected = Counter("embquant_rejected_total", "jobs refused or dropped, by reason",
                                 ["reason"], registry=r)
        self._rows = Counter("embquant_rows_total", "vectors or code rows processed, by op", ["op"], registry=r)
        self._batch_seconds = Histogram("embquant_batch_seconds", "device time per batch, in seconds", ["op"],
                                        buckets=BATCH_SECONDS, registry=r)
        self._batch_rows = Histogram("embquant_batch_rows", "rows per device batch (score: query-code pairs)",
                                     ["op"], buckets=BATCH_ROWS, registry=r)
        self._fit_seconds = Histogram("embquant_fit_seconds", "fit time including its wait for a fit thread, "
                                      "in seconds", ["scheme"], buckets=FIT_SECONDS, registry=r)
        #: prometheus_client's multiprocess directory (several server processes), else None
        self.multiprocess = multiprocess_dir()
        mode = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        self._queue_depth = Gauge("embquant_queue_depth", "encode, decode and score jobs waiting for the device",
                                  registry=r, **mode)
        self._expected_wait = Gauge("embquant_queue_expected_wait_seconds",
                                    "device seconds the queued jobs are expected to take", registry=r, **mode)
        self._fits_pending = Gauge("embquant_fits_pending", "fits running or waiting for a fit thread", registry=r,
                                   **mode)
        self._children: dict[Any, Any] = {}
        self._worker = None
        self._mp_registry: CollectorRegistry | None = None

    # -- the hot path: a cached child per label set ---------------------------
    def request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (self._requests.labels(route, str(status)),
                                          self._request_seconds.labels(route))
        pair[0].inc()
        pair[1].observe(seconds)

    def _child(self, family, label: str):
        key = (family, label)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = family.labels(label)
        return c

    def error(self, type_: str) -> None:
        self._child(self._errors, type_).inc()

    def rejected(self, reason: str) -> None:
        self._child(self._rejected, reason).inc()

    def rows(self, op: str, n: int) -> None:
        self._child(self._rows, op).inc(n)

    def batch(self, op: str, seconds: float, rows: int) -> None:
        self._child(self._batch_seconds, op).observe(seconds)
        self._child(self._batch_rows, op).observe(rows)

    def fit(self, scheme: str, seconds: float) -> None:
        self._child(self._fit_seconds, scheme).observe(seconds)

    # -- read when scraped ---------------------------------------------------------
    def watch(self, worker) -> None:
        """The queue gauges read ``worker`` at each scrape (multiprocess mode: written by
        `tick`, which the worker calls every GAUGE_INTERVAL_S)."""
        self._worker = worker
        if self.multiprocess:
            return
        self._queue_depth.set_function(lambda: worker.queue_depth)
        self._expected_wait.set_function(lambda: worker.expected_wait_s)
        self._fits_pending.set_function(lambda: worker.fits_pending)

    def tick(self) -> None:
        """Write the watched worker's gauges (multiprocess mode: every GAUGE_INTERVAL_S)."""
        w = self._worker
        if w is not None:
            self._queue_depth.set(w.queue_depth)
            self._expected_wait.set(w.expected_wait_s)
            self._fits_pending.set(w.fits_pending)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text 0.0.4, or OpenMetrics when ``accept`` asks
        for it) and its content type. ``*_created`` samples are left out: they double
        the series and nothing here reads them."""
        encoder, content_type = choose_encoder(accept or "")
        registry = self.registry
        if self.multiprocess:
            self.tick()  # this process's gauges as of now
            registry = self._all_processes()
        return encoder(_WithoutCreated(registry)), content_type

    def _all_processes(self) -> CollectorRegistry:
        """A registry whose collector reads every process's files at each scrape (made
        once: it holds no values of its own)."""
        if self._mp_registry is None:
            from prometheus_client import multiprocess

            registry = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess)
            self._mp_registry = registry
        return self._mp_registry


class _WithoutCreated:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family

