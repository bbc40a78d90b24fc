"""A real nginx in front of clipserve at /clip/, stripping the prefix as an ingress does."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.server import free_port

NGINX = "/usr/sbin/nginx"
PREFIX = "/clip/"

# Only /clip/ reaches clipserve: a page URL that escapes the prefix gets nginx's 404, as it
# would behind an ingress that serves other apps beside it.
CONFIG = """
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {dir}/access.log;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  client_max_body_size 64m;
  server {{
    listen 127.0.0.1:{port};
    location {prefix} {{
      proxy_pass {backend}/;
      proxy_set_header Host $host;
    }}
  }}
}}
"""


@dataclass
class Proxy:
    """A running nginx and the URL of clipserve behind it (ends with the prefix)."""

    proc: subprocess.Popen[bytes]
    origin: str
    dir: Path

    @property
    def url(self) -> str:
        return self.origin + PREFIX

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_proxy(backend: str, state_dir: Path, timeout: float = 30) -> Proxy:
    """nginx on a free loopback port forwarding /clip/* to `backend`/*."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    conf = state_dir / "nginx.conf"
    # As root, nginx would hand its workers to `nobody`, who cannot enter pytest's 0700 folders.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        CONFIG.format(user=user, dir=state_dir, port=port, prefix=PREFIX, backend=backend)
    )
    proc = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(state_dir), "-e", str(state_dir / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    proxy = Proxy(proc, f"http://127.0.0.1:{port}", state_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(state_dir / 'error.log').read_text()}")
        try:
            if httpx.get(proxy.url + "readyz", timeout=2).status_code == 200:
                return proxy
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proxy.stop()
    raise RuntimeError(f"nginx not forwarding after {timeout}s")
