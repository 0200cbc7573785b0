"""The README's examples run as pasted (against a real server on a free port)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_example(server):
    (cmd,) = [b for b in blocks("sh") if b.lstrip().startswith("curl")]
    out = subprocess.run(["bash", "-c", cmd.replace("http://127.0.0.1:8000", server.url)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    body = json.loads(out)
    assert body["codes"] == [[59960], [9118]]
    assert body["shape"] == [2, 4] and body["quality"]["mean_cosine"] > 0.99
    assert body["side"] == [[0.12857142], [0.057142857]]  # float32, shortest exact form
    assert '"codes":[[59960],[9118]],"side":[[0.12857142],[0.057142857]]' in README  # the answer it shows


def test_client_example(server):
    (code,) = [b for b in blocks("python") if "from embquant_client import Client" in b]
    out = subprocess.run([sys.executable, "-c", code.replace("http://127.0.0.1:8000", server.url)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("(1000, 24) int64")
    assert 0 < float(lines[-1]) < 0.02
