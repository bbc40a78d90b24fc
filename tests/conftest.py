"""Fixtures shared across test areas (each area adds its own in its folder's conftest.py)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chart.rendering import Helm, install_tool
from tests.cluster import monitoring, realnode
from tests.cluster.harness import Cluster, running_cluster


@pytest.fixture(scope="session")
def helm() -> Helm:
    """The pinned helm from scripts/install-helm.sh (cached after the first run)."""
    return Helm(install_tool("install-helm.sh"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One real control plane (2 GPU + 2 CPU kwok nodes) for the session; stopped at its end."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="session")
def real_node(cluster: Cluster) -> Iterator[realnode.RealNode]:
    """A real node (kubelet, containerd, kube-proxy, CoreDNS) joined to the session's cluster.

    One per machine: a session that needs it waits while another session's node runs. Stopped,
    and the machine restored, at the session's end.
    """
    node = realnode.join(cluster)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def metrics_pipeline(
    cluster: Cluster, real_node: realnode.RealNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[monitoring.Prometheus]:
    """Prometheus scraping ClipService pods on the real node, and prometheus-adapter serving
    their queue depth to HPAs (custom.metrics.k8s.io); stopped before the node."""
    prometheus = monitoring.build("prometheus") / "prometheus"
    adapter = monitoring.build("prometheus-adapter")
    prom = monitoring.start_prometheus(cluster, prometheus, tmp_path_factory.mktemp("prometheus"))
    try:
        monitoring.install_prometheus_adapter(cluster, real_node, adapter)
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="session")
def keda(cluster: Cluster, real_node: realnode.RealNode, metrics_pipeline: Any) -> Path:
    """KEDA's operator and metrics server on the real node (external.metrics.k8s.io), reading
    the session's Prometheus; its build folder."""
    bin_dir = monitoring.build("keda")
    monitoring.install_keda(cluster, real_node, bin_dir)
    return bin_dir


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """On a failing test that used the cluster, point at the control-plane logs."""
    report: pytest.TestReport = yield
    args = getattr(item, "funcargs", {})
    running, node = args.get("cluster"), args.get("real_node")
    if report.failed and isinstance(running, Cluster):
        report.sections.append(("cluster", f"control-plane logs: {running.state_dir / 'logs'}"))
    if report.failed and isinstance(node, realnode.RealNode):
        report.sections.append(("real node", f"real node logs: {node.dirs.logs}"))
    return report
