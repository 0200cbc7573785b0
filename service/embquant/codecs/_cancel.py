"""Cooperative cancellation of fits: `cancel_scope`, `checkpoint`, `interruptible`.

A caller that may want to stop a fit (a deadline, a shutdown) runs it under
``cancel_scope(should_stop)``; the fit's loops call `checkpoint()`, which asks
``should_stop()`` and raises the exception it returns. Nothing is preempted: a
fit stops at its next checkpoint, and raising there leaves no partial state (a
fit builds its codec only at its end, and any cache its helpers fill is written only
when a computation completes).

The scope is per thread (``threading.local``): a fit running in another thread
is not affected. Scopes nest; the innermost one is asked, and the outer one is
back when it exits. Outside any scope `checkpoint()` is one attribute lookup.

`core` re-exports these (``codecs.cancel_scope``, ``codecs.checkpoint``); they
live in this leaf module so scheme modules can import them without an import
cycle (`core` imports the kernels, which import `lloyd` and `_scalar`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

StopCheck = Callable[[], "BaseException | None"]


class _State(threading.local):
    should_stop: StopCheck | None = None


_state = _State()


@contextlib.contextmanager
def cancel_scope(should_stop: StopCheck) -> Iterator[None]:
    """Run the body with ``should_stop`` asked at every `checkpoint()` of this thread.

    ``should_stop()`` returns None to go on, or an exception instance that the
    checkpoint raises (as is: the caller gets that very object). It is called
    often (every few milliseconds to a few hundred in a busy fit), so it should
    be cheap, and it must not raise itself."""
    if not callable(should_stop):
        raise TypeError(f"cancel_scope needs a callable, got {type(should_stop).__name__}")
    outer = _state.should_stop
    _state.should_stop = should_stop
    try:
        yield
    finally:
        _state.should_stop = outer


def checkpoint() -> None:
    """Raise the exception the innermost scope's ``should_stop()`` returns, if any.

    Outside a scope: nothing (one attribute lookup)."""
    should_stop = _state.should_stop
    if should_stop is None:
        return
    exc = should_stop()
    if exc is None:
        return
    if not isinstance(exc, BaseException):
        raise TypeError(f"a cancel_scope callable must return None or an exception instance, got {exc!r}")
    raise exc


def active() -> bool:
    """True inside a `cancel_scope` of this thread."""
    return _state.should_stop is not None


#: How often `interruptible` asks the scope while its call runs, in seconds.
POLL_SECONDS = 0.02


def interruptible(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` for one long call that cannot check for itself (a
    LAPACK routine that takes seconds).

    Outside a scope it is a plain call. Inside one, the call runs in a helper
    thread while this thread asks the scope every `POLL_SECONDS`; when the scope
    fires, this thread raises at once and the call's result is dropped. The call
    itself cannot be stopped: it runs to its end in the background (CPU time, no
    state), so keep this for single calls whose result is a local value. torch
    gives a new thread the same intra-op thread count, so the result has the same
    bits as the plain call (tests/codecs/test_cancel.py checks it for bitcodes).
    """
    if _state.should_stop is None:
        return fn(*args, **kwargs)
    checkpoint()
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="embquant-fit-call", daemon=True).start()
    while not done.wait(POLL_SECONDS):
        checkpoint()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
