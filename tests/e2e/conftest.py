"""Fixtures of the end-to-end tests: servers started on demand (`server_factory`);
the shared `server` is in tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.support.server import Server


@pytest.fixture
def server_factory():
    started: list[Server] = []

    def make(**env) -> Server:
        s = Server(**env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
