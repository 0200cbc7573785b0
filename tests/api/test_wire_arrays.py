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
