"""The rendered chart on a real control plane (kube-apiserver, scheduler, kwok GPU/CPU nodes):
server-side apply accepts every object, and pods land where the values say."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from tests.support.cluster.harness import Cluster
from tests.support.polling import eventually
from tests.support.rendering import CHART, CI_VALUES, Helm

pytestmark = [pytest.mark.cluster, pytest.mark.helm]

GPU_NODES = {"gpu-0", "gpu-1"}
CPU_NODES = {"cpu-0", "cpu-1"}
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject"}  # their CRDs are not installed here
SELECTOR = "app.kubernetes.io/instance=clip"
# Pods here never run a process; a short grace period lets the namespace go quickly.
QUICK_EXIT = {"drain": {"preStopSleepSeconds": 0}, "terminationGracePeriodSeconds": 1}


def apply(cluster: Cluster, objs: list[dict[str, Any]], *flags: str) -> str:
    """Server-side apply as the operator does, rejecting unknown or duplicate fields."""
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [o for o in objs if o["kind"] not in CUSTOM_KINDS],
    }
    return cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=clipserve-chart-test",
        "--validate=strict",
        *flags,
        "-f",
        "-",
        input=json.dumps(doc),
    )


@pytest.fixture(scope="module")
def dry_run_namespace(cluster: Cluster) -> Iterator[str]:
    """One namespace for the dry-run applies (they persist nothing)."""
    name = cluster.create_namespace(f"chart-dry-{uuid4().hex[:8]}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", SELECTOR, "-o", "json")
    return list(json.loads(out)["items"])


def scheduled(cluster: Cluster, namespace: str, count: int) -> list[dict[str, Any]]:
    """Wait until `count` pods have a node; return them."""
    return eventually(
        lambda: (
            [p for p in pods(cluster, namespace) if p["spec"].get("nodeName")][:count]
            if len([p for p in pods(cluster, namespace) if p["spec"].get("nodeName")]) >= count
            else None
        ),
        f"{count} scheduled pods",
    )


@pytest.mark.parametrize(
    "values_file", CI_VALUES, ids=[p.name.removesuffix("-values.yaml") for p in CI_VALUES]
)
def test_should_be_accepted_by_the_apiserver_if_applied_server_side(
    cluster: Cluster, helm: Helm, dry_run_namespace: str, values_file: Path
) -> None:
    # --dry-run=server runs the apiserver's whole write path (defaulting, validation,
    # admission) without persisting, so no pods are created for the 11 scenarios.
    objs = helm.template(values_files=[values_file], namespace=dry_run_namespace)
    out = apply(cluster, objs, "--dry-run=server")
    for obj in objs:
        if obj["kind"] not in CUSTOM_KINDS:
            assert obj["metadata"]["name"] in out, f"{obj['kind']} not applied:\n{out}"


def test_should_schedule_gpu_pods_on_the_gpu_pool_if_gpu_scenario_is_used(
    cluster: Cluster, helm: Helm, namespace: str
) -> None:
    # The scenario names a RuntimeClass and a PriorityClass; admission rejects pods without them.
    classes = [
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": "nvidia"},
            "handler": "nvidia",
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": "ml-serving"},
            "value": 1000,
        },
    ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": classes})
    )
    apply(
        cluster,
        helm.template(
            QUICK_EXIT, values_files=[CHART / "ci" / "gpu-pool-values.yaml"], namespace=namespace
        ),
    )
    placed = scheduled(cluster, namespace, 2)
    assert {p["spec"]["nodeName"] for p in placed} <= GPU_NODES
    for pod in placed:
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
        assert pod["spec"]["runtimeClassName"] == "nvidia"
        assert pod["spec"]["priority"] == 1000


def test_should_keep_cpu_pods_off_the_gpu_pool_if_no_gpu_is_requested(
    cluster: Cluster, helm: Helm, namespace: str
) -> None:
    apply(cluster, helm.template({"replicaCount": 2, **QUICK_EXIT}, namespace=namespace))
    placed = scheduled(cluster, namespace, 2)
    assert {p["spec"]["nodeName"] for p in placed} <= CPU_NODES


def test_should_leave_a_pod_pending_for_gpus_if_the_gpu_pool_is_full(
    cluster: Cluster, helm: Helm, namespace: str
) -> None:
    # 2 GPU nodes x 4 GPUs: three pods wanting 4 each cannot all fit.
    apply(
        cluster,
        helm.template({"replicaCount": 3, "gpu": {"count": 4}, **QUICK_EXIT}, namespace=namespace),
    )
    placed = scheduled(cluster, namespace, 2)
    assert {p["spec"]["nodeName"] for p in placed} == GPU_NODES

    def unschedulable() -> list[dict[str, Any]]:
        return [
            c
            for p in pods(cluster, namespace)
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
        ]

    (condition,) = eventually(unschedulable, "the third pod to be found unschedulable")
    assert "Insufficient nvidia.com/gpu" in condition["message"]
