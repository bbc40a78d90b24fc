"""A real `clipserve gate` process on a free loopback port, for the tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.service.server import free_port


class GateProcess:
    """A `clipserve gate` child process on a free loopback port."""

    def __init__(self, backend: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="clipserve-gate-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "clipserve.cli", "gate", "--backend", backend]
        cmd += ["--port", str(self.port), *args]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self._up():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def requests(self) -> dict[str, float]:
        """clipserve_gate_requests_total by outcome, from the gate's own /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return {
            s.labels["outcome"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "clipserve_gate_requests_total"
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
