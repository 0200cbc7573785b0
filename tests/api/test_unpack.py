"""`api.unpack`: msgpack bodies with large bins read in place give what
``msgpack.unpackb`` gives, and hand everything else to it."""

from __future__ import annotations

import math
import random

import msgpack
import numpy as np
import pytest

from embquant.api import bodies, unpack
from embquant.api.wire_arrays import from_wire
from embquant.errors import InvalidInput


def reference(body):
    return msgpack.unpackb(body, raw=False, strict_map_key=True)


def as_bytes(obj):
    """obj with memoryviews turned into bytes, to compare with msgpack's answer."""
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, dict):
        return {k: as_bytes(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_bytes(v) for v in obj]
    return obj


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN and types compared too (1 and 1.0 and True differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "neg", "big", "float", "str", "bin", "none", "bool"]
    if depth < 4:
        kinds += ["list", "map"]
    k = rng.choice(kinds)
    if k == "int":
        return rng.choice([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
    if k == "neg":
        return rng.choice([-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)])
    if k == "big":
        return rng.randrange(-(2**63), 2**64)
    if k == "float":
        return rng.choice([0.0, -0.0, 1.5, float("inf"), float("nan"), rng.random() * 1e30])
    if k == "str":
        n = rng.choice([0, 1, 31, 32, 255, 256, 70000])
        return "".join(rng.choices("aé€😀z", k=n))
    if k == "bin":
        n = rng.choice([0, 1, 255, 256, 65535, unpack.VIEW_BYTES, 70000])
        return rng.randbytes(n)
    if k == "none":
        return None
    if k == "bool":
        return rng.choice([True, False])
    if k == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 15, 16, 40]))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.choice([0, 1, 15, 16, 20]))}


@pytest.mark.parametrize("seed", range(40))
def test_random_objects_match_msgpack(seed):
    rng = random.Random(seed)
    obj = {"vectors": random_value(rng), "more": [random_value(rng) for _ in range(3)]}
    for packed in (msgpack.packb(obj, use_bin_type=True), msgpack.packb(obj, use_bin_type=True, use_single_float=True)):
        try:
            got = unpack.unpack(packed)
        except unpack.Unhandled:
            continue  # too many items: msgpack decides (checked below)
        assert same(as_bytes(got), reference(packed))


def test_large_bins_are_views_small_ones_bytes():
    big = np.arange(unpack.VIEW_BYTES // 4, dtype=np.float32)
    body = bytearray(msgpack.packb({"vectors": {"dtype": "float32", "shape": [1, big.size], "data": big.tobytes()},
                                    "codec_id": "x", "small": b"abc"}, use_bin_type=True))
    got = unpack.unpack(body)
    assert isinstance(got["vectors"]["data"], memoryview)
    assert type(got["small"]) is bytes and got["small"] == b"abc"
    # read in place: the array shares the body's memory and is writable without a copy
    arr = from_wire(got["vectors"], "vectors", "float")
    assert np.array_equal(arr[0], big)
    assert arr.flags.writeable and np.shares_memory(arr, np.frombuffer(body, np.uint8))


def test_every_type_byte_of_the_spec():
    # one of each format (ext aside), sizes at the edges of each encoding
    obj = {
        "fixint": [0, 127], "negfix": [-1, -32], "u8": 200, "u16": 60000, "u32": 4_000_000_000,
        "u64": 2**64 - 1, "i8": -100, "i16": -30000, "i32": -2_000_000_000, "i64": -(2**63),
        "f64": 0.1, "nil": None, "t": True, "f": False,
        "str8": "x" * 200, "str16": "y" * 60000, "str32": "z" * 70000,
        "bin8": b"1" * 200, "bin16": b"2" * 60000, "bin32": b"3" * 70000,
        "arr16": list(range(20)), "map16": {f"m{i}": i for i in range(20)}, "bytes key": {b"k": 1},
    }
    body = msgpack.packb(obj, use_bin_type=True)
    assert same(as_bytes(unpack.unpack(body)), reference(body))
    body = msgpack.packb({"f32": 0.1}, use_single_float=True)
    assert same(unpack.unpack(body), reference(body))


@pytest.mark.parametrize("body", [
    msgpack.packb({"a": msgpack.ExtType(5, b"xyz")}),          # ext types
    msgpack.packb({"a": 1}) + b"\x00",                        # trailing bytes
    msgpack.packb({"a": "x" * 100})[:-10],                    # truncated
    msgpack.packb({1: "int key"}, use_bin_type=True),        # strict_map_key
    b"\x81\xa1a\xc1",                                         # the unused type byte
    b"\x81\xa1a\xa2\xff\xfe",                                 # invalid UTF-8
    msgpack.packb({"a": list(range(unpack.MAX_ITEMS + 1))}),  # too many items
    b"\x91" * (unpack.MAX_DEPTH + 5) + b"\x00",               # deep
    b"\x81\x92\x01\x02\x03",                                # a list as key
])
def test_what_it_does_not_handle_goes_to_msgpack(body):
    with pytest.raises(unpack.Unhandled):
        unpack.unpack(body)


def test_bodies_loads_same_answers_and_errors_as_before():
    big = b"\x01" * (unpack.VIEW_BYTES + 8)
    good = msgpack.packb({"a": big, "b": [1, 2.5, "c"]}, use_bin_type=True)
    got = bodies.loads(bytearray(good), "application/msgpack")
    assert same(as_bytes(got), reference(good))
    # a large body msgpack itself refuses: the same 400 as without the walker
    bad = good + b"\xc1"
    with pytest.raises(InvalidInput, match="not valid msgpack"):
        bodies.loads(bad, "application/msgpack")
    deep = b"\x91" * 100_000 + b"\x00"
    with pytest.raises(InvalidInput, match="not valid msgpack: nested too deep"):
        bodies.loads(deep, "application/msgpack")
    ext = msgpack.packb({"a": msgpack.ExtType(5, big)})
    assert bodies.loads(ext, "application/msgpack") == {"a": msgpack.ExtType(5, big)}
