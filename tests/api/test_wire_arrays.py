"""embquant.api.wire_arrays.from_wire: float inputs to float32, refused exactly where the cast
would not be finite (the checks taken on the input before the cast, and the errstate
path they skip, give the same answers)."""

import numpy as np
import pytest

from embquant.api.wire_arrays import from_wire
from embquant.errors import InvalidInput

F32_MAX = float(np.finfo(np.float32).max)
# the largest float64 that still rounds to float32's largest finite value, and the next
ROUNDS_DOWN = np.nextafter(F32_MAX + 2.0**103, 0.0)  # half an ulp of float32 at the top, less a bit


@pytest.mark.parametrize("value", [0.0, 1.5, -2.25e-40, F32_MAX, -F32_MAX, ROUNDS_DOWN, -ROUNDS_DOWN, 1e38])
def test_finite_after_the_cast_is_accepted(value):
    out = from_wire([[value, 1.0]], "vectors", "float")
    assert out.dtype == np.float32
    assert out[0, 0] == np.float32(value) and np.isfinite(out[0, 0])
    assert out.flags.writeable


@pytest.mark.parametrize("value", [1e39, -1e39, F32_MAX + 2.0**104, float("inf"), float("-inf"), float("nan")])
def test_beyond_float32_or_not_finite_is_refused_with_its_index(value):
    with pytest.raises(InvalidInput, match=r"vectors: NaN or Inf .* at index \[1, 2\]"):
        from_wire([[0.0, 1.0, 2.0], [3.0, 4.0, value]], "vectors", "float")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64, np.int32])
def test_every_numeric_dtype_gives_the_same_float32(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 7)) * 100).astype(dtype)
    out = from_wire(x.tolist(), "vectors", "float")
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_base64_float64_beyond_float32_is_refused():
    import base64

    raw = np.array([[1.0, 1e300]], "<f8")
    obj = {"dtype": "float64", "shape": [1, 2], "data": base64.b64encode(raw.tobytes()).decode()}
    with pytest.raises(InvalidInput, match=r"at index \[0, 1\]"):
        from_wire(obj, "vectors", "float")


@pytest.mark.parametrize("rows", [1, 64])  # at or under the summed check's size, and over it
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_float32_bytes_not_finite_are_refused_with_their_index(rows, value):
    x = np.ones((rows, 384), np.float32)
    x[rows - 1, 7] = value
    obj = {"dtype": "float32", "shape": [rows, 384], "data": x.tobytes()}
    with pytest.raises(InvalidInput, match=rf"vectors: NaN or Inf .* at index \[{rows - 1}, 7\]"):
        from_wire(obj, "vectors", "float")


def test_float32_bytes_near_the_top_of_the_range_are_finite():
    """float32's largest values summed in float64 stay finite (no false refusal)."""
    x = np.full((64, 384), np.finfo(np.float32).max, np.float32)
    out = from_wire({"dtype": "float32", "shape": [64, 384], "data": x.tobytes()}, "vectors", "float")
    np.testing.assert_array_equal(out, x)


def test_float32_bytes_come_back_writable_and_copied_only_when_read_only():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ro = from_wire({"dtype": "float32", "shape": [3, 4], "data": x.tobytes()}, "vectors", "float")
    assert ro.flags.writeable  # bytes are read-only: copied
    rw_buf = bytearray(x.tobytes())
    rw = from_wire({"dtype": "float32", "shape": [3, 4], "data": rw_buf}, "vectors", "float")
    assert rw.flags.writeable and np.shares_memory(rw, np.frombuffer(rw_buf, np.float32))  # no copy
    np.testing.assert_array_equal(ro, x)
    np.testing.assert_array_equal(rw, x)


@pytest.mark.parametrize("arr", [
    np.arange(6, dtype=">i8").reshape(2, 3),                # big-endian: converted
    np.arange(6, dtype=np.float32).reshape(3, 2).T,          # not contiguous: made so
    np.arange(6, dtype=np.int64).reshape(2, 3),              # the common case: itself
    np.arange(6, dtype=np.uint8),
])
def test_array_objects_carry_little_endian_bytes_and_the_dtype_name(arr):
    from embquant.arrays import from_object, to_b64, to_bin

    for obj in (to_bin(arr), to_b64(arr)):
        assert obj["dtype"] == arr.dtype.newbyteorder("=").name
        back = from_object(obj, "x")
        np.testing.assert_array_equal(back, arr)
        assert back.dtype == arr.dtype.newbyteorder("=")
    assert bytes(to_bin(arr)["data"]) == np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
