"""The batching worker on its own: batching, a poisoned job, a full queue,
deadlines, disconnects and draining on stop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.errors import CodecMismatch, DeadlineExceeded, Overloaded, ShuttingDown
from embquant.settings import Settings
from embquant.worker import EncodeJob, Worker
from embquant.worker import device as dev

CODEC = codecs.fit("absmax", {"bits": 4}, torch.randn(8, 16))


def encode_job(x: np.ndarray, timeout: float = 10.0, codec=CODEC) -> EncodeJob:
    return EncodeJob(rows=x.shape[0], timeout_s=timeout, codec=codec, x=x)


def rows(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


class Gate:
    """Holds the device thread inside run_group until opened; records every batch."""

    def __init__(self, monkeypatch, blocked: bool = True):
        self.open = threading.Event()
        if not blocked:
            self.open.set()
        self.batches: list[list[int]] = []
        real = dev.run_group

        def gated(op, jobs, device):
            self.batches.append([j.id for j in jobs])
            self.open.wait(10)
            return real(op, jobs, device)

        monkeypatch.setattr(dev, "run_group", gated)


def run(coro):
    return asyncio.run(coro)


def test_jobs_sharing_a_codec_are_batched_and_results_split(monkeypatch):
    gate = Gate(monkeypatch, blocked=False)

    async def main():
        w = Worker(Settings(device="cpu", max_wait_ms=200))
        await w.start()
        xs = [rows(n, seed=n) for n in (1, 3, 7, 2)]
        res = await asyncio.gather(*(w.submit(encode_job(x)) for x in xs))
        await w.stop()
        return xs, res

    xs, res = run(main())
    assert len(gate.batches) == 1 and len(gate.batches[0]) == 4
    for x, r in zip(xs, res):
        codes, side = codecs.encode(CODEC, torch.from_numpy(x))
        assert np.array_equal(r.codes, codes.numpy()) and np.array_equal(r.side, side.numpy())


def test_poisoned_job_fails_alone(monkeypatch):
    gate = Gate(monkeypatch, blocked=False)

    async def main():
        w = Worker(Settings(device="cpu", max_wait_ms=200))
        await w.start()
        good = [rows(4, seed=i) for i in range(5)]
        poison = rows(4, d=9)  # skipped the route's validation: wrong width for the codec
        jobs = [encode_job(x) for x in good[:2]] + [encode_job(poison)] + [encode_job(x) for x in good[2:]]
        res = await asyncio.gather(*(w.submit(j) for j in jobs), return_exceptions=True)
        await w.stop()
        return good, res

    good, res = run(main())
    assert len(gate.batches[0]) == 6  # all six went to the device together first
    assert isinstance(res[2], CodecMismatch) and "dimensions" in str(res[2])
    for x, r in zip(good, res[:2] + res[3:]):
        assert np.array_equal(r.codes, codecs.encode(CODEC, torch.from_numpy(x))[0].numpy())


def test_full_queue_is_refused_with_retry_after(monkeypatch):
    gate = Gate(monkeypatch)

    async def main():
        w = Worker(Settings(device="cpu", max_wait_ms=0, queue_size=2, retry_after_s=3))
        await w.start()
        first = asyncio.create_task(w.submit(encode_job(rows(1))))
        await asyncio.sleep(0.2)  # the collector holds it in the (blocked) device thread
        queued = [asyncio.create_task(w.submit(encode_job(rows(1)))) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as exc:
            await w.submit(encode_job(rows(1)))
        gate.open.set()
        done = await asyncio.gather(first, *queued)
        await w.stop()
        return exc.value, done

    exc, done = run(main())
    assert exc.retry_after == 3 and "queue is full" in exc.message
    assert len(done) == 3  # everything accepted still finished


def test_deadline_gives_timeout_and_the_loop_survives(monkeypatch):
    gate = Gate(monkeypatch)

    async def main():
        w = Worker(Settings(device="cpu", max_wait_ms=0))
        await w.start()
        blocker = asyncio.create_task(w.submit(encode_job(rows(1), timeout=0.2)))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(w.submit(encode_job(rows(2), timeout=0.2)))
        with pytest.raises(DeadlineExceeded, match="deadline"):
            await blocker
        with pytest.raises(DeadlineExceeded):
            await waiting
        gate.open.set()
        after = await w.submit(encode_job(rows(3)))
        await w.stop()
        return after

    after = run(main())
    assert after.codes.shape[0] == 3
    # the job that expired in the queue never reached the device
    assert len(gate.batches) == 2


def test_disconnected_caller_does_not_break_the_loop(monkeypatch):
    gate = Gate(monkeypatch)

    async def main():
        w = Worker(Settings(device="cpu", max_wait_ms=0))
        await w.start()
        t = asyncio.create_task(w.submit(encode_job(rows(1))))
        await asyncio.sleep(0.05)
        t.cancel()  # what Starlette does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await t
        gate.open.set()
        ok = await w.submit(encode_job(rows(2)))
        await w.stop()
        return ok

    assert run(main()).codes.shape[0] == 2


def test_stop_drains_every_accepted_job(monkeypatch):
    gate = Gate(monkeypatch)

    async def main():
        w = Worker(Settings(device="cpu", max_wait_ms=0, max_batch_rows=3))
        await w.start()
        tasks = [asyncio.create_task(w.submit(encode_job(rows(2, seed=i)))) for i in range(20)]
        await asyncio.sleep(0.05)
        stopper = asyncio.create_task(w.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(ShuttingDown):
            await w.submit(encode_job(rows(1)))
        gate.open.set()
        res = await asyncio.gather(*tasks)
        await stopper
        return res

    res = run(main())
    assert len(res) == 20 and all(r.codes.shape == (2, 1) for r in res)


def test_out_of_memory_splits_the_batch(monkeypatch):
    calls = []
    real = dev._run

    def flaky(op, jobs, device):
        calls.append(len(jobs))
        if len(jobs) > 2:
            raise torch.OutOfMemoryError("simulated")
        return real(op, jobs, device)

    monkeypatch.setattr(dev, "_run", flaky)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    jobs = [encode_job(rows(1, seed=i)) for i in range(8)]
    res = dev.run_group("encode", jobs, torch.device("cpu"))
    assert calls == [8, 4, 2, 2, 4, 2, 2]
    assert all(not isinstance(r, Exception) for r in res)
