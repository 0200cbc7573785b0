"""How FastPath reads a request body (`api.fast.Incoming.body`): a body in several
chunks is copied as it arrives into one writable buffer of its Content-Length (never
held twice, as chunks and as their join), or joined where no length is given; the bytes
are the bytes sent, whatever the chunking; a disconnect mid-body is a ClientDisconnect.
The last test sends real multi-chunk bodies through the app."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import orjson
import pytest
from starlette.requests import ClientDisconnect

from embquant.api.fast import Incoming
from embquant.api.limits import Admission
from embquant.settings import Settings


def _receive(chunks: list[bytes], disconnect_after: int | None = None):
    msgs = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if disconnect_after is not None:
        msgs = msgs[:disconnect_after] + [{"type": "http.disconnect"}]

    async def receive():
        return msgs.pop(0)

    return receive


def _body(chunks: list[bytes], content_length: int | str | None, disconnect_after: int | None = None):
    """Incoming.body() behind Admission, which parses the Content-Length (as in the app)."""
    headers = [(b"content-type", b"application/msgpack")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "method": "POST", "headers": headers, "path": "/not-queued"}
    got = {}

    async def app(scope, receive, send):
        got["body"] = await Incoming(None, scope, receive).body()

    async def send(message):
        raise AssertionError(f"Admission answered: {message}")

    asyncio.run(Admission(app, settings=Settings(), worker=None)(scope, _receive(chunks, disconnect_after), send))
    return got["body"]


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for n in sizes:
        out.append(data[at:at + n])
        at += n
    out.append(data[at:])
    return out


DATA = np.random.default_rng(0).integers(0, 256, 300_001, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("sizes", [[], [65_536, 65_536, 65_536], [1, 2, 3], [299_999], [0, 100_000, 0]])
@pytest.mark.parametrize("declared", [True, False])
def test_the_body_is_the_bytes_sent_whatever_the_chunking(sizes, declared):
    chunks = _chunks(DATA, sizes)
    body = _body(chunks, len(DATA) if declared else None)
    assert bytes(body) == DATA
    if len(chunks) > 1:  # assembled: writable, so arrays read from it in place need no copy
        assert not memoryview(body).readonly
        np.frombuffer(body, np.uint8)[:1] = 7
    else:
        assert body is chunks[0]  # one chunk comes back as it is


def test_a_declared_length_is_one_buffer_of_that_length():
    body = _body(_chunks(DATA, [100_000, 100_000]), len(DATA))
    assert isinstance(body, memoryview) and len(body) == len(DATA)
    assert memoryview(body).obj is not None and memoryview(body).nbytes == len(DATA)


def test_more_bytes_than_declared_are_all_kept():
    """The HTTP parser stops at Content-Length, so this cannot come from a socket; the
    body still holds every byte received, in order."""
    body = _body(_chunks(DATA, [1_000, 1_000]), 1_500)
    assert bytes(body) == DATA


def test_fewer_bytes_than_declared_give_what_came():
    body = _body(_chunks(DATA[:5_000], [1_000, 1_000]), 10_000)
    assert bytes(body) == DATA[:5_000]


@pytest.mark.parametrize("declared", [True, False])
def test_a_disconnect_mid_body_is_a_client_disconnect(declared):
    with pytest.raises(ClientDisconnect):
        _body(_chunks(DATA, [1_000, 1_000, 1_000]), len(DATA) if declared else None, disconnect_after=2)


@pytest.mark.parametrize("length", ["", "-5", "12x"])
def test_an_unusable_content_length_falls_back_to_joining(length):
    assert bytes(_body(_chunks(DATA, [50_000, 50_000]), length)) == DATA


def test_multi_chunk_bodies_through_a_server_encode_as_in_process(server):
    """A real `embquant serve`: a msgpack body of 3,000 rows (4.6 MB, many socket reads)
    with Content-Length, and the same body sent with chunked transfer encoding (no
    length): the codes equal the in-process encode's."""
    import msgpack
    import torch

    from embquant import codecs

    x = np.random.default_rng(1).standard_normal((3_000, 384)).astype(np.float32)
    codec = codecs.fit("lloyd", {"bits": 4}, torch.from_numpy(x[:16]))  # data-oblivious: the codec by name
    want, _side = codecs.encode(codec, torch.from_numpy(x))
    payload = msgpack.packb({"scheme": "lloyd", "params": {"bits": 4},
                             "vectors": {"dtype": "float32", "shape": list(x.shape), "data": x.tobytes()}},
                            use_bin_type=True)
    headers = {"content-type": "application/msgpack", "accept": "application/msgpack"}

    def pieces():
        for lo in range(0, len(payload), 70_000):
            yield payload[lo:lo + 70_000]

    for content in (payload, pieces()):
        r = httpx.post(server.url + "/quantize", content=content, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        got = msgpack.unpackb(r.content)
        codes = np.frombuffer(got["codes"]["data"], np.int64).reshape(got["codes"]["shape"])
        assert np.array_equal(codes, want.numpy())
    # the same rows as JSON (base64), 6 MB in many reads
    text = orjson.dumps({"scheme": "lloyd", "params": {"bits": 4}, "vectors": {
        "dtype": "float32", "shape": list(x.shape), "data": base64.b64encode(x.tobytes()).decode()}})
    r = httpx.post(server.url + "/quantize", content=text, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    got = r.json()["codes"]
    assert np.array_equal(np.frombuffer(base64.b64decode(got["data"]), np.int64).reshape(got["shape"]), want.numpy())
