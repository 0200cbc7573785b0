"""/metrics as Prometheus reads it: parsed with prometheus_client's own parser, the
counts after known requests (every layer's refusals included), exact large values,
escaped labels, one registry per app."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from embquant.api import create_app
from embquant.settings import Settings
from embquant.worker.metrics import BATCH_ROWS, Metrics
from tests.support.worker import hold_device

BODY = {"vectors": [[0.1, 0.2, 0.3]], "scheme": "absmax"}


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of every sample in the exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(ss: dict, name: str, **labels) -> float:
    return ss.get((name, tuple(sorted(labels.items()))), 0.0)


async def chunks(piece: bytes, n: int):
    for _ in range(n):
        yield piece


def test_counts_after_known_requests(monkeypatch):
    gate = hold_device(monkeypatch)

    async def main():
        app = create_app(Settings(device="cpu", queue_size=1, max_body_bytes=64 * 1024))
        await app.state.worker.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            first = asyncio.create_task(c.post("/quantize", json=BODY))  # held in the device thread
            await asyncio.sleep(0.2)
            second = asyncio.create_task(c.post("/quantize", json={**BODY, "timeout_s": 0.3}))  # queued: 504
            await asyncio.sleep(0.05)
            during = await c.get("/metrics")
            answers = [
                await c.post("/quantize", json=BODY),  # 429 from Admission: the queue is full
                await c.post("/quantize", content=b"x" * 70_000, headers={"content-type": "application/json"}),
                await c.post("/dequantize", content=b"{}", headers={"content-type": "text/plain"}),  # 415
                await c.get("/nowhere"),  # 404
                await second,
            ]
            gate.set()
            answers.append(await first)
            # no Content-Length: the body is counted as it arrives, 413 past the limit
            answers.append(await c.post("/quantize", content=chunks(b"x" * 40_000, 2),
                                        headers={"content-type": "application/json"}))
            after = await c.get("/metrics")
        await app.state.worker.stop()
        return during, answers, after

    during, answers, after = asyncio.run(main())
    assert [r.status_code for r in answers] == [429, 413, 415, 404, 504, 200, 413]
    assert after.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert value(samples(during.text), "embquant_queue_depth") == 1  # read from the worker when scraped
    ss = samples(after.text)
    for status, n in ((200, 1), (413, 2), (429, 1), (504, 1)):
        assert value(ss, "embquant_requests_total", route="/quantize", status=str(status)) == n, status
    assert value(ss, "embquant_requests_total", route="/dequantize", status="415") == 1
    assert value(ss, "embquant_requests_total", route="other", status="404") == 1
    assert value(ss, "embquant_requests_total", route="/metrics", status="200") == 1  # the scrape before
    for type_, n in (("overloaded", 1), ("payload_too_large", 2), ("unsupported_media_type", 1), ("timeout", 1),
                     ("not_found", 1)):
        assert value(ss, "embquant_errors_total", type=type_) == n, type_
    assert value(ss, "embquant_rejected_total", reason="queue_full") == 1
    assert value(ss, "embquant_rejected_total", reason="deadline") == 1
    assert value(ss, "embquant_rows_total", op="quantize") == 1
    assert value(ss, "embquant_queue_depth") == 0
    # the histogram: 5 /quantize answers, cumulative buckets ending in +Inf == count
    assert value(ss, "embquant_request_seconds_count", route="/quantize") == 5
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in ss.items()
                     if k[0] == "embquant_request_seconds_bucket" and dict(k[1])["route"] == "/quantize")
    assert buckets[-1] == (float("inf"), 5)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    # the one encode that ran: a batch of one row (the 504's job was dropped in the queue)
    assert value(ss, "embquant_batch_rows_count", op="encode") == 1
    assert value(ss, "embquant_batch_rows_bucket", op="encode", le="1.0") == 1
    assert "_created" not in after.text


def test_large_values_are_exact_and_bucket_bounds_too():
    m = Metrics()
    m.rows("quantize", 1_234_567)
    m.rows("quantize", 1)
    m.rows("score", 123_456_789)
    m.batch("encode", 0.01, 1_048_577)
    body, _ = m.render()
    text = body.decode()
    assert "e+06 " not in text.replace("1.234568e+06", "")  # no rounded %g forms
    ss = samples(text)
    assert value(ss, "embquant_rows_total", op="quantize") == 1_234_568
    assert value(ss, "embquant_rows_total", op="score") == 123_456_789
    bounds = sorted(float(dict(k[1])["le"]) for k in ss if k[0] == "embquant_batch_rows_bucket")
    assert bounds == sorted(BATCH_ROWS) + [float("inf")]  # every le label parses back to its exact bound
    assert value(ss, "embquant_batch_rows_bucket", op="encode", le="1.048576e+06") == 0
    assert value(ss, "embquant_batch_rows_bucket", op="encode", le="4.194304e+06") == 1
    assert value(ss, "embquant_batch_rows_sum", op="encode") == 1_048_577


def test_label_values_are_escaped():
    m = Metrics()
    odd = 'a "quoted" \\ back\nslash'
    m.error(odd)
    m.error(odd)
    body, _ = m.render()
    assert 'type="a \\"quoted\\" \\\\ back\\nslash"' in body.decode()
    assert value(samples(body.decode()), "embquant_errors_total", type=odd) == 2


def test_openmetrics_when_asked_and_one_registry_per_app():
    from fastapi.testclient import TestClient

    a, b = create_app(Settings(device="cpu")), create_app(Settings(device="cpu"))
    with TestClient(a) as ca, TestClient(b) as cb:
        for _ in range(3):
            assert ca.get("/healthz").status_code == 200
        assert cb.get("/healthz").status_code == 200
        ra = ca.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        rb = cb.get("/metrics")
    assert ra.headers["content-type"].startswith("application/openmetrics-text")
    assert ra.text.endswith("# EOF\n")
    fam = {f.name: f for f in parse_openmetrics(ra.text)}
    got = {tuple(sorted(s.labels.items())): s.value for s in fam["embquant_requests"].samples}
    assert got[(("route", "/healthz"), ("status", "200"))] == 3
    assert value(samples(rb.text), "embquant_requests_total", route="/healthz", status="200") == 1
