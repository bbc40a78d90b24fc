"""Run a real `clipserve serve` process on a free loopback port, for API tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
# A tiny open_clip architecture (2-layer towers, 32-d embeddings) with random weights: a real
# model through the real code paths, fast enough for CPU tests.
TINY = "Tiny-ViT-T:random"


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server process and how to reach it."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and wait for it to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    *args: str,
    model: str = TINY,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 120,
    port: int | None = None,
) -> Server:
    """Start `clipserve serve` (on `port`, or a free one) and by default wait for /readyz 200."""
    port = port or free_port()
    log_path = Path(tempfile.mkstemp(prefix="clipserve-", suffix=".log")[1])
    cmd = [
        sys.executable,
        "-m",
        "clipserve.cli",
        "serve",
        "--model",
        model,
        "--model-config-dir",
        str(MODEL_CONFIGS),
        "--port",
        str(port),
        "--drain-grace-s",
        "0",
        *args,
    ]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    if wait_ready:
        wait_until_ready(server, timeout)
    return server


def wait_until_ready(server: Server, timeout: float) -> None:
    """Poll /readyz; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited ({server.proc.returncode}):\n{server.log()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log()}")
