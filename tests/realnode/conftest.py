"""Fixtures for the tests on the real node: the node, its images and metrics, the operator."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml

from tests.support.clipservices import fully_ready
from tests.support.cluster import monitoring
from tests.support.cluster.harness import REPO, Cluster
from tests.support.cluster.node_config import POOL_LABEL, TOLERATION
from tests.support.cluster.node_images import import_chart_images
from tests.support.cluster.node_join import joined
from tests.support.cluster.probe import Result
from tests.support.cluster.realnode import RealNode, cache_root
from tests.support.polling import eventually
from tests.support.rendering import Helm
from tests.support.volumes import Volume

OPERATOR_NS = "clipserve-real"
# Not the in-process tests' release name: both install cluster-wide RBAC named after it.
OPERATOR_RELEASE = "clipserve-op-real"
# Bounds on waits for model loads on a shared 2-core machine; they measure nothing.
LOAD_S = 600
# Models the pods load: random weights (no download), small enough for a shared 2-core machine.
A, B = "ViT-B-32:random", "ViT-B-16:random"


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


@pytest.fixture(scope="package")
def node_images(real_node: RealNode) -> list[str]:
    """The service and operator images (scripts/build-images.sh) in the node's containerd."""
    return import_chart_images(real_node)


# Every test here runs pods on the real node; all but test_node.py also install charts.
NODE_MARKS = [
    pytest.mark.cluster,
    pytest.mark.realnode,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
]
CHART_MARKS = [*NODE_MARKS, pytest.mark.helm]
# What a test's server pod asks for: a sliver of the 2 cores, room for a small model.
SMALL = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}


def pinned_values() -> dict[str, Any]:
    """Chart values that put pods on the real node (its pool label and taint)."""
    return {"nodeSelector": POOL_LABEL, "tolerations": [TOLERATION]}


def small_clip(model: str, replicas: int | None = 1, **fields: Any) -> dict[str, Any]:
    """A small CPU ClipService spec pinned to the real node: batches of 8 on one compute
    worker, so one pod saturates; `replicas=None` leaves the count to an autoscaler."""
    spec: dict[str, Any] = {
        "model": model,
        "device": "cpu",
        "dtype": "fp32",
        "nodePool": pinned_values(),
        "batching": {"maxBatchSize": 8, "computeWorkers": 1},
        "resources": SMALL,
        **fields,
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return spec


def helm_on(cluster: Cluster, helm: Helm, *args: str, values: dict[str, Any] | None = None) -> str:
    """helm against the cluster, values (if any) passed as a file so types survive; stdout."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(values or {}, fh)
        fh.flush()
        files = ("-f", fh.name) if values is not None else ()
        return helm.run(f"--kubeconfig={cluster.kubeconfig}", *args, *files)


@pytest.fixture(scope="module")
def operator_pod(
    cluster: Cluster, real_node: RealNode, node_images: list[str], helm: Helm
) -> Iterator[str]:
    """The operator in the cluster from its image, installed with its chart as a user does."""
    chart = str(REPO / "charts/clipserve-operator")
    values = {**pinned_values(), "resyncSeconds": 60, "retryDelaySeconds": 2}
    helm_on(
        cluster, helm, "install", OPERATOR_RELEASE, chart, "-n", OPERATOR_NS,
        "--create-namespace", "--wait", "--timeout=300s", values=values,
    )  # fmt: skip
    try:
        yield OPERATOR_NS
    finally:
        helm_on(cluster, helm, "uninstall", OPERATOR_RELEASE, "-n", OPERATOR_NS, "--wait")
        # Wait for the namespace to be gone: the next module installs the operator into the
        # same namespace, and helm cannot create objects in one that is still terminating.
        cluster.kubectl("delete", "namespace", OPERATOR_NS, "--timeout=180s", timeout=200)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace; deleted (and its pods gone from the node) afterwards."""
    name = cluster.create_namespace(f"real-{uuid4().hex[:8]}")
    yield name
    # Wait for its pods to be gone from the node (the next test needs their CPU and memory), not
    # for the namespace object: the namespace controller looks at a namespace with terminating
    # pods again only after half their grace period, which cost ~31 s per test; the pods went in
    # a few. A terminating namespace takes no new pods, so the list waited on is complete.
    cluster.kubectl("delete", "namespace", name, "--wait=false")
    cluster.kubectl(
        "wait", "--for=delete", "pods", "--all", "-n", name, "--timeout=180s", timeout=200
    )


@pytest.fixture
def client(real_node: RealNode, ns: str) -> str:
    """A probe client pod on the real node, in the test's namespace."""
    return real_node.client_pod(ns)


MEASURED = pytest.StashKey[list[str]]()


@pytest.fixture
def measure(request: pytest.FixtureRequest) -> Callable[[str, float], None]:
    """Record a duration measured on the real node: shown after the run, kept in its folder
    (not a fixture of the node: the walkthrough's node is started by `make cluster`)."""
    lines = request.config.stash.setdefault(MEASURED, [])
    log = cache_root() / "measurements.jsonl"

    def record(what: str, seconds: float) -> None:
        lines.append(f"{what}: {seconds:.1f} s")
        entry = {"at": time.time(), "test": request.node.name, "what": what, "s": round(seconds, 2)}
        with log.open("a") as out:
            out.write(json.dumps(entry) + "\n")

    return record


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The durations measured on the real node (apply to Ready, swap, slot overlap)."""
    lines = config.stash.get(MEASURED, [])
    if lines:
        terminalreporter.section("measured on the real node")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def volume(cluster: Cluster, ns: str) -> Iterator[Callable[..., Volume]]:
    """Make volumes for this test (named after its namespace); removed afterwards."""
    made: list[Volume] = []

    def make(size_mb: int | None = None) -> Volume:
        made.append(Volume(cluster, f"{ns}-{len(made)}", size_mb))
        return made[-1]

    yield make
    for v in made:
        v.remove()


def ready_with(cluster: Cluster, ns: str, name: str, model: str, replicas: int) -> dict[str, Any]:
    """Wait until the ClipService serves model from `replicas` ready pods."""
    return eventually(
        lambda: (
            (o := fully_ready(cluster, ns, name))
            and o["status"]["activeModel"] == model
            and o["status"]["readyReplicas"] == replicas
            and o
        ),
        f"{name} serving {model} from {replicas} pods",
        LOAD_S,
    )


def assert_all_served(results: list[Result], models: set[str]) -> None:
    """Every request answered 200 with one embedding, by one of models."""
    failed = [r for r in results if not (r.ok and r.items == 1)]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, first: {failed[:3]}"
    assert {r.model for r in results} <= models
