"""A real `clipserve gate` process on a free loopback port; an upstream that drops a kept-alive
connection the moment its next request arrives; and a port whose connections are never made
(what a firewall that drops packets to a Service without endpoints looks like), for the tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from clipserve.bench.scrape import MetricsPage

from tests.support.server import free_port


class GateProcess:
    """A `clipserve gate` child process on a free loopback port."""

    def __init__(self, backend: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_port = httpx.URL(backend).port
        self.log = Path(tempfile.mkstemp(prefix="clipserve-gate-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "clipserve.cli", "gate", "--backend", backend]
        cmd += ["--port", str(self.port), *args]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
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
        return MetricsPage.get(self.url).by("outcome", "clipserve_gate_requests_total")

    def servers_reachable(self) -> float:
        """clipserve_gate_servers_reachable: 1 while the gate passes requests on, 0 while not."""
        return MetricsPage.get(self.url).value("clipserve_gate_servers_reachable")

    def upstream_ports(self) -> set[int]:
        """Local ports of the gate's kept-alive connections to its backend (one per connection):
        those open in two looks 0.2 s apart, so not the gate's probe of /readyz, whose own
        connection lasts a few milliseconds twice a second."""
        first = self._established()
        time.sleep(0.2)
        return first & self._established()

    def _established(self) -> set[int]:
        return {
            c.laddr.port
            for c in psutil.Process(self.proc.pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == self.backend_port and c.status == "ESTABLISHED"
        }

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class DroppingUpstream:
    """An HTTP/1.1 server that answers the first request of each connection (200, kept alive) and
    closes the connection, unanswered, when a second one arrives on it: what a client sees when
    it sends on a kept-alive connection just as the server times it out. `seen` lists each
    request as (connection number, method, path)."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[tuple[int, str, str]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            number += 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn, conn.makefile("rb") as reader:
            for answered in (False, True):
                head = reader.readline().split()
                if not head:
                    return
                headers = {}
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                if headers.get(b"transfer-encoding") == b"chunked":
                    while size := int(reader.readline(), 16):
                        reader.read(size + 2)  # the chunk and its CRLF
                    reader.readline()  # the CRLF after the last chunk
                else:
                    reader.read(int(headers.get(b"content-length", 0)))
                self.seen.append((number, head[0].decode(), head[1].decode()))
                if answered:
                    return  # the kept-alive connection's second request: closed, unanswered
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    def close(self) -> None:
        # shutdown wakes the accept() blocked on the socket, which would otherwise keep it
        # listening (the port taken) after close.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Blackhole:
    """A loopback port that takes no connection: its listener's queue is full and never
    accepted, so the kernel drops every further SYN, and a connect waits until it times out,
    as it does where a node's firewall drops packets to a Service with no endpoint."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port), backlog=0)
        self.url = f"http://127.0.0.1:{port}"
        self.held: list[socket.socket] = []
        while True:  # queue connections until one is not taken: the queue is full
            conn = socket.socket()
            conn.settimeout(0.5)
            try:
                conn.connect(("127.0.0.1", port))
            except TimeoutError:
                conn.close()
                return
            self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()
