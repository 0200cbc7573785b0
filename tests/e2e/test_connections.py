"""Connection limits against a real `embquant serve` (issue 13): a connection that
sends no complete header is closed, a body that never arrives in full gets a 408,
idle sockets do not stop normal requests, and the trace log level starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.server import Server

HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def strict():
    # log_level=trace: it crashed start-up before (logging knows no TRACE by name)
    s = Server(header_timeout_s=HEADER_TIMEOUT, body_timeout_s=1, log_level="trace")
    yield s
    s.stop()


def connect(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return s


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reads and drops what it sends)."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    while True:
        data = sock.recv(65536)
        if not data:
            return time.monotonic() - t0


def healthz(sock: socket.socket) -> bytes:
    """One GET /healthz on ``sock``, its whole answer (headers and body may come apart)."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):
        data = sock.recv(65536)
        assert data, answer
        answer += data
    return answer


def test_trace_log_level_starts(strict):
    assert httpx.get(strict.url + "/healthz").status_code == 200
    assert "TRACE" in strict.output()


def test_silent_connection_closed_after_header_timeout(strict):
    with connect(strict) as s:
        assert closed_within(s, 8) < HEADER_TIMEOUT + 3


def test_incomplete_header_closed(strict):
    with connect(strict) as s:
        s.sendall(b"POST /quantize HTTP/1.1\r\nHost: x\r\n")
        assert closed_within(s, 8) < HEADER_TIMEOUT + 3


def test_incomplete_header_after_a_kept_alive_request_closed(strict):
    with connect(strict) as s:
        assert b"200 OK" in healthz(s)
        time.sleep(HEADER_TIMEOUT + 0.5)  # idle within keep-alive (15 s): still open
        assert b"200 OK" in healthz(s)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert closed_within(s, 8) < HEADER_TIMEOUT + 3


def test_content_length_larger_than_body_answers_408(strict):
    with connect(strict) as s:
        s.sendall(b"POST /quantize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"vectors\": ")
        s.settimeout(8)
        t0 = time.monotonic()
        answer = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            answer += data
        assert time.monotonic() - t0 < 5
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer and b"EMBQUANT_BODY_TIMEOUT_S" in answer


def test_idle_sockets_do_not_block_requests(strict):
    idle = [connect(strict) for _ in range(200)]
    try:
        with httpx.Client(base_url=strict.url, timeout=10) as c:
            for _ in range(5):
                r = c.post("/quantize", json={"vectors": [[0.1, 0.2]], "scheme": "absmax"})
                assert r.status_code == 200
    finally:
        for s in idle:
            s.close()


def test_unknown_log_level_refused_at_start():
    env = {**os.environ, "EMBQUANT_LOG_LEVEL": "loud", "EMBQUANT_DEVICE": "cpu"}
    p = subprocess.run([sys.executable, "-m", "embquant.cli", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "log_level must be one of" in p.stderr and "trace" in p.stderr


def test_connection_settings_reach_uvicorn():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from embquant.cli import uvicorn_options
    from embquant.settings import Settings

    o = uvicorn_options(Settings(keep_alive_s=20, limit_concurrency=0, header_timeout_s=3, log_level="TRACE"))
    assert o["timeout_keep_alive"] == 20 and o["limit_concurrency"] is None and o["log_level"] == "trace"
    assert o["http"].__name__.startswith("HeaderTimeout")
    d = uvicorn_options(Settings())
    assert d["timeout_keep_alive"] == 15 > 5.0  # longer than the client's pool expiry
    assert d["limit_concurrency"] == 1024
    assert d["access_log"] is False  # off unless asked: a line per request costs the event loop
    assert uvicorn_options(Settings(access_log=True))["access_log"] is True
    try:
        import httptools  # noqa: F401
    except ImportError:
        assert issubclass(d["http"], H11Protocol)


def _slow_count(url: str) -> float:
    """Requests to /quantize that took more than 0.5 s and at most 2.5 s (from /metrics)."""
    text = httpx.get(url + "/metrics").text
    got = {}
    for line in text.splitlines():
        if line.startswith("embquant_request_seconds_bucket{") and 'route="/quantize"' in line:
            le = line.split('le="')[1].split('"')[0]
            got[le] = float(line.rsplit(" ", 1)[1])
    return got.get("2.5", 0.0) - got.get("0.5", 0.0)


def test_request_seconds_count_from_the_first_byte_read(strict):
    """The request metrics time a request from its first bytes read, not from when the
    app got it: a request whose header took 0.7 s to arrive is counted as slow."""
    before = _slow_count(strict.url)
    body = b'{"vectors": [[1.0, 2.0]], "scheme": "absmax"}'
    head = (b"POST /quantize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with connect(strict) as s:
        s.sendall(head[:20])
        time.sleep(0.7)  # within the header timeout (1 s)
        s.sendall(head[20:] + body)
        answer = b""
        while b"codes" not in answer:
            data = s.recv(65536)
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 200")
    assert _slow_count(strict.url) == before + 1
