"""The asyncio side of the worker: a bounded queue of jobs, a collector that
groups them by (op, codec) into batches, and futures that carry results back.

- Jobs arrive validated; `submit` raises Overloaded (429) when the queue is full
  and ShuttingDown (503) once `stop` has begun.
- The collector waits at most ``max_wait_ms`` after the first job of a batch for
  more, up to ``max_batch_rows`` rows, then runs each group in the device thread.
- A result is set only on a future that is not done: a caller that timed out or
  disconnected never breaks the loop.
- `stop` drains: every job accepted before it is finished before it returns.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DeadlineExceeded, Overloaded, ShuttingDown
from ..settings import Settings
from . import device as dev
from .metrics import Metrics

log = logging.getLogger("embquant.worker")
_BATCHABLE = {"encode", "decode"}
_ids = itertools.count()


@dataclass(eq=False)
class Job:
    op: str  # encode | decode | fit | fit_encode
    rows: int
    timeout_s: float  # the whole budget: queueing and compute
    codec: Any = None
    x: np.ndarray | None = None
    codes: np.ndarray | None = None
    side: np.ndarray | None = None
    scheme: str | None = None
    params: Any = None
    quality: bool = False
    future: asyncio.Future | None = field(default=None, repr=False)
    id: int = field(default_factory=lambda: next(_ids))
    deadline: float = 0.0  # time.monotonic() by which the job must be done

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s

    @property
    def group(self) -> tuple:
        if self.op in _BATCHABLE:
            return (self.op, self.codec.key)
        return (self.op, self.id)  # fits run alone


class _Stop:
    pass


class Worker:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.device = dev.pick_device(settings.device)
        dev.select_kernels(settings.kernels)
        self.ready = False
        self._closing = False
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.settings.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embquant-{self.device.type}")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, dev.warm_up, self.device)
        self._task = asyncio.create_task(self._collect(), name="embquant-collector")
        self.ready = True
        log.info("worker ready on %s", self.device)

    async def stop(self) -> None:
        """Stop accepting, finish every accepted job, then release the device thread."""
        if self._closing:
            return
        self._closing = True
        self.ready = False
        if self._task is not None:
            await self._queue.put(_Stop())
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -- submission ----------------------------------------------------------
    async def submit(self, job: Job) -> Any:
        if self._closing or self._queue is None:
            raise ShuttingDown("the service is shutting down; retry on another replica")
        loop = asyncio.get_running_loop()
        job.future = loop.create_future()
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.inc("embquant_rejected_total", reason="queue_full")
            raise Overloaded(
                f"the work queue is full ({self.settings.queue_size} jobs); retry shortly",
                retry_after=self.settings.retry_after_s,
            ) from None
        self.metrics.set_gauge("embquant_queue_depth", self._queue.qsize())
        timeout = job.deadline - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout=max(timeout, 0))
        except (asyncio.TimeoutError, TimeoutError):
            job.future.cancel()
            self.metrics.inc("embquant_rejected_total", reason="deadline")
            raise DeadlineExceeded(
                f"the request did not finish within its deadline of {job.timeout_s:g}s"
            ) from None
        except asyncio.CancelledError:
            # The caller went away (client disconnect): drop the job, keep the loop.
            job.future.cancel()
            raise

    # -- the collector ---------------------------------------------------------
    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if isinstance(first, _Stop):
                break
            jobs, rows = [first], first.rows
            t_end = loop.time() + self.settings.max_wait_ms / 1000
            while rows < self.settings.max_batch_rows:
                try:
                    j = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = t_end - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        j = await asyncio.wait_for(self._queue.get(), remaining)
                    except (asyncio.TimeoutError, TimeoutError):
                        break
                if isinstance(j, _Stop):
                    stopping = True  # finish what we hold, then drain the rest below
                    break
                jobs.append(j)
                rows += j.rows
            self.metrics.set_gauge("embquant_queue_depth", self._queue.qsize())
            await self._dispatch_safely(jobs)
        # Drain: anything accepted before stop() still gets its answer.
        rest = []
        while not self._queue.empty():
            j = self._queue.get_nowait()
            if not isinstance(j, _Stop):
                rest.append(j)
        if rest:
            await self._dispatch_safely(rest)

    async def _dispatch_safely(self, jobs: list[Job]) -> None:
        try:
            await self._dispatch(jobs)
        except Exception as e:  # noqa: BLE001 - the loop must outlive any one batch
            log.exception("dispatch failed")
            for j in jobs:
                if j.future is not None and not j.future.done():
                    j.future.set_exception(e)

    async def _dispatch(self, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        live = []
        for j in jobs:
            if j.future.done():
                continue  # timed out or disconnected while queued
            if now > j.deadline:
                j.future.set_exception(DeadlineExceeded("the request's deadline passed while it waited in the queue"))
                continue
            live.append(j)
        groups: dict[tuple, list[Job]] = {}
        for j in live:
            groups.setdefault(j.group, []).append(j)
        for (op, _), members in groups.items():
            for chunk in _chunks(members, self.settings.max_batch_rows):
                t0 = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, dev.run_group, op, chunk, self.device)
                except Exception as e:  # noqa: BLE001 - the executor itself failed
                    log.exception("device thread failed")
                    results = [e] * len(chunk)
                self.metrics.observe("embquant_batch_seconds", time.perf_counter() - t0, op=op)
                self.metrics.observe("embquant_batch_rows", sum(j.rows for j in chunk), op=op)
                if len(results) != len(chunk):  # never trust a length blindly
                    results = [RuntimeError("batch returned a wrong number of results")] * len(chunk)
                for j, r in zip(chunk, results):
                    if j.future.done():
                        continue
                    if isinstance(r, BaseException):
                        j.future.set_exception(r)
                    else:
                        j.future.set_result(r)


def _chunks(jobs: list[Job], max_rows: int):
    chunk, rows = [], 0
    for j in jobs:
        if chunk and rows + j.rows > max_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(j)
        rows += j.rows
    if chunk:
        yield chunk

