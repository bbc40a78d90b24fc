"""Fixtures for the operator tests: helm, and (cluster tests) the operator run in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from uuid import uuid4

import pytest
from clipserve.bench.server import free_port

from tests.support.cluster.harness import Cluster
from tests.support.rendering import Helm
from tests.support.running import (
    OPERATOR_NS,
    RELEASE,
    REPO,
    OperatorRun,
    operator_objects,
    token_kubeconfig,
)


@pytest.fixture(scope="session")
def helm_bin(helm: Helm) -> str:
    """The path of the pinned helm (the operator runs it itself)."""
    return helm.binary


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, helm_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorRun]:
    """The operator in-process (per module: it sets KUBECONFIG) as the chart's ServiceAccount."""
    objects = operator_objects(helm_bin)
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
        "wait",
        "--for=condition=Established",
        "crd/clipservices.clipserve.io",
        "crd/clipjobs.clipserve.io",
        "--timeout=60s",
    )
    token = cluster.kubectl("create", "token", RELEASE, "-n", OPERATOR_NS, "--duration=6h").strip()
    state = tmp_path_factory.mktemp("operator")
    kubeconfig = token_kubeconfig(cluster, token, state / "kubeconfig")
    # helm through a link the failure tests can take away and put back.
    helm_link = state / "bin" / "helm"
    helm_link.parent.mkdir()
    helm_link.symlink_to(helm_bin)
    run = OperatorRun(
        {
            "KUBECONFIG": kubeconfig,
            "CLIPSERVE_OPERATOR_HELM": str(helm_link),
            "CLIPSERVE_OPERATOR_CHART": str(REPO / "charts/clipserve"),
            "CLIPSERVE_OPERATOR_METRICS_PORT": str(free_port()),
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


@pytest.fixture
def volume(cluster: Cluster, ns: str) -> Iterator[str]:
    """A static PersistentVolume of a storage class of its own (no provisioner here)."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{ns}-weights"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteMany"],
            "storageClassName": ns,
            "hostPath": {"path": f"/tmp/{ns}-weights"},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))
    yield ns
    cluster.kubectl("delete", "pv", f"{ns}-weights", "--wait=false")
