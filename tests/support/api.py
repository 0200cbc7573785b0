"""Wire helpers and the error-body assertion the API tests share."""

from __future__ import annotations

import base64

import numpy as np


def b64(a: np.ndarray) -> dict:
    """A numpy array in the service's base64 wire form."""
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def from_b64(o: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(o["data"]), dtype=o["dtype"]).reshape(o["shape"])


def err(r, status: int, type_: str, *fragments: str) -> None:
    """The answer is the one error body, with this status and type, and its message names every fragment."""
    assert r.status_code == status, r.text[:500]
    e = r.json()["error"]
    assert e["type"] == type_, e
    for f in fragments:
        assert f in e["message"], e["message"]
