"""Fixtures for the tests on the real node: the node, its metrics pipeline, a client pod."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from tests.cluster import monitoring
from tests.cluster.harness import Cluster
from tests.cluster.realnode import RealNode, joined


@pytest.fixture(scope="package")
def real_node(cluster: Cluster) -> Iterator[RealNode]:
    """The real node, joined to the session's cluster while this package's tests run.

    One per machine (other sessions wait for it), so it is held for this package only, not
    for the whole session: fixtures built on it belong here, package-scoped too.
    """
    with joined(cluster) as node:
        yield node


@pytest.fixture(scope="package")
def metrics_pipeline(
    cluster: Cluster, real_node: RealNode, tmp_path_factory: pytest.TempPathFactory
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


@pytest.fixture(scope="package")
def keda(cluster: Cluster, real_node: RealNode, metrics_pipeline: Any) -> Path:
    """KEDA's operator and metrics server on the real node (external.metrics.k8s.io), reading
    this package's Prometheus; its build folder."""
    bin_dir = monitoring.build("keda")
    monitoring.install_keda(cluster, real_node, bin_dir)
    return bin_dir


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace; deleted (and its pods gone from the node) afterwards."""
    name = cluster.create_namespace(f"real-{uuid4().hex[:8]}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=180s", timeout=200)


@pytest.fixture
def client(real_node: RealNode, ns: str) -> str:
    """A probe client pod on the real node, in the test's namespace."""
    return real_node.client_pod(ns)
