"""The asyncio side of the worker: typed jobs, a bounded queue of encodes and
decodes that a collector groups by (kind, codec) into batches for the device
thread, a separate lane for fits, and futures that carry results back.

- Jobs arrive validated; `submit` raises Overloaded (429) when the queue is full or
  when the work already queued would keep this job past its deadline (the expected
  wait: the queued rows times the measured seconds per row of their kind and
  scheme), and ShuttingDown (503) once shutdown has begun.
- The collector takes every job queued, up to ``max_batch_rows`` rows, and runs
  each group in the device thread; when the device was idle and the queue empty, it
  first waits at most ``max_wait_ms`` after the first job for more. While the device
  thread runs batch k, the event loop parses the requests of batch k+1 and writes
  the answers of batch k-1 (host and device work overlap).
- Fits (`FitJob`, also fit-and-encode of schemes that learn) never enter that queue:
  they run in their own threads (``fit_workers``, ``fit_queue_size`` waiting), and
  stop cooperatively (`codecs.cancel_scope`) when their deadline passes, their
  caller goes away, or the service shuts down.
- A result is set only on a future that is not done: a caller that timed out or
  disconnected never breaks the loop.
- `stop` drains: every job accepted before it is finished before it returns.
  `begin_shutdown` (SIGTERM) stops fits at once and answers any job still waiting
  one second before the grace period ends with 503.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np

from .. import codecs
from ..codecs import kernels
from ..errors import DeadlineExceeded, Overloaded, ShuttingDown
from ..settings import Settings
from . import device as dev
from .metrics import GAUGE_INTERVAL_S, Metrics

log = logging.getLogger("embquant.worker")
_ids = itertools.count()
#: Weight of the newest batch in the seconds-per-row estimates.
_EWMA = 0.2


@dataclass(eq=False, kw_only=True)
class Job:
    """One request's work; the subclasses say which."""

    kind: ClassVar[str]
    rows: int
    timeout_s: float  # the whole budget: queueing and compute
    future: asyncio.Future | None = field(default=None, repr=False)
    id: int = field(default_factory=lambda: next(_ids))
    deadline: float = 0.0  # time.monotonic() by which the job must be done
    cost: float = 0.0  # expected device seconds, counted in the queue's expected wait

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s

    @property
    def group(self) -> tuple:
        return (self.kind, self.codec.key)

    @property
    def scheme_name(self) -> str:
        return self.codec.scheme.name


@dataclass(eq=False, kw_only=True)
class EncodeJob(Job):
    kind: ClassVar[str] = "encode"
    codec: codecs.Codec
    x: np.ndarray
    quality: bool = False


@dataclass(eq=False, kw_only=True)
class DecodeJob(Job):
    kind: ClassVar[str] = "decode"
    codec: codecs.Codec
    codes: np.ndarray
    side: np.ndarray | None = None


@dataclass(eq=False, kw_only=True)
class ScoreJob(Job):
    """Queries against codes: top k per query (or every score with ``k`` None). Runs
    alone (no other request shares its codes); ``rows`` counts (query, code) pairs."""

    kind: ClassVar[str] = "score"
    codec: codecs.Codec
    queries: np.ndarray
    codes: np.ndarray
    side: np.ndarray | None = None
    k: int | None = 10
    metric: str = "dot"
    #: rescoring: the best ``candidates`` per query on the codes, then the top k of
    #: those scored exactly (decoded, or ``vectors``: the caller's float rows)
    candidates: int | None = None
    vectors: np.ndarray | None = None
    #: how the candidates are found: "codes" (scored on the codes) or "hamming"
    first_pass: str = "codes"

    @property
    def group(self) -> tuple:
        return (self.kind, self.id)


@dataclass(eq=False, kw_only=True)
class FitJob(Job):
    """A fit; with ``encode`` the same rows are then encoded (fit-and-encode)."""

    kind: ClassVar[str] = "fit"
    scheme: codecs.Scheme
    params: codecs.SchemeParams
    x: np.ndarray
    encode: bool = False
    quality: bool = False
    #: Set by the caller's side when it stops waiting: the fit thread raises it at
    #: its next checkpoint.
    stop: BaseException | None = field(default=None, repr=False)


