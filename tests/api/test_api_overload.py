"""429 with Retry-After and the timeout error, seen through HTTP."""

from __future__ import annotations

import asyncio

import httpx

from embquant.api import create_app
from embquant.settings import Settings
from tests.support.worker import hold_device

BODY = {"vectors": [[0.1, 0.2, 0.3]], "scheme": "absmax"}


def test_queue_full_429_and_deadline_504(monkeypatch):
    gate = hold_device(monkeypatch)

    async def main():
        app = create_app(Settings(device="cpu", max_wait_ms=0, queue_size=1, retry_after_s=2))
        await app.state.worker.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = asyncio.create_task(c.post("/quantize", json=BODY))
            await asyncio.sleep(0.2)
            second = asyncio.create_task(c.post("/quantize", json={**BODY, "timeout_s": 0.3}))
            await asyncio.sleep(0.05)
            full = await c.post("/quantize", json=BODY)
            late = await second  # its deadline passes in the queue
            gate.set()
            ok = await first
            metrics = (await c.get("/metrics")).text
        await app.state.worker.stop()
        return full, late, ok, metrics

    full, late, ok, metrics = asyncio.run(main())
    assert full.status_code == 429 and full.headers["retry-after"] == "2"
    assert full.json()["error"]["type"] == "overloaded"
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout"
    assert "0.3s" in late.json()["error"]["message"]
    assert ok.status_code == 200
    assert 'embquant_rejected_total{reason="queue_full"} 1' in metrics
