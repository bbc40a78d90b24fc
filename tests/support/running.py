"""The operator run in-process for the cluster tests, as the chart's ServiceAccount, and how
the tests wait on it (fixtures in conftest.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from clipserve.bench.server import free_port
from kopf.testing import KopfRunner

from tests.support.cluster.harness import Cluster
from tests.support.polling import eventually

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")
OPERATOR_NS = "clipserve-system"
RELEASE = "clipserve-operator"
# Generous limits for a shared 2-core machine; they bound a wait, they do not measure speed.
WAIT_S = float(os.environ.get("CLIPSERVE_TEST_WAIT_S", "90"))


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    """Poll probe() until it returns something truthy (tests.support.polling, at the operator's
    pace)."""
    return eventually(probe, what, timeout, every_s=0.3)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except OSError as exc:
        return 0, repr(exc)


class CollectingHandler(logging.Handler):
    """Keeps the operator's warnings and errors, so tests can assert that none was Forbidden."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class OperatorRun:
    """Starts and stops the operator in this process (kopf's KopfRunner), as its ServiceAccount."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.liveness_port = free_port()
        self.metrics_port = int(env["CLIPSERVE_OPERATOR_METRICS_PORT"])
        self.log = CollectingHandler()
        self._runner: KopfRunner | None = None
        self._saved: dict[str, str | None] = {}

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._runner is not None

    def start(self) -> None:
        """Run the operator until stop(); returns once its liveness endpoint answers."""
        assert self._runner is None
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)  # the operator thread reads KUBECONFIG and its settings
        for name in ("clipserve_operator", "kopf"):
            logging.getLogger(name).addHandler(self.log)
        self._runner = KopfRunner(
            [
                "run",
                "-A",
                "--standalone",
                "--liveness",
                f"http://127.0.0.1:{self.liveness_port}/healthz",
                "-m",
                "clipserve_operator.handlers",
            ],
            timeout=60,
        )
        self._runner.__enter__()
        wait_for("operator liveness", lambda: self.get("liveness", "/healthz")[0] == 200)

    def stop(self) -> None:
        """Stop the operator (its reconciles are cancelled; nothing else is cleaned up)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            runner.__exit__(None, None, None)
        finally:
            for name in ("clipserve_operator", "kopf"):
                logging.getLogger(name).removeHandler(self.log)
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def get(self, which: str, path: str) -> tuple[int, str]:
        """GET from the liveness or metrics port."""
        port = self.liveness_port if which == "liveness" else self.metrics_port
        return http_get(f"http://127.0.0.1:{port}{path}")

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample on /metrics (0 when absent)."""
        _, text = self.get("metrics", "/metrics")
        key = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0


def operator_objects(helm_bin: str) -> list[dict[str, Any]]:
    """The operator chart's CRD, ServiceAccount and RBAC (its Deployment is replaced by us)."""
    out = subprocess.run(
        [
            helm_bin,
            "template",
            RELEASE,
            str(REPO / "charts/clipserve-operator"),
            "-n",
            OPERATOR_NS,
            "--include-crds",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    keep = {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    return [d for d in yaml.safe_load_all(out) if d and d["kind"] in keep]


def token_kubeconfig(cluster: Cluster, token: str, path: Path) -> str:
    """A kubeconfig for the operator's ServiceAccount token (same server and CA as admin)."""
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)
