"""Holding the worker's device thread, for tests of what happens while it is busy."""

from __future__ import annotations

import threading

from embquant.worker import device as dev


def hold_device(monkeypatch) -> threading.Event:
    """Every batch waits in the device thread until the returned event is set (10 s at most)."""
    gate = threading.Event()
    real = dev.run_group

    def held(op, jobs, device):
        gate.wait(10)
        return real(op, jobs, device)

    monkeypatch.setattr(dev, "run_group", held)
    return gate