#: What the fit lane's metrics name an evaluation by (its ``scheme`` label).
_EVALUATE = SimpleNamespace(name="evaluate")


@dataclass(eq=False, kw_only=True)
class EvaluateJob(FitJob):
    """/evaluate: each candidate (scheme, params, params as given) fitted on ``fit_x``
    and measured on ``base`` with ``queries``, one after another in the fit lane, each
    bounded by ``seconds`` (`codecs.evaluate`). ``x`` is the whole sample."""

    kind: ClassVar[str] = "evaluate"
    scheme: Any = field(default_factory=lambda: _EVALUATE)
    params: Any = None
    candidates: list
    fit_x: np.ndarray
    base: np.ndarray
    queries: np.ndarray
    k: int = 10
    metric: str = "dot"
    seconds: float = 60.0


class _Stop:
    pass


#: /readyz's kernels_note while the compile thread runs
COMPILING = ("loading or compiling the CPU kernels (about a second from their cache; a minute or more on the "
             "first start after an install); the reference path answers meanwhile: the same codes, slower")


class Worker:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.metrics.watch(self)  # the queue gauges, read when scraped
        self.device = dev.pick_device(settings.device)
        dev.select_kernels(settings.kernels, settings.gpu_kernels)
        self.ready = False
        #: why the CPU kernels are not (yet) the compiled ones, for /readyz; None when they are
        self.kernels_note: str | None = None
        self._compiler: threading.Thread | None = None
        self._gauges: asyncio.Task | None = None
        self._closing = False
        self._stop_fits = False
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._fit_executor: ThreadPoolExecutor | None = None
        self._fits = 0  # fits running or waiting for a fit thread
        self._live: set[Job] = set()  # jobs whose callers wait for an answer
        #: measured device seconds per row, by (kind, scheme): the expected-wait model
        self._spr: dict[tuple[str, str], float] = {}
        self._queued_s = 0.0  # expected device seconds of the jobs in the queue

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.settings.queue_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embquant-{self.device.type}")
        self._fit_executor = ThreadPoolExecutor(max_workers=self.settings.fit_workers, thread_name_prefix="embquant-fit")
        loop = asyncio.get_running_loop()
        if self._compile_in_background():
            # Serve at once on the reference path (bit-identical, slower); a thread of
            # its own loads the numba kernels from their cache or compiles them (the
            # first start after an install: a minute or more), then switches to them.
            kernels.defer(True)
            self.kernels_note = COMPILING
            self._compiler = threading.Thread(target=self._compile_kernels, name="embquant-compile", daemon=True)
            self._compiler.start()
        else:
            await loop.run_in_executor(self._executor, dev.warm_up, self.device)
        self._task = asyncio.create_task(self._collect(), name="embquant-collector")
        if self.metrics.multiprocess:  # several server processes: each writes its own gauges
            self._gauges = asyncio.create_task(self._write_gauges(), name="embquant-gauges")
        self.ready = True
        log.info("worker ready on %s", self.device)

    async def _write_gauges(self) -> None:
        while True:
            self.metrics.tick()
            await asyncio.sleep(GAUGE_INTERVAL_S)

    def _compile_in_background(self) -> bool:
        return (self.settings.kernel_warm_up == "background" and self.settings.kernels == "auto"
                and self.device.type == "cpu" and kernels.active() == "numba")

    def _compile_kernels(self) -> None:
        """In the compile thread: the warm-up on the numba kernels (this thread only),
        then the whole process on them; on failure the reference keeps answering."""
        t0 = time.perf_counter()
        try:
            with kernels.in_this_thread("numba"):
                dev.warm_up(self.device)
        except Exception as e:  # noqa: BLE001 - any failure leaves the reference path in place
            log.warning("the compiled CPU kernels did not build (%s: %s); the torch reference keeps answering",
                        type(e).__name__, e)
            kernels.set_backend("torch")
            kernels.defer(False)
            self.kernels_note = f"the compiled CPU kernels did not build ({type(e).__name__}); the reference path answers"
        else:
            kernels.defer(False)
            self.kernels_note = None
            log.info("CPU codec kernels ready after %.1f s", time.perf_counter() - t0)

    def begin_shutdown(self, grace_s: float) -> None:
        """SIGTERM: the server stops accepting connections and lets the requests it has
        finish. Here: fits stop at their next checkpoint (503), readiness turns false,
        and any job still waiting one second before ``grace_s`` ends is answered 503,
        so no request is left to the server's own cancellation (a 500)."""
        if self._stop_fits:
            return
        self._stop_fits = True
        self.ready = False
        asyncio.get_running_loop().call_later(max(grace_s - 1.0, 0.0), self._fail_waiting)

    def _fail_waiting(self) -> None:
        for j in list(self._live):
            if j.future is not None and not j.future.done():
                j.future.set_exception(ShuttingDown("the service is shutting down; retry on another replica"))

    async def stop(self) -> None:
        """Stop accepting and stop fits; finish every accepted encode and decode, then
        release the threads."""
        if self._task is None and self._executor is None:
            return
        self._closing = True
        self._stop_fits = True
        self.ready = False
        if self._gauges is not None:
            self._gauges.cancel()
            self._gauges = None
        if self._task is not None:
            await self._queue.put(_Stop())
            await self._task
            self._task = None
        for ex in (self._executor, self._fit_executor):
            if ex is not None:
                ex.shutdown(wait=True)
        self._executor = self._fit_executor = None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def expected_wait_s(self) -> float:
        """Device seconds of the encodes and decodes already queued, as measured so far."""
        return max(self._queued_s, 0.0)

    @property
    def fits_pending(self) -> int:
        return self._fits

    # -- submission ----------------------------------------------------------
    async def submit(self, job: Job) -> Any:
        if self._closing or self._queue is None:
            raise ShuttingDown("the service is shutting down; retry on another replica")
        if isinstance(job, FitJob):
            if self._stop_fits:
                raise ShuttingDown("the service is shutting down: no new fits; retry on another replica")
            return await self._submit_fit(job)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        spr = self._spr.get((job.kind, job.scheme_name))
        job.cost = job.rows * spr if spr else 0.0
        wait = self.expected_wait_s
        if wait + job.cost > job.deadline - now:
            self.metrics.rejected("expected_wait")
            raise Overloaded(
                f"the work already queued would take about {wait:.2f} s, and this request "
                f"{job.cost:.2f} s more: past its deadline of {job.timeout_s:g} s; retry shortly or elsewhere",
                retry_after=max(self.settings.retry_after_s, min(wait, 60.0)),
            )
        job.future = loop.create_future()
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.rejected("queue_full")
            raise Overloaded(
                f"the work queue is full ({self.settings.queue_size} jobs); retry shortly",
                retry_after=self.settings.retry_after_s,
            ) from None
        self._queued_s += job.cost
        return await self._await(job, job.future)

    async def _await(self, job: Job, future: asyncio.Future) -> Any:
        """The job's result, or DeadlineExceeded at its deadline. A timer answers the
        future (no wait_for task per request: this runs for every request)."""
        loop = asyncio.get_running_loop()
        self._live.add(job)
        timer = loop.call_later(max(job.deadline - time.monotonic(), 0.0), self._expire, job, future)
        try:
            return await future
        except asyncio.CancelledError:
            if not _current_cancelling():  # the job's future was cancelled, not this caller
                raise ShuttingDown("the job was cancelled as the service shut down; retry on another replica") from None
            # The caller went away (client disconnect): drop the job, keep the loop.
            future.cancel()
            if isinstance(job, FitJob):
                job.stop = ShuttingDown("the caller went away; the fit was stopped")
            raise
        finally:
            timer.cancel()
            self._live.discard(job)

    def _expire(self, job: Job, future: asyncio.Future) -> None:
        if future.done():
            return
        self.metrics.rejected("deadline")
        err = DeadlineExceeded(f"the request did not finish within its deadline of {job.timeout_s:g}s"
                               + ("; the fit was stopped" if isinstance(job, FitJob) else ""))
        if isinstance(job, FitJob):
            job.stop = err
        future.set_exception(err)

    # -- the fit lane ------------------------------------------------------------
    async def _submit_fit(self, job: FitJob) -> Any:
        st = self.settings
        if self._fits >= st.fit_workers + st.fit_queue_size:
            self.metrics.rejected("fits_full")
            raise Overloaded(
                f"{self._fits} fits are running or waiting (at most {st.fit_workers} at once and "
                f"{st.fit_queue_size} waiting: EMBQUANT_FIT_WORKERS, EMBQUANT_FIT_QUEUE_SIZE); retry later",
                retry_after=max(st.retry_after_s, 5.0),
            )
        loop = asyncio.get_running_loop()
        self._fits += 1
        inner = loop.run_in_executor(self._fit_executor, self._run_fit, job)
        # the count falls when the thread is done, not when the caller stops waiting
        inner.add_done_callback(self._fit_done)
        # a future the shutdown sweep can answer 503, whatever the thread does
        job.future = loop.create_future()
        inner.add_done_callback(lambda f: _relay(f, job.future))
        t0 = time.perf_counter()
        try:
            return await self._await(job, job.future)
        finally:
            self.metrics.fit(job.scheme.name, time.perf_counter() - t0)

    def _fit_done(self, f: asyncio.Future) -> None:
        self._fits -= 1
        if not f.cancelled():
            f.exception()  # retrieved: a stopped fit's error is not "never retrieved"

    def _run_fit(self, job: FitJob) -> Any:
        """In a fit thread: the fit (and encode), stopped at its next checkpoint once
        the deadline passes, the caller leaves or the service shuts down."""

        def should_stop() -> BaseException | None:
            if self._stop_fits:
                return ShuttingDown("the service is shutting down; the fit was stopped; retry on another replica")
            if job.stop is not None:
                return job.stop
            if time.monotonic() > job.deadline:
                return DeadlineExceeded(f"the fit did not finish within its deadline of {job.timeout_s:g}s; it was stopped")
            return None

        why = should_stop()
        if why is not None:
            raise why
        with codecs.cancel_scope(should_stop):
            if isinstance(job, EvaluateJob):
                return dev.run_evaluate(job, self.device)
            return dev.run_fit(job, self.device)

    # -- the collector ---------------------------------------------------------
    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            # Jobs that queued while the device was busy go at once, with whatever else
            # is queued; only a job arriving at an idle device waits max_wait_ms for company.
            backlog = self._queue.qsize() > 0
            first = await self._queue.get()
            if isinstance(first, _Stop):
                break
            jobs, rows = [first], first.rows
            t_end = loop.time() + (0.0 if backlog else self.settings.max_wait_ms / 1000)
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
            self._queued_s -= j.cost
        if not self._queue.qsize():
            self._queued_s = 0.0  # no drift: an empty queue has nothing to wait for
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
                seconds = time.perf_counter() - t0
                n = sum(j.rows for j in chunk)
                key = (op, chunk[0].scheme_name)
                old = self._spr.get(key)
                self._spr[key] = seconds / n if old is None else (1 - _EWMA) * old + _EWMA * seconds / n
                self.metrics.batch(op, seconds, n)
                if len(results) != len(chunk):  # never trust a length blindly
                    results = [RuntimeError("batch returned a wrong number of results")] * len(chunk)
                for j, r in zip(chunk, results):
                    if j.future.done():
                        continue
                    if isinstance(r, BaseException):
                        j.future.set_exception(r)
                    else:
                        j.future.set_result(r)


def _current_cancelling() -> int:
    t = asyncio.current_task()
    return t.cancelling() if t is not None and hasattr(t, "cancelling") else 1


def _relay(src: asyncio.Future, dst: asyncio.Future) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())


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

