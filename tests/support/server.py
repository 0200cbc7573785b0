"""A real `embquant serve` on a free 127.0.0.1 port, run as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = {**os.environ, "EMBQUANT_HOST": "127.0.0.1", "EMBQUANT_PORT": str(self.port), "EMBQUANT_DEVICE": "cpu"}
        e.update({f"EMBQUANT_{k.upper()}": str(v) for k, v in env.items()})
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "embquant.cli", "serve"], env=e,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300  # a first start after a kernel change compiles them
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become ready in 300 s")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")
