"""The real node runs pods that serve through Services and DNS and reach nothing off the machine."""

from __future__ import annotations

import json

import pytest

from tests.cluster.test_cluster import apply_available_deployment, get_json
from tests.realnode.conftest import NODE_MARKS
from tests.support.cluster.harness import Cluster, KubectlError, _versions
from tests.support.cluster.node_config import NODE_NAME, POOL_LABEL, TAINT
from tests.support.cluster.realnode import PROBE_IMAGE, RealNode
from tests.support.polling import eventually

# The first test may wait for another session's real node to stop (one per machine).
pytestmark = NODE_MARKS


def web_service(cluster: Cluster, node: RealNode, ns: str, replicas: int = 2) -> None:
    """`replicas` probe servers on the real node behind the ClusterIP Service web:80."""
    container = {
        "name": "web",
        "image": PROBE_IMAGE,
        "imagePullPolicy": "Never",
        "args": ["serve", ":8080"],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    }
    spec = node.pin({"containers": [container], "terminationGracePeriodSeconds": 2})
    apply_available_deployment(cluster, ns, "web", replicas, spec)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(service))


def test_the_real_node_is_ready_in_its_own_tainted_pool(
    cluster: Cluster, real_node: RealNode
) -> None:
    node = get_json(cluster, "node", NODE_NAME)
    labels, info = node["metadata"]["labels"], node["status"]["nodeInfo"]
    assert POOL_LABEL.items() <= labels.items()
    assert {k: TAINT[k] for k in ("key", "value", "effect")} in node["spec"]["taints"]
    versions = _versions()
    assert info["kubeletVersion"] == versions["K8S_VERSION"]
    assert info["containerRuntimeVersion"] == "containerd://" + versions["CONTAINERD_VERSION"][1:]
    assert {"type": "InternalIP", "address": real_node.ip} in node["status"]["addresses"]


def test_a_service_balances_its_pods_by_dns_name(
    cluster: Cluster, real_node: RealNode, ns: str, client: str
) -> None:
    web_service(cluster, real_node, ns)
    pods = {
        p["metadata"]["name"]: p
        for p in get_json(cluster, "pods", "-n", ns, "-l", "app=web")["items"]
    }
    assert {p["spec"]["nodeName"] for p in pods.values()} == {NODE_NAME}
    url = f"http://web.{ns}.svc/"
    # A new Service routes once kube-proxy has written its rules (refused until then).
    eventually(
        lambda: real_node.exec(ns, client, "/probe", "get", url),
        "the Service to route",
        60,
        not_yet=(KubectlError,),
    )
    # A new connection per request, so kube-proxy picks an endpoint for each one.
    out = real_node.exec(ns, client, "/probe", "get", url, "16")
    statuses = out.splitlines()[0::2]
    answered_by = set(out.splitlines()[1::2])
    assert statuses == ["200 "] * 16
    assert answered_by == set(pods)


def test_pods_reach_the_api_server_through_the_kubernetes_service(
    real_node: RealNode, ns: str, client: str
) -> None:
    # The pod's ServiceAccount token and CA, the certificate checked against the Service's name.
    out = real_node.exec(ns, client, "/probe", "api", "/api")
    assert out.startswith("200 ")
    assert json.loads(out.split("\n", 1)[1])["kind"] == "APIVersions"


def test_pods_reach_nothing_beyond_the_machine(real_node: RealNode, ns: str, client: str) -> None:
    # No default route in the pod: an address outside the pod and Service ranges is unreachable.
    with pytest.raises(KubectlError, match="network is unreachable"):
        real_node.exec(ns, client, "/probe", "get", "http://192.0.2.1/")
    # Cluster DNS answers cluster names only; it forwards nothing.
    with pytest.raises(KubectlError, match="no such host"):
        real_node.exec(ns, client, "/probe", "resolve", "example.com")
    assert real_node.exec(ns, client, "/probe", "resolve", "kubernetes.default").strip()


def test_kubectl_logs_reach_the_kubelet(cluster: Cluster, real_node: RealNode, ns: str) -> None:
    real_node.run_pod(ns, "server", PROBE_IMAGE, ["serve", ":8080"])
    assert "serving on :8080" in cluster.kubectl("logs", "-n", ns, "server")
