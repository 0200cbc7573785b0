"""Cooperative cancellation of fits: ``codecs.cancel_scope`` and ``codecs.checkpoint``.

A fit run under a scope stops at its next checkpoint once the scope's callable
returns an exception, and raises that very exception; without a scope (or under
one that never fires) a fit gives the same codec, bit for bit.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import _cancel

#: When the scopes of the stop tests start firing, after the fit starts (seconds).
TRIGGER_S = 0.3
#: How long after the trigger a fit may take to raise. A functional bound (the fit
#: stops at a checkpoint, not at its end: each of these fits takes 3 s to minutes
#: uncancelled on the 2-core CI machine), not a speed benchmark; the latency is
#: about 0.1-0.4 s there.
STOP_BOUND_S = 1.5

#: Fits with loops, with settings that take >= 2 s on a 20,000 x 384 sample when
#: nothing stops them (2-core machine: bitcodes 35 s+ (its PCA's SVD alone 3.4 s),
#: transform fitted 17 s, lloyd fit_dim 10 s, distributional search 3.7 s).
SLOW_FITS = {
    # the trigger lands in the PCA init's SVD (one LAPACK call, run interruptibly)
    "bitcodes-pca": ("bitcodes", {"num_bits": 256, "iterations": 50, "max_seconds": 3600}),
    # the trigger lands in the encoder's sweeps (random init: no SVD)
    "bitcodes-random": ("bitcodes", {"num_bits": 256, "iterations": 50, "max_seconds": 3600, "init": "random"}),
    "transform-fitted": ("transform", {"bits": 4, "levels": "fitted"}),
    "lloyd-fit_dim": ("lloyd", {"bits": 4, "mode": "fit_dim"}),
    "distributional-search": ("distributional", {"bits": 8, "dist": None, "beta": None}),
    # the trigger lands in the training of the levels through the trellis
    "tcq-fit": ("tcq", {"bits": 8, "mode": "fit"}),
}

#: Schemes whose fit has no loop (one pass over the sample, well under a second),
#: so nothing can stop it midway; core.fit still checks before it starts.
NO_LOOP_FITS = {
    "absmax": "fits nothing",
    "affine": "fits nothing",
    "blockwise": "fits nothing",
    "hqq": "fits nothing (its optimiser runs per encoded batch)",
    "codebook": 'scale="codec": one absmax',
    "binary": 'scale="global": one mean',
    "int8": "a per-dimension min and max",
}

#: Stop latencies measured by this run (printed with ``pytest -s``).
LATENCIES: dict[str, float] = {}


class Stop(Exception):
    """What the scopes of these tests return."""


@pytest.fixture(scope="module")
def sample() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # correlated, embedding-like: a random mixing of Gaussian coordinates
    z = torch.randn(20_000, 384, generator=g)
    mix = torch.randn(384, 384, generator=g) / 384**0.5
    x = z @ mix + 0.1 * z
    # What a serving process has done before its fits: loaded the compiled rotation
    # kernel (about 1 s the first time in a process, one call no checkpoint splits)
    # and computed the Gaussian tables (transform's allocation uses bits 1..8).
    codecs.fit("lloyd", {"bits": 4, "mode": "fit_dim"}, x[:64])
    codecs.fit("transform", {"bits": 2}, x[:64])
    return x


class _Deadline:
    """A scope callable that returns ``exc`` from ``after`` seconds after it is made
    on (the moment it starts to fire is ``self.at``, whenever a checkpoint asks)."""

    def __init__(self, exc: BaseException, after: float):
        self.exc = exc
        self.at = time.monotonic() + after
        self.asked_late = 0  # calls that returned exc

    def __call__(self) -> BaseException | None:
        if time.monotonic() < self.at:
            return None
        self.asked_late += 1
        return self.exc


def _fit_in_thread(scheme: str, params: dict, x: torch.Tensor, should_stop) -> dict:
    """Fit in a thread of its own (as the worker's fit lane does) under a scope."""
    out: dict = {}

    def run():
        try:
            with codecs.cancel_scope(should_stop):
                out["codec"] = codecs.fit(scheme, params, x)
        except BaseException as e:  # noqa: BLE001 (the test looks at it)
            out["error"] = e
        out["end"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(TRIGGER_S + 120)
    assert not t.is_alive(), f"{scheme} {params}: the fit did not stop"
    return out


def test_every_scheme_is_classified():
    """A new scheme is either in SLOW_FITS (its fit loops) or in NO_LOOP_FITS."""
    slow = {scheme for scheme, _ in SLOW_FITS.values()}
    assert not slow & set(NO_LOOP_FITS)
    assert set(codecs.all_schemes()) == slow | set(NO_LOOP_FITS)


@pytest.mark.parametrize("case", sorted(SLOW_FITS))
def test_a_long_fit_stops_soon_after_the_scope_fires(case, sample):
    scheme, params = SLOW_FITS[case]
    stop = Stop(f"{case}: deadline passed")
    deadline = _Deadline(stop, TRIGGER_S)
    out = _fit_in_thread(scheme, params, sample, deadline)
    assert "codec" not in out, f"{case}: the fit finished before the scope fired; make it longer"
    assert out["error"] is stop
    assert deadline.asked_late >= 1
    latency = out["end"] - deadline.at
    LATENCIES[case] = latency
    print(f"\n{case}: stopped {latency:.3f} s after the scope fired")
    assert latency < STOP_BOUND_S, f"{case}: stopped {latency:.2f} s after the scope fired"


@pytest.mark.parametrize("scheme", sorted(codecs.all_schemes()))
def test_a_fit_under_a_fired_scope_does_not_start(scheme):
    stop = Stop("already late")
    params = {"codebook": {"scale": "codec"}, "binary": {"scale": "global"}}.get(scheme, {})
    x = torch.randn(64, 32)
    with codecs.cancel_scope(lambda: stop):
        with pytest.raises(Stop) as info:
            codecs.fit(scheme, params, x)
    assert info.value is stop


SAME_BITS = [
    ("bitcodes", {"num_bits": 48, "iterations": 2}),  # the PCA's SVD runs in a helper thread under a scope
    ("bitcodes", {"num_bits": 24, "iterations": 2, "init": "random", "seed": 5}),
    ("transform", {"bits": 2, "levels": "fitted"}),
    ("lloyd", {"bits": 3, "mode": "fit_dim"}),
    ("lloyd", {"bits": 5, "mode": "fit_global", "rotation_seed": 4}),
    ("distributional", {"bits": 3, "dist": None, "beta": None}),  # 768,000 values: the seeded draw (randperm)
]


@pytest.fixture
def one_thread():
    """torch on one thread for the test. With two, bitcodes' fit gives different
    bits from run to run, scope or not (the code before scopes too), when the
    2-core machine is overloaded (seen at load 7-9; MKL's multi-threaded float64
    products); this test would take that for a difference the scope made."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize(("scheme", "params"), SAME_BITS)
def test_a_scope_that_never_fires_changes_no_bit(scheme, params, sample, one_thread):
    x = sample[:2000]
    plain = codecs.fit(scheme, params, x)
    calls = []

    def never():
        calls.append(1)
        return None

    out = _fit_in_thread(scheme, params, x, never)  # another thread, as the worker's fit lane
    scoped = out["codec"]
    assert calls, "the fit never reached a checkpoint"
    assert scoped.params == plain.params
    assert sorted(scoped.state) == sorted(plain.state)
    for k, v in plain.state.items():
        w = scoped.state[k]
        assert w.dtype == v.dtype and w.shape == v.shape
        same = np.ascontiguousarray(w).tobytes() == np.ascontiguousarray(v).tobytes()
        assert same, f"{scheme} {params}: state {k!r} differs"
    assert scoped.key == plain.key


def test_a_stopped_training_leaves_nothing_behind():
    """Stopped inside tcq's training of levels through the trellis (mode=fit): the next
    fit of the same rows gives the same codec as one never stopped."""
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    plain = codecs.fit("tcq", {"bits": 2, "mode": "fit"}, x)
    stop = Stop("stop in the training")
    count = [0]

    def on_5th_call():
        count[0] += 1
        return stop if count[0] >= 5 else None  # core.fit's, then the training's loop

    with codecs.cancel_scope(on_5th_call):
        with pytest.raises(Stop):
            codecs.fit("tcq", {"bits": 2, "mode": "fit"}, x)
    assert count[0] == 5
    assert codecs.fit("tcq", {"bits": 2, "mode": "fit"}, x).key == plain.key


def test_nested_scopes_inner_wins_and_the_outer_comes_back():
    outer, inner = Stop("outer"), Stop("inner")
    codecs.checkpoint()
    with codecs.cancel_scope(lambda: outer):
        with codecs.cancel_scope(lambda: inner):
            with pytest.raises(Stop) as e:
                codecs.checkpoint()
            assert e.value is inner
        with pytest.raises(Stop) as e:
            codecs.checkpoint()
        assert e.value is outer
        # an inner scope left by an exception restores the outer one as well
        with pytest.raises(KeyError):
            with codecs.cancel_scope(lambda: None):
                codecs.checkpoint()
                raise KeyError("x")
        with pytest.raises(Stop) as e:
            codecs.checkpoint()
        assert e.value is outer
        # a scope that does not fire, inside one that does: it is the one asked
        with codecs.cancel_scope(lambda: None):
            codecs.checkpoint()
    codecs.checkpoint()  # no scope any more: a no-op


def test_checkpoint_outside_a_scope_is_a_cheap_no_op():
    assert codecs.checkpoint() is None
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        codecs.checkpoint()
    # a functional bound (a few lookups per call), not a benchmark: about 0.1 us a call
    assert (time.perf_counter() - t0) / n < 5e-6


def test_a_scope_belongs_to_its_thread():
    stop = Stop("main thread only")
    seen = []
    with codecs.cancel_scope(lambda: stop):
        t = threading.Thread(target=lambda: seen.append(codecs.checkpoint()))
        t.start()
        t.join()
        with pytest.raises(Stop):
            codecs.checkpoint()
    assert seen == [None]


def test_the_callable_must_return_an_exception_or_none():
    with pytest.raises(TypeError):
        with codecs.cancel_scope(None):  # type: ignore[arg-type]
            pass
    with codecs.cancel_scope(lambda: True):
        with pytest.raises(TypeError, match="exception instance"):
            codecs.checkpoint()


def test_interruptible_runs_plainly_outside_a_scope_and_stops_inside():
    where = []

    def slow(seconds):
        where.append(threading.current_thread())
        time.sleep(seconds)
        return "done"

    assert _cancel.interruptible(slow, 0.0) == "done"
    assert where[-1] is threading.current_thread()
    with codecs.cancel_scope(lambda: None):
        assert _cancel.interruptible(slow, 0.05) == "done"
        with pytest.raises(ZeroDivisionError):
            _cancel.interruptible(lambda: 1 / 0)
    stop = Stop("stop the call")
    t0 = time.monotonic()
    with codecs.cancel_scope(_Deadline(stop, 0.1)):
        with pytest.raises(Stop) as e:
            _cancel.interruptible(slow, 3.0)
    assert e.value is stop
    assert time.monotonic() - t0 < 2.0  # functional bound: the 3 s call was left behind
