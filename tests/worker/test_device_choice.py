"""EMBQUANT_DEVICE: `cuda` where CUDA cannot run stops start-up with one error saying
why; `auto` falls back to the CPU, logs why, and /readyz says so. On this machine's
own torch first; then the reasons a CUDA build gives (torch's own messages, which a
CPU-only machine cannot produce) through a stand-in for torch.cuda."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from fastapi.testclient import TestClient

from embquant.api import create_app
from embquant.settings import Settings
from embquant.worker import device as dev

CPU_BUILD = torch.version.cuda is None
USABLE = dev.cuda_problem() is None


@pytest.fixture
def fresh_probe():
    dev.cuda_problem.cache_clear()
    yield
    dev.cuda_problem.cache_clear()


@pytest.mark.skipif(USABLE, reason="CUDA runs here")
def test_cuda_without_cuda_is_one_clear_error():
    with pytest.raises(dev.DeviceUnavailable) as e:
        dev.pick_device("cuda")
    msg = str(e.value)
    assert msg.startswith("EMBQUANT_DEVICE=cuda, but CUDA cannot run here: ")
    assert "EMBQUANT_DEVICE=auto or cpu" in msg
    if CPU_BUILD:
        assert f"torch {torch.__version__} is built without CUDA" in msg and "install a CUDA build of torch" in msg


@pytest.mark.skipif(USABLE, reason="CUDA runs here")
def test_auto_falls_back_to_the_cpu_and_says_why(caplog):
    caplog.set_level(logging.INFO, logger="embquant.worker")
    assert dev.pick_device("auto") == torch.device("cpu")
    said = [r.getMessage() for r in caplog.records if "EMBQUANT_DEVICE=auto" in r.getMessage()]
    assert said == [f"EMBQUANT_DEVICE=auto: running on the CPU: {dev.cuda_problem()}"]
    with TestClient(create_app(Settings(device="auto"))) as c:
        r = c.get("/readyz").json()
    assert r["device"] == "cpu" and r["device_requested"] == "auto" and r["device_note"] == dev.cuda_problem()
    with TestClient(create_app(Settings(device="cpu"))) as c:
        r = c.get("/readyz").json()
    assert r["device"] == "cpu" and r["device_requested"] == "cpu" and r["device_note"] is None


@pytest.mark.skipif(USABLE, reason="CUDA runs here")
def test_serve_with_cuda_exits_with_the_message_and_no_traceback():
    env = {**os.environ, "EMBQUANT_DEVICE": "cuda", "EMBQUANT_PORT": "0"}
    p = subprocess.run([sys.executable, "-m", "embquant.cli", "serve"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("embquant: EMBQUANT_DEVICE=cuda, but CUDA cannot run here: "), p.stderr
    assert "Traceback" not in p.stderr


# -- a CUDA build's reasons, through a stand-in -------------------------------------------

class FakeCuda:
    """torch.cuda as a CUDA build shows it on a machine where it cannot run."""

    def __init__(self, init_error=None, count=1, op_error=None):
        self.init_error, self.count, self.op_error = init_error, count, op_error

    def init(self):
        if self.init_error is not None:
            raise self.init_error

    def device_count(self):
        return self.count

    def get_device_capability(self, i):
        return (6, 0)

    def get_device_name(self, i):
        return "Tesla P100-PCIE-16GB"

    def get_arch_list(self):
        return ["sm_75", "sm_80", "sm_90"]


def with_cuda_build(monkeypatch, fake: FakeCuda):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    for name in ("init", "device_count", "get_device_capability", "get_device_name", "get_arch_list"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    if fake.op_error is not None:
        def ones(*a, **k):
            raise fake.op_error
        monkeypatch.setattr(torch, "ones", ones)


# torch's own words (torch/csrc/cuda/Module.cpp, c10/cuda/CUDAFunctions.cpp)
DRIVER_TOO_OLD = RuntimeError(
    "The NVIDIA driver on your system is too old (found version 12040). Please update your GPU driver by "
    "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx "
    "Alternatively, go to: https://pytorch.org to install a PyTorch version that has been compiled with your "
    "version of the CUDA driver.")
NO_DRIVER = RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
                         "installed a driver from http://www.nvidia.com/Download/index.aspx")
NO_KERNEL = RuntimeError("CUDA error: no kernel image is available for execution on the device")


@pytest.mark.parametrize("fake, words", [
    (FakeCuda(init_error=DRIVER_TOO_OLD), ["built for CUDA 13.0", "cannot initialise CUDA",
                                            "driver on your system is too old (found version 12040)"]),
    (FakeCuda(init_error=NO_DRIVER), ["Found no NVIDIA driver"]),
    (FakeCuda(count=0), ["sees no CUDA device", "CUDA_VISIBLE_DEVICES=''"]),
    (FakeCuda(op_error=NO_KERNEL), ["cannot run on Tesla P100-PCIE-16GB (compute capability 6.0",
                                     "kernels for sm_75, sm_80, sm_90", "no kernel image is available"]),
])
def test_a_cuda_builds_reasons(monkeypatch, fresh_probe, caplog, fake, words):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with_cuda_build(monkeypatch, fake)
    with pytest.raises(dev.DeviceUnavailable) as e:
        dev.pick_device("cuda")
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    assert "give it a driver for this CUDA line" in msg and "\n" not in msg
    caplog.set_level(logging.WARNING, logger="embquant.worker")
    assert dev.pick_device("auto") == torch.device("cpu")
    assert any(r.levelno == logging.WARNING and words[-1] in r.getMessage() for r in caplog.records)
