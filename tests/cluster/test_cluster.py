"""The local control plane schedules like a real cluster: GPU capacity, taints, CRDs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.cluster.harness import Cluster
from tests.support.cluster.node_config import NODE_NAME
from tests.support.polling import eventually

pytestmark = pytest.mark.cluster

GPU_NODES = {"gpu-0", "gpu-1"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_pod_spec(gpus: int, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod spec asking for `gpus` GPUs and tolerating the GPU pool's taint."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "app",
                "image": "ghcr.io/clipserve/clipserve:test",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
        "tolerations": [GPU_TOLERATION],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return spec


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    """kubectl get ... -o json, parsed."""
    return dict(json.loads(cluster.kubectl("get", *args, "-o", "json")))


def apply_available_deployment(
    cluster: Cluster, namespace: str, name: str, replicas: int, pod_spec: dict[str, Any]
) -> None:
    """Apply a Deployment of `pod_spec` labelled app=<name> and wait until it is Available."""
    labels = {"app": name}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    cluster.kubectl(
        "wait", "-n", namespace, f"deployment/{name}",
        "--for=condition=Available", "--timeout=120s",
    )  # fmt: skip


def test_node_pools_match_the_contract(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(cluster, "nodes")["items"]}
    # The real node (tests/support/cluster/realnode.py) joins once a test of the session
    # asks for it.
    assert set(nodes) - {NODE_NAME} == {"gpu-0", "gpu-1", "cpu-0", "cpu-1"}
    for name in GPU_NODES:
        node = nodes[name]
        assert node["metadata"]["labels"]["clipserve.io/node-pool"] == "gpu"
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]
    for name in ("cpu-0", "cpu-1"):
        node = nodes[name]
        assert node["metadata"]["labels"]["clipserve.io/node-pool"] == "cpu"
        assert "nvidia.com/gpu" not in node["status"]["allocatable"]
        assert not node["spec"].get("taints")


def test_gpu_deployment_becomes_available_on_gpu_nodes(cluster: Cluster, namespace: str) -> None:
    pod_spec = gpu_pod_spec(1, {"clipserve.io/node-pool": "gpu"})
    apply_available_deployment(cluster, namespace, "gpu-workload", 3, pod_spec)
    status = get_json(cluster, "-n", namespace, "deployment/gpu-workload")["status"]
    assert status["readyReplicas"] == 3
    pods = get_json(cluster, "-n", namespace, "pods", "-l", "app=gpu-workload")["items"]
    assert len(pods) == 3
    assert {p["spec"]["nodeName"] for p in pods} <= GPU_NODES
    assert all(p["status"]["phase"] == "Running" for p in pods)


def test_deleting_a_deployment_garbage_collects_its_pods(cluster: Cluster, namespace: str) -> None:
    pod_spec = {"containers": [{"name": "app", "image": "busybox"}]}
    apply_available_deployment(cluster, namespace, "cpu-workload", 2, pod_spec)
    pods = get_json(cluster, "-n", namespace, "pods", "-l", "app=cpu-workload")["items"]
    assert {p["spec"]["nodeName"] for p in pods} <= {"cpu-0", "cpu-1"}  # untolerated GPU taint

    cluster.kubectl("delete", "-n", namespace, "deployment/cpu-workload", "--cascade=background")

    def all_gone() -> bool:
        left = get_json(cluster, "-n", namespace, "replicasets,pods", "-l", "app=cpu-workload")
        return not left["items"]

    eventually(all_gone, "the garbage collector to remove ReplicaSets and Pods")


def test_pod_asking_for_too_many_gpus_stays_pending(cluster: Cluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-many-gpus", "namespace": namespace},
        "spec": gpu_pod_spec(5),  # every GPU node has 4
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def failed_scheduling() -> list[dict[str, Any]]:
        selector = "involvedObject.name=too-many-gpus,reason=FailedScheduling"
        events = get_json(cluster, "-n", namespace, "events", "--field-selector", selector)
        return list(events["items"])

    events = eventually(failed_scheduling, "a FailedScheduling event")
    assert "Insufficient nvidia.com/gpu" in events[0]["message"]
    observed = get_json(cluster, "-n", namespace, "pod/too-many-gpus")
    assert observed["status"]["phase"] == "Pending"
    assert "nodeName" not in observed["spec"]
    scheduled = [c for c in observed["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert scheduled[0]["status"] == "False"
    assert scheduled[0]["reason"] == "Unschedulable"


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.harness.clipserve.io"},
    "spec": {
        "group": "harness.clipserve.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            },
                            "status": {
                                "type": "object",
                                "properties": {"phase": {"type": "string"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def widget_crd(cluster: Cluster) -> Iterator[None]:
    """A CRD with a status subresource, established, removed after the test."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    crd = "crd/widgets.harness.clipserve.io"
    cluster.kubectl("wait", crd, "--for=condition=Established", "--timeout=60s")
    yield
    cluster.kubectl("delete", crd, "--wait=false")


@pytest.mark.usefixtures("widget_crd")
def test_custom_objects_are_served_with_a_status_subresource(
    cluster: Cluster, namespace: str
) -> None:
    widget = {
        "apiVersion": "harness.clipserve.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": namespace},
        "spec": {"size": 2},
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(widget))
    created = get_json(cluster, "-n", namespace, "widget/w")
    assert created["spec"] == {"size": 2}

    cluster.kubectl(
        "patch", "-n", namespace, "widget/w", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Ready"}}),
    )  # fmt: skip
    patched = get_json(cluster, "-n", namespace, "widget/w")
    assert patched["status"] == {"phase": "Ready"}
    # Status writes do not bump the generation; spec writes through the main resource do,
    # and cannot touch status.
    assert patched["metadata"]["generation"] == created["metadata"]["generation"]
    cluster.kubectl(
        "patch", "-n", namespace, "widget/w", "--type=merge",
        "-p", json.dumps({"spec": {"size": 3}, "status": {"phase": "Hacked"}}),
    )  # fmt: skip
    updated = get_json(cluster, "-n", namespace, "widget/w")
    assert updated["spec"] == {"size": 3}
    assert updated["status"] == {"phase": "Ready"}
    assert updated["metadata"]["generation"] == created["metadata"]["generation"] + 1
