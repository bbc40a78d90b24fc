"""A `clipserve serve` child process on a free loopback port: the one launcher shared by the
bench, the tests and scripts/soak.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports nothing listens on right now (the kernel picks them, all bound
    at once so none is picked twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    return free_ports(1)[0]


@dataclass
class ServerProcess:
    """A running server process, how to reach it, and where it logs."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def client(self, **kw: object) -> httpx.Client:
        """An HTTP client for this server (60 s timeout unless given)."""
        return httpx.Client(base_url=self.url, **{"timeout": 60, **kw})  # type: ignore[arg-type]

    def log(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, int]:
        """Current and peak resident memory of the server, in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {
            k: int(v.split()[0]) * 1024
            for k, v in (line.split(":", 1) for line in status.splitlines())
            if k in ("VmRSS", "VmHWM")
        }
        return {"rss_bytes": kb["VmRSS"], "peak_rss_bytes": kb["VmHWM"]}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and wait for it to exit (killed after `timeout`); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    model: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    wait_ready: bool = True,
    timeout: float = 300,
    port: int | None = None,
) -> ServerProcess:
    """Start `clipserve serve --model MODEL ARGS...` on `port` (or a free one) and, by default,
    wait until /readyz is 200.

    It drains without a grace period (--drain-grace-s 0: nothing routes to it but the caller)
    and logs to `log`, or to a temporary file.
    """
    port = port or free_port()
    log_path = log or Path(tempfile.mkstemp(prefix="clipserve-", suffix=".log")[1])
    cmd = [
        sys.executable,
        "-m",
        "clipserve.cli",
        "serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--drain-grace-s",
        "0",
        *args,
    ]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    if wait_ready:
        wait_until_ready(server, timeout)
    return server


def wait_until_ready(server: ServerProcess, timeout: float) -> None:
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
