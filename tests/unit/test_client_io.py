"""The client's file helpers: Codec.save/load, Encoded.to_bytes/from_bytes, and bulk
quantize (order, bounded in-flight chunks, retries, progress, resume) on a mock
transport."""

from __future__ import annotations

import base64
import json
import os
import struct
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest

import embquant_client as ec
from embquant_client import _core, _models

CODEC = {"format_version": 1, "scheme": "toy", "scheme_version": 1, "dim": 3, "params": {}, "state": {}}
LAYOUT = {"bits": 4, "symbols": 3, "words": 2, "side": 1, "levels": 16, "bits_per_vector": 44}


def encoded(n=5, words=2, side=1, cid="c" * 64):
    rng = np.random.default_rng(n)
    codes = rng.integers(-2**63, 2**63 - 1, size=(n, words), dtype=np.int64)
    sv = rng.standard_normal((n, side)).astype(np.float32) if side else None
    return ec.Encoded(codes=codes, side=sv, codec=CODEC, shape=(n, 3),
                      layout={**LAYOUT, "words": words, "side": side}, codec_id=cid)


# -- Codec.save / load ------------------------------------------------------------------
def test_codec_save_load_round_trip(tmp_path):
    c = ec.Codec(codec=CODEC, layout=LAYOUT, codec_id="a" * 64)
    p = tmp_path / "codec.json"
    c.save(p)
    back = ec.Codec.load(p)
    assert back == c and back.dim == 3
    assert ec.Codec is ec.Fitted
    assert json.loads(p.read_text())["embquant_codec_file"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["codec.json"]  # no temporary left behind


def test_codec_save_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "codec.json"
    ec.Codec(codec=CODEC, layout=LAYOUT).save(p)
    before = p.read_bytes()

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(_models.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        ec.Codec(codec={**CODEC, "dim": 9}, layout=LAYOUT).save(p)
    assert p.read_bytes() == before  # the old file, whole
    assert [f.name for f in tmp_path.iterdir()] == ["codec.json"]


def test_codec_load_accepts_a_bare_codec_dict(tmp_path):
    p = tmp_path / "bare.json"
    p.write_text(json.dumps(CODEC))
    c = ec.Codec.load(p)
    assert c.codec == CODEC and c.layout == {} and c.codec_id is None


@pytest.mark.parametrize("text, msg", [
    ("{not json", "not JSON"),
    ("[1, 2]", "holds no codec"),
    ('{"embquant_codec_file": 2, "codec": {}}', "version 2"),
    ('{"embquant_codec_file": 1, "codec": {"scheme": "x"}}', "holds no codec"),
])
def test_codec_load_rejects_what_is_not_a_codec(tmp_path, text, msg):
    p = tmp_path / "c.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg):
        ec.Codec.load(p)


# -- Encoded.to_bytes / from_bytes --------------------------------------------------------
@pytest.mark.parametrize("words, side", [(2, 1), (6, 0), (1, 12)])
def test_whole_bytes_round_trip(words, side):
    enc = encoded(7, words, side)
    data = enc.to_bytes()
    assert len(data) == 72 + 7 * (8 * words + 4 * side)
    back = ec.Encoded.from_bytes(data)
    assert np.array_equal(back.codes, enc.codes) and back.codes.dtype == np.int64
    if side:
        assert np.array_equal(back.side, enc.side) and back.side.dtype == np.float32
    else:
        assert back.side is None
    assert back.shape == (7, 3) and back.codec_id == enc.codec_id
    assert back.layout["words"] == words and back.layout["symbols"] == 3 and back.layout["bits"] == 4


def test_whole_bytes_layout_is_the_documented_one():
    """Header fields at their documented offsets, then per-row values: int64 words
    little-endian, then float32 side values little-endian."""
    enc = encoded(2, 2, 1)
    data = enc.to_bytes()
    assert data[:8] == b"EMBQCODE"
    version, hsize, bits, _, rows, dim, words, side, symbols = struct.unpack_from("<HHHHQIIII", data, 8)
    assert (version, hsize, bits, rows, dim, words, side, symbols) == (1, 72, 4, 2, 3, 2, 1, 3)
    assert data[40:72] == bytes.fromhex("c" * 64)
    row1 = data[72 + 20:72 + 40]
    assert struct.unpack("<qqf", row1) == (int(enc.codes[1, 0]), int(enc.codes[1, 1]), float(enc.side[1, 0]))


def test_per_row_bytes_round_trip_and_match_the_whole_form():
    enc = encoded(4, 2, 1)
    rows = enc.to_bytes(per_row=True)
    assert len(rows) == 4 and all(len(r) == 20 for r in rows)
    assert b"".join(rows) == enc.to_bytes()[72:]
    codec = ec.Codec(codec=CODEC, layout=enc.layout, codec_id=enc.codec_id)
    back = ec.Encoded.from_bytes(rows[1:3], codec=codec)
    assert np.array_equal(back.codes, enc.codes[1:3]) and np.array_equal(back.side, enc.side[1:3])
    assert back.shape == (2, 3) and back.codec == CODEC
    also = ec.Encoded.from_bytes(enc.row_bytes(), layout=enc.layout, dim=3)
    assert np.array_equal(also.codes, enc.codes)


def test_empty_encoded_round_trips():
    enc = encoded(0, 2, 1)
    back = ec.Encoded.from_bytes(enc.to_bytes())
    assert back.codes.shape == (0, 2) and back.side.shape == (0, 1)


@pytest.mark.parametrize("mangle, msg", [
    (lambda d: d[:50], "too short"),
    (lambda d: d[:-3], "truncated"),
    (lambda d: d + b"\0", "trailing bytes"),
    (lambda d: b"NOTCODES" + d[8:], "not encoded codes"),
    (lambda d: d[:8] + struct.pack("<H", 9) + d[10:], "version 9"),
])
def test_corrupt_whole_bytes_raise_value_error(mangle, msg):
    with pytest.raises(ValueError, match=msg):
        ec.Encoded.from_bytes(mangle(encoded(3).to_bytes()))


def test_bad_per_row_bytes_raise_value_error():
    enc = encoded(3)
    rows = enc.to_bytes(per_row=True)
    with pytest.raises(ValueError, match="row 1 has 19 bytes, the layout's rows are 20"):
        ec.Encoded.from_bytes([rows[0], rows[1][:-1]], layout=enc.layout)
    with pytest.raises(ValueError, match="need the codec's layout"):
        ec.Encoded.from_bytes(rows)
    with pytest.raises(ValueError, match="not bytes"):
        ec.Encoded.from_bytes(["abc"], layout=enc.layout)
    other = ec.Codec(codec=CODEC, layout=LAYOUT, codec_id="d" * 64)
    with pytest.raises(ValueError, match="made with codec c+, not d+"):
        ec.Encoded.from_bytes(enc.to_bytes(), codec=other)
