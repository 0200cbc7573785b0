"""The machine a benchmark ran on, for the reports the bench/ scripts write."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_vectors() -> str:
    """The widest x86 vector extension the CPU reports (the compiled kernels' 16-lane
    vectors take one AVX-512 register or two AVX2 ones), or "" elsewhere."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return ""
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""


def nproc() -> int:
    return len(os.sched_getaffinity(0))
