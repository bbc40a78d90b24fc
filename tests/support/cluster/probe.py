"""Steady request streams from a client pod on the real node (`probe load` via kubectl exec)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from uuid import uuid4

from tests.support.cluster.harness import KubectlError
from tests.support.cluster.realnode import RealNode
from tests.support.polling import eventually


@dataclass(frozen=True)
class Result:
    """One request of a load run, as the client saw it."""

    worker: int
    start: float  # unix seconds when it was sent
    ms: float
    status: int  # 0 when no response came back
    model: str  # the X-Clip-Model header
    items: int  # elements of a JSON array body, -1 for any other body
    error: str = ""

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300


class LoadRun:
    """POST a JSON body to url from a client pod, steadily, until stop() (or the block's end)."""

    def __init__(
        self,
        node: RealNode,
        namespace: str,
        pod: str,
        url: str,
        body: str,
        *,
        workers: int = 2,
        interval_ms: int = 100,
        keepalive: bool = True,
    ) -> None:
        self.node, self.namespace, self.pod = node, namespace, pod
        self.stop_file = f"/tmp/stop-{uuid4().hex[:8]}"
        flags = [
            f"-workers={workers}",
            f"-interval={interval_ms}ms",
            f"-stop={self.stop_file}",
            f"-keepalive={str(keepalive).lower()}",
        ]
        # A ClipService turns Ready with its pods, and kube-proxy programs their endpoints a
        # moment later: a request in between is refused (seen: 7 refusals in the first 0.1 s).
        # The stream starts once the Service answers, so what it counts is the run's own doing.
        base = url.rsplit("/", 1)[0]
        eventually(
            lambda: node.exec(namespace, pod, "/probe", "get", f"{base}/readyz") or True,
            f"{base}/readyz to answer through its Service",
            120,
            not_yet=(KubectlError,),
        )
        cluster = node.cluster
        cmd = [
            str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}",
            "exec", "-n", namespace, pod, "--", "/probe", "load", *flags, url, body,
        ]  # fmt: skip
        self.results: list[Result] = []
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stopped = False

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.results.append(Result(**json.loads(line)))

    def wait_for(self, count: int, timeout_s: float = 120) -> None:
        """Block until count requests have been answered (the stream is flowing)."""
        deadline = time.monotonic() + timeout_s
        while len(self.results) < count:
            if self._proc.poll() is not None:
                raise AssertionError(f"load client exited: {self._stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(self.results)} of {count} requests in {timeout_s} s"
                )
            time.sleep(0.2)

    def _stderr(self) -> str:
        assert self._proc.stderr is not None
        return self._proc.stderr.read().strip()

    def stop(self) -> list[Result]:
        """End the run (requests in flight finish) and return every result."""
        if not self._stopped:
            self._stopped = True
            self.node.exec(self.namespace, self.pod, "/probe", "touch", self.stop_file)
            try:
                code = self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                raise
            self._reader.join(timeout=10)
            if code != 0:
                raise AssertionError(f"load client exited {code}: {self._stderr()}")
        return self.results

    def __enter__(self) -> LoadRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._stopped:
            try:
                self.stop()
            except Exception:
                self._proc.kill()
                if exc is None:
                    raise
