"""The compiled CPU kernels warm up in a thread of their own (EMBQUANT_KERNEL_WARM_UP=
background, the default): the worker answers at once on the torch reference (the same
codes), then every thread switches to the numba kernels; a build that fails leaves the
reference answering. The rest of the suite runs with "blocking" (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import kernels
from embquant.settings import Settings
from embquant.worker import EncodeJob, Worker
from embquant.worker import batcher
from embquant.worker import device as dev

X = np.random.default_rng(0).standard_normal((300, 48)).astype(np.float32)
CODEC = codecs.fit("lloyd", {"bits": 4}, torch.from_numpy(X))


class GatedWarmUp:
    """Stands in for dev.warm_up: notes the backend its thread runs, waits for the gate."""

    def __init__(self, fail: bool = False):
        self.gate = threading.Event()
        self.fail = fail
        self.seen: list[str] = []

    def __call__(self, device):
        self.seen.append(kernels.active())
        assert self.gate.wait(20), "the test never opened the gate"
        if self.fail:
            raise RuntimeError("no compiler here")


@pytest.fixture
def restore_kernels():
    yield
    kernels.defer(False)
    kernels.set_backend("auto")


def _compiled(w: Worker, timeout: float = 20) -> bool:
    """Wait for the worker's compile thread; whether it is over."""
    w._compiler.join(timeout)
    return not w._compiler.is_alive()


async def _in_device_thread(w: Worker, fn):
    return await asyncio.get_running_loop().run_in_executor(w._executor, fn)


def test_the_worker_answers_on_the_reference_while_the_kernels_compile(monkeypatch, restore_kernels):
    if kernels.set_backend("auto") != "numba":
        pytest.skip("numba is not available here")
    warm = GatedWarmUp()
    monkeypatch.setattr(dev, "warm_up", warm)
    with kernels.using("numba"):
        want_codes, want_side = codecs.encode(CODEC, torch.from_numpy(X))

    async def main():
        w = Worker(Settings(device="cpu", kernel_warm_up="background"))
        await w.start()
        try:
            assert w.ready and w._compiler is not None and w._compiler.is_alive()
            assert w.kernels_note == batcher.COMPILING
            assert kernels.active() == "torch"  # this thread, and the device thread below
            assert await _in_device_thread(w, kernels.active) == "torch"
            during = await w.submit(EncodeJob(rows=len(X), timeout_s=30, codec=CODEC, x=X))
            warm.gate.set()
            assert await asyncio.to_thread(_compiled, w)
            assert w.kernels_note is None
            assert kernels.active() == "numba"
            assert await _in_device_thread(w, kernels.active) == "numba"
            after = await w.submit(EncodeJob(rows=len(X), timeout_s=30, codec=CODEC, x=X))
        finally:
            warm.gate.set()
            await w.stop()
        return during, after

    during, after = asyncio.run(main())
    assert warm.seen == ["numba"]  # the compile thread ran the numba kernels
    for res in (during, after):  # the same codes on either path
        np.testing.assert_array_equal(res.codes, want_codes.numpy())
        np.testing.assert_array_equal(res.side.view(np.int32), want_side.numpy().view(np.int32))


def test_a_failed_build_leaves_the_reference_answering(monkeypatch, restore_kernels):
    if kernels.set_backend("auto") != "numba":
        pytest.skip("numba is not available here")
    warm = GatedWarmUp(fail=True)
    monkeypatch.setattr(dev, "warm_up", warm)

    async def main():
        w = Worker(Settings(device="cpu", kernel_warm_up="background"))
        await w.start()
        try:
            warm.gate.set()
            assert await asyncio.to_thread(_compiled, w)
            assert "did not build (RuntimeError)" in w.kernels_note
            assert kernels.active() == "torch"
            res = await w.submit(EncodeJob(rows=len(X), timeout_s=30, codec=CODEC, x=X))
        finally:
            await w.stop()
        return res

    res = asyncio.run(main())
    with kernels.using("torch"):
        want, _ = codecs.encode(CODEC, torch.from_numpy(X))
    np.testing.assert_array_equal(res.codes, want.numpy())


def test_an_explicit_backend_is_not_deferred(restore_kernels):
    kernels.defer(True)
    with kernels.using("torch"):
        assert kernels.active() == "torch"
    if kernels.set_backend("auto") == "numba":
        assert kernels.active() == "torch"  # deferred
        with kernels.using("numba"):
            assert kernels.active() == "numba"  # asked for by name: not deferred
        with kernels.in_this_thread("numba"):
            assert kernels.active() == "numba"
        kernels.defer(False)
        assert kernels.active() == "numba"


@pytest.mark.parametrize("setting,kw", [("blocking", {}), ("background", {"kernels": "torch"}),
                                        ("background", {"kernels": "numba"})])
def test_blocking_and_explicit_backends_warm_up_before_ready(monkeypatch, restore_kernels, setting, kw):
    if kw.get("kernels") == "numba" and kernels.set_backend("auto") != "numba":
        pytest.skip("numba is not available here")
    calls = []
    monkeypatch.setattr(dev, "warm_up", lambda device: calls.append(threading.current_thread().name))

    async def main():
        w = Worker(Settings(device="cpu", kernel_warm_up=setting, **kw))
        await w.start()
        try:
            assert w._compiler is None and w.kernels_note is None
            assert calls and calls[0].startswith("embquant-cpu")  # on the device thread, before ready
        finally:
            await w.stop()

    asyncio.run(main())
