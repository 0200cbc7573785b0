"""Shared fixtures: seeded RNGs, the devices present, real embeddings."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Servers and workers the tests start warm their CPU kernels up before they are ready, so
# a test never races the compile thread for the process-wide backend (the background
# warm-up, the default, has its own tests: tests/worker/test_kernel_warm_up.py).
os.environ.setdefault("EMBQUANT_KERNEL_WARM_UP", "blocking")


# Without a GPU the CUDA kernels (codecs/kernels/gpu.py) run in Triton's interpreter
# (tests/codecs/test_triton.py). Every @triton.jit function, triton.language's own
# included, is made an interpreted one or not when it is defined, so this is set before
# any module imports triton (bitsandbytes does on import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def available_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


DEVICES = available_devices()


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def minilm() -> np.ndarray:
    """(600, 384) real all-MiniLM-L6-v2 embeddings of real sentences."""
    from tests.support import corpus

    return corpus.minilm(600)


@pytest.fixture(scope="session")
def server():
    """One real `embquant serve` (max_wait_ms=20) for every test module that only sends
    it requests: started once, on first use (tests that need other settings, a signal
    or a crash start their own with `server_factory`, tests/e2e/conftest.py)."""
    pytest.importorskip("embquant")
    from tests.support.server import Server

    s = Server(max_wait_ms=20)
    yield s
    s.stop()
