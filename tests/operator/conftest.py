"""Fixtures for the operator tests: helm, and (cluster tests) the operator run in-process."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest
import yaml
from kopf.testing import KopfRunner

from tests.cluster.harness import Cluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """The pinned helm from scripts/install-helm.sh (its last stdout line is the path)."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts/install-helm.sh")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


# --- cluster tests: the operator in-process, as the chart's ServiceAccount ---------------------


T = TypeVar("T")
OPERATOR_NS = "clipserve-system"
RELEASE = "clipserve-operator"
# Generous limits for a shared 2-core machine; they bound a wait, they do not measure speed.
WAIT_S = float(os.environ.get("CLIPSERVE_TEST_WAIT_S", "90"))


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_S) -> T:
    """Poll probe() until it returns something truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(url: str) -> tuple[int, str]:
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
        self.liveness_port = _free_port()
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
        return _http_get(f"http://127.0.0.1:{port}{path}")

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample on /metrics (0 when absent)."""
        _, text = self.get("metrics", "/metrics")
        key = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(key + " "):
                return float(line.split()[-1])
        return 0.0


def _operator_objects(helm_bin: str) -> list[dict[str, Any]]:
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


def _token_kubeconfig(cluster: Cluster, token: str, path: Path) -> str:
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


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, helm_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorRun]:
    """The operator in-process (per module: it sets KUBECONFIG) as the chart's ServiceAccount."""
    objects = _operator_objects(helm_bin)
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=cluster.kubectl("create", "namespace", OPERATOR_NS, "--dry-run=client", "-o", "yaml"),
    )
    cluster.kubectl(
        "apply", "--server-side", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects)
    )
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/clipservices.clipserve.io", "--timeout=60s"
    )
    token = cluster.kubectl("create", "token", RELEASE, "-n", OPERATOR_NS, "--duration=6h").strip()
    state = tmp_path_factory.mktemp("operator")
    kubeconfig = _token_kubeconfig(cluster, token, state / "kubeconfig")
    # helm through a link the failure tests can take away and put back.
    helm_link = state / "bin" / "helm"
    helm_link.parent.mkdir()
    helm_link.symlink_to(helm_bin)
    run = OperatorRun(
        {
            "KUBECONFIG": kubeconfig,
            "CLIPSERVE_OPERATOR_HELM": str(helm_link),
            "CLIPSERVE_OPERATOR_CHART": str(REPO / "charts/clipserve"),
            "CLIPSERVE_OPERATOR_METRICS_PORT": str(_free_port()),
            "CLIPSERVE_OPERATOR_RETRY_DELAY_S": "1",
        }
    )
    run.start()
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture
def running_operator(operator: OperatorRun) -> OperatorRun:
    """The operator, restarted if an earlier test left it stopped."""
    if not operator.running:
        operator.start()
    return operator


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test; deleted afterwards."""
    name = f"op-{uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")
