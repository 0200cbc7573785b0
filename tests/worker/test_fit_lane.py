"""The worker's fit lane and admission: fits never hold up encodes, stop at their
deadline, when their caller leaves and on shutdown; the queue admits by expected wait."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.errors import DeadlineExceeded, Overloaded, ShuttingDown
from embquant.settings import Settings
from embquant.worker import EncodeJob, FitJob, Worker
from embquant.worker import device as dev
from tests.support.worker import hold_device

CODEC = codecs.fit("absmax", {"bits": 4}, torch.randn(8, 16))
X = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)


class SlowFit:
    """Stands in for codecs.fit: loops on checkpoints until released (or 20 s)."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.ended = threading.Event()
        self.stopped_by: BaseException | None = None

    def __call__(self, scheme, params, x):
        self.started.set()
        try:
            t_end = time.monotonic() + 20
            while not self.release.is_set() and time.monotonic() < t_end:
                codecs.checkpoint()
                time.sleep(0.005)
            return CODEC
        except BaseException as e:
            self.stopped_by = e
            raise
        finally:
            self.ended.set()


@pytest.fixture
def slow(monkeypatch):
    s = SlowFit()
    monkeypatch.setattr(dev, "warm_up", lambda device: None)  # it fits too
    monkeypatch.setattr(dev.codecs, "fit", s)
    return s


def fit_job(timeout=30.0, encode=False) -> FitJob:
    scheme = codecs.get_scheme("absmax")
    return FitJob(rows=4, timeout_s=timeout, x=X, scheme=scheme, params=codecs.parse_params(scheme, {}), encode=encode)


def enc_job(timeout=10.0, rows=X) -> EncodeJob:
    return EncodeJob(rows=rows.shape[0], timeout_s=timeout, codec=CODEC, x=rows)


async def started(w: Worker, **kw):
    s = Settings(device="cpu", **kw)
    w = Worker(s)
    await w.start()
    return w


def test_encodes_are_answered_while_a_fit_runs(slow):
    async def main():
        w = await started(None)
        fit = asyncio.create_task(w.submit(fit_job()))
        await asyncio.to_thread(slow.started.wait, 5)
        t0 = time.perf_counter()
        res = await asyncio.gather(*(w.submit(enc_job()) for _ in range(20)))
        took = time.perf_counter() - t0
        assert not fit.done()  # the fit is still running
        slow.release.set()
        assert await fit is CODEC
        await w.stop()
        return res, took

    res, took = asyncio.run(main())
    want = codecs.encode(CODEC, torch.from_numpy(X))[0].numpy()
    assert all(np.array_equal(r.codes, want) for r in res)
    assert took < 5  # functional bound (the fit holds no lock the encodes need), not a speed test


def test_a_fit_past_its_deadline_is_stopped(slow):
    async def main():
        w = await started(None)
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="the fit was stopped"):
            await w.submit(fit_job(timeout=0.3))
        waited = time.perf_counter() - t0
        ended = await asyncio.to_thread(slow.ended.wait, 3)
        pending = w.fits_pending
        await w.stop()
        return waited, ended, pending

    waited, ended, pending = asyncio.run(main())
    assert waited < 2 and ended and pending == 0
    assert isinstance(slow.stopped_by, DeadlineExceeded)


def test_a_fit_whose_caller_left_is_stopped(slow):
    async def main():
        w = await started(None)
        t = asyncio.create_task(w.submit(fit_job()))
        await asyncio.to_thread(slow.started.wait, 5)
        t.cancel()
        ended = await asyncio.to_thread(slow.ended.wait, 3)
        await w.stop()
        return ended

    assert asyncio.run(main())
    assert isinstance(slow.stopped_by, ShuttingDown) and "caller went away" in str(slow.stopped_by)


def test_shutdown_stops_fits_and_answers_waiting_jobs_503(slow, monkeypatch):
    gate = hold_device(monkeypatch)

    async def main():
        w = await started(None, max_wait_ms=0)
        fit = asyncio.create_task(w.submit(fit_job()))
        enc = asyncio.create_task(w.submit(enc_job()))
        await asyncio.to_thread(slow.started.wait, 5)
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        w.begin_shutdown(grace_s=1.3)
        with pytest.raises(ShuttingDown, match="fit was stopped"):
            await fit
        with pytest.raises(ShuttingDown):
            await enc  # held in the device thread past the grace period's last second
        took = time.perf_counter() - t0
        with pytest.raises(ShuttingDown, match="no new fits"):
            await w.submit(fit_job())
        gate.set()
        await w.stop()
        return took

    took = asyncio.run(main())
    assert 0.2 <= took < 2


def test_fit_lane_is_bounded(slow):
    async def main():
        w = await started(None, fit_workers=1, fit_queue_size=1)
        a = asyncio.create_task(w.submit(fit_job()))
        b = asyncio.create_task(w.submit(fit_job()))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="fits are running or waiting"):
            await w.submit(fit_job())
        slow.release.set()
        await asyncio.gather(a, b)
        await w.stop()

    asyncio.run(main())


def test_admission_by_expected_wait():
    """With the measured cost per row known, a job that cannot finish by its deadline
    behind the work queued is refused at once (429), not after waiting."""

    async def main():
        w = await started(None)
        w._spr[("encode", "absmax")] = 0.5  # as if batches had measured 0.5 s per row
        with pytest.raises(Overloaded, match="past its deadline"):
            await w.submit(enc_job(timeout=1.0))  # 4 rows: 2 s of work, 1 s deadline
        w._spr[("encode", "absmax")] = 1e-6
        r = await w.submit(enc_job(timeout=1.0))
        await w.stop()
        return r

    assert asyncio.run(main()).codes.shape == (4, 1)


def test_expected_wait_learnt_from_batches():
    async def main():
        w = await started(None)
        assert w.expected_wait_s == 0
        await w.submit(enc_job(rows=np.random.default_rng(1).standard_normal((300, 16)).astype(np.float32)))
        spr = w._spr[("encode", "absmax")]
        await w.stop()
        return spr

    assert 0 < asyncio.run(main()) < 0.01
