"""The CPU image built from a clean clone of the repository (its committed HEAD) and
served, by docker/smoke.sh: non-root user with a home, no secret in its environment,
ready in seconds with the kernels compiled at build time, a client round trip equal to
the codecs in-process, HEALTHCHECK healthy, a drained exit on SIGTERM. Minutes: marked slow, and skipped where no Docker engine answers (on the
project's machines, start one with ../shared/tools/docker-standin.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _docker_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _docker_runs(), reason="no Docker engine answers `docker info`")
def test_cpu_image_from_a_clean_clone_serves():
    r = subprocess.run(["bash", str(ROOT / "docker" / "smoke.sh"), "cpu", str(ROOT)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "smoke OK" in r.stdout
    assert "equal to the codecs in-process" in r.stdout
