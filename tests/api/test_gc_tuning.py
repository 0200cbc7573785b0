"""create_app(tune_gc=True) (what `embquant serve` and the Ray Serve replicas use) freezes
the collector and raises its first-generation threshold once the worker is up; the
default leaves the collector alone (a test process builds many apps)."""

import gc

from fastapi.testclient import TestClient

from embquant.api import create_app
from embquant.api.app import GC_YOUNG_THRESHOLD
from embquant.settings import Settings


def test_tune_gc_freezes_and_raises_the_threshold(monkeypatch):
    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "set_threshold", lambda *t: calls.append(t))
    before = gc.get_threshold()
    with TestClient(create_app(Settings(device="cpu"))) as c:
        assert c.get("/readyz").status_code == 200
    assert calls == []
    with TestClient(create_app(Settings(device="cpu"), tune_gc=True)) as c:
        assert c.get("/readyz").status_code == 200
        assert calls == ["freeze", (GC_YOUNG_THRESHOLD, *before[1:])]
